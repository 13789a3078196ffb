"""Generate the documentation's figures into docs/img/ (PNG, ~110 dpi), deterministically.

    python docs/gen/figures.py [--out DIR] [--only NAME ...] [--quick]

- ``flow``: the train -> spec -> deploy flow (matplotlib boxes and arrows).
- ``raster``: an F400 trained here (in process, no Ray) on real Fashion-MNIST, exported as a
  spec, one test image run through the torch backend and the NEST backend; both rasters and
  the number of differing spikes (the script fails unless it is 0).
- ``rates``: the same network's average firing rates converging to the fixed point
  ``a* = clamp((W a* + F x + b) / V_th, 0, 1)`` as T grows.
- ``t_vth``: test accuracy over T and V_th from a real 3x3 Ray Tune grid search run through
  ``fsnn tune``'s own code (local Ray, 2 CPUs, MLflow in a temporary SQLite store).

Every seed is fixed and torch runs on one thread, so a rerun draws the same pixels. ``--quick``
trains on fewer images (and searches on a tiny subset): the same figures, for tests. Each
figure prints one ``[figures] NAME.png ...`` line; the raster's says ``N differing spikes``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "docs" / "img"
DPI = 110
SEED = 0

# the network of `raster` and `rates`: the demo's F400 (IF, V_th = 2), trained one epoch
TRAIN_LIMIT = {False: 10_000, True: 2_000}  # by --quick
TRAIN_T = 30
SAMPLE = 0  # the test image of the raster
RASTER_NEURONS = 100
RATE_STEPS = {False: 1000, True: 200}
RATE_SAMPLES = 64
MARKED_T = (5, 10, 30, 100, 300, 1000)

# the search of `t_vth`: a 3x3 grid over T and V_th, IF neurons, lr 0.05
GRID_T = (2, 5, 30)
GRID_VTH = (0.5, 2.0, 4.0)
SEARCH_BUDGET = {False: {"train_limit": 30_000, "test_limit": 10_000, "epochs": 2},
                 True: {"train_limit": 512, "test_limit": 256, "epochs": 1}}
SEARCH_CPUS = 2


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "savefig.dpi": DPI,
                         "svg.hashsalt": "fsnn"})
    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# flow


@dataclass(frozen=True)
class _Box:
    x: float  # centre
    y: float
    w: float
    h: float
    title: str
    body: str
    colour: str


def fig_flow(out: Path, quick: bool) -> str:
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(12.0, 4.6))
    ax.set_xlim(0, 120)
    ax.set_ylim(0, 46)
    ax.axis("off")
    blue, green, orange, grey, purple = "#dbe8f6", "#dff0d8", "#fbe5cc", "#eeeeee", "#e8def3"
    boxes = {
        "config": _Box(7.5, 23, 12.5, 11, "YAML config", "configs/demo.yaml\nmodel, neuron,\n"
                       "T, V_th, data, optim", grey),
        "train": _Box(33, 23, 19, 13, "Ray Train workers", "IDE: simulate T steps\n(no graph), "
                      "implicit\nbackward at a*; DDP", blue),
        "tune": _Box(33, 39, 19, 9.5, "Ray Tune", "trials over T, V_th,\nleak, lr (ASHA)",
                     purple),
        "mlflow": _Box(57.5, 31, 16, 11, "MLflow run", "params, metrics,\ncheckpoints, plots",
                       green),
        "spec": _Box(57.5, 15, 16, 11, "spec", "spec.json +\nweights.safetensors", green),
        "torch": _Box(82, 37, 16, 7.5, "torch", "reference engine,\nfloat64", orange),
        "nest": _Box(82, 23, 16, 7.5, "NEST (PyNN)", "spike for spike\nwith torch", orange),
        "spinnaker": _Box(82, 9, 16, 7.5, "SpiNNaker", "board, or emulated\nfixed point",
                          orange),
        "table": _Box(107.5, 23, 19, 15, "comparison table", "accuracy, agreement,\nspikes, "
                      "synaptic events,\nenergy, wall time;\nlogged to MLflow", grey),
    }
    # Ray Train: more than one worker (a second box behind the first)
    b = boxes["train"]
    ax.add_patch(FancyBboxPatch((b.x - b.w / 2 + 1.0, b.y - b.h / 2 - 1.0), b.w, b.h,
                                boxstyle="round,pad=0.2,rounding_size=1.2", facecolor=b.colour,
                                edgecolor="#555555", linewidth=1.0))
    for b in boxes.values():
        ax.add_patch(FancyBboxPatch((b.x - b.w / 2, b.y - b.h / 2), b.w, b.h,
                                    boxstyle="round,pad=0.2,rounding_size=1.2",
                                    facecolor=b.colour, edgecolor="#555555", linewidth=1.0))
        ax.text(b.x, b.y + b.h / 2 - 1.6, b.title, ha="center", va="top", weight="bold",
                fontsize=9.5)
        ax.text(b.x, b.y - 1.3, b.body, ha="center", va="center", fontsize=8, linespacing=1.25)

    def side(name: str, where: str, shift: float = 0.0) -> tuple[float, float]:
        b = boxes[name]
        pad = 0.3
        return {"l": (b.x - b.w / 2 - pad, b.y + shift), "r": (b.x + b.w / 2 + pad, b.y + shift),
                "t": (b.x + shift, b.y + b.h / 2 + pad),
                "b": (b.x + shift, b.y - b.h / 2 - pad)}[where]

    def arrow(a: tuple[float, float], b: tuple[float, float], label: str = "", *,
              rad: float = 0.0, dx: float = 0.0, dy: float = 1.2, style: str = "-") -> None:
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12,
                                     connectionstyle=f"arc3,rad={rad}", color="#333333",
                                     linewidth=1.1, linestyle=style, shrinkA=0, shrinkB=0))
        if label:
            ax.text((a[0] + b[0]) / 2 + dx, (a[1] + b[1]) / 2 + dy, label, ha="center",
                    va="bottom", fontsize=7.5, family="monospace", color="#1f4e79")

    arrow(side("config", "r"), side("train", "l"), "fsnn train", dy=0.6)
    arrow(side("config", "t", 2), side("tune", "l"), "fsnn tune", rad=-0.25, dx=-5, dy=1.5)
    arrow(side("tune", "b"), side("train", "t"), "", style="--")
    ax.text(34.2, 31.4, "each trial trains", fontsize=7, ha="left", va="center",
            color="#555555", style="italic")
    arrow(side("train", "r", 4), side("mlflow", "l"))
    arrow(side("train", "r", -4), side("spec", "l"), "export", dx=-2.2, dy=-3.4)
    arrow(side("tune", "r"), side("mlflow", "t", 2), "trial runs, best spec", rad=-0.3,
          dy=4.0)
    arrow(side("spec", "r", 3), side("torch", "l", -1), "", rad=-0.1)
    arrow(side("spec", "r", 0), side("nest", "l"))
    ax.text(69.8, 5.2, "fsnn deploy", ha="center", va="bottom", fontsize=7.5,
            family="monospace", color="#1f4e79")
    arrow(side("spec", "r", -3), side("spinnaker", "l", 1), "", rad=0.1)
    for name, rad in (("torch", -0.15), ("nest", 0.0), ("spinnaker", 0.15)):
        arrow(side(name, "r"), side("table", "l", {"torch": 3, "nest": 0, "spinnaker": -3}[name]),
              rad=rad)
    ax.annotate("", xy=(117, 1.0), xytext=(1.5, 1.0),
                arrowprops={"arrowstyle": "<->", "color": "#1f4e79", "linewidth": 0.9})
    ax.text(59, 1.6, "fsnn pipeline CONFIG: train -> export -> deploy -> table, every step an "
            "MLflow run", ha="center", va="bottom", fontsize=8, family="monospace",
            color="#1f4e79")
    fig.subplots_adjust(left=0.005, right=0.995, top=0.99, bottom=0.01)
    _save(fig, out / "flow.png")
    return "train -> spec -> deploy"


# ---------------------------------------------------------------------------------------------
# the trained F400 shared by raster and rates


@dataclass
class Trained:
    net: Any  # fsnn.platform.spec.Network (loaded back from its exported spec)
    x: Any  # test images [N, 1, 28, 28] float32
    y: Any  # their labels
    labels: list[str]
    test_accuracy: float
    train_images: int
    seconds: float


@cache
def trained_f400(quick: bool) -> Trained:
    """The demo's F400 (IF, V_th = 2, T = 30) trained one epoch on the first Fashion-MNIST
    images, in process, with fsnn.platform's zoo and trainer; exported as a spec and loaded
    back (what every backend is given)."""
    import torch

    from fsnn.platform.config import load_config
    from fsnn.platform.data import DATASETS, load_dataset, make_loader
    from fsnn.platform.spec import load_spec, save_spec
    from fsnn.platform.trainer import (
        build_optimizer,
        build_scheduler,
        evaluate,
        model_from_config,
        train_epoch,
    )

    start = time.perf_counter()
    limit = TRAIN_LIMIT[quick]
    cfg = load_config(ROOT / "configs" / "demo.yaml",
                      [f"T={TRAIN_T}", "train.epochs=1", "train.num_workers=1",
                       f"data.train_limit={limit}", "data.test_limit=1000",
                       f"train.seed={SEED}"])
    info = DATASETS[cfg.data.name]
    xtr, ytr = load_dataset(cfg.data.name, "train", limit=limit, progress=False)
    xte, yte = load_dataset(cfg.data.name, "test", limit=1000, progress=False)
    torch.manual_seed(SEED)
    model = model_from_config(cfg, num_classes=info.num_classes, labels=list(info.classes))
    optimizer = build_optimizer(cfg, model)
    train_loader = make_loader(xtr, ytr, cfg.data.batch_size, shuffle=True, seed=SEED)
    test_loader = make_loader(xte, yte, cfg.data.test_batch_size, shuffle=False, seed=0)
    scheduler = build_scheduler(cfg, optimizer, len(train_loader))
    cpu = torch.device("cpu")
    train_epoch(model, train_loader, optimizer, scheduler, cpu)
    test = evaluate(model, test_loader, cpu)
    with tempfile.TemporaryDirectory() as d:
        save_spec(model.eval().to_network(metadata={"dataset": cfg.data.name}), Path(d) / "spec")
        net = load_spec(Path(d) / "spec")
    return Trained(net, xte, yte, list(info.classes), test.accuracy, len(xtr),
                   time.perf_counter() - start)


def _train_note(t: Trained) -> str:
    return (f"F400 (IF, V_th = 2) trained 1 epoch on {t.train_images:,} Fashion-MNIST images, "
            f"test accuracy {100 * t.test_accuracy:.1f}% (1,000 images)")


# ---------------------------------------------------------------------------------------------
# raster


def fig_raster(out: Path, quick: bool) -> str:
    import torch

    from fsnn.backends.base import get_backend
    from fsnn.platform.engine import simulate

    t = trained_f400(quick)
    net, x = t.net, t.x[SAMPLE:SAMPLE + 1].double()
    # the torch backend's engine, as TorchBackend runs it (float64, deployment timing), with
    # the spike trains recorded
    ref = get_backend("torch")
    ref.build(net)
    with torch.no_grad():
        want = simulate(net.to(torch.float64), x, timing="deploy", record_trains=True).trains
    assert want is not None
    counts = ref.run(x).counts
    for name, train in want.items():  # the recording is the backend's run, spike for spike
        assert torch.equal(train.sum(0), counts[name]), name
    nest = get_backend("nest")
    try:
        nest.build(net)
        got = nest.spike_trains(x)  # type: ignore[attr-defined]
    finally:
        nest.close()
    differ = sum(int((got[k] != want[k]).sum()) for k in want)
    spikes = {k: int(v.sum()) for k, v in want.items()}
    total, total_nest = sum(spikes.values()), sum(int(v.sum()) for v in got.values())
    pop = net.readout.source
    T = net.T
    from fsnn.backends.nest.backend import load_simulator

    version = ".".join(str(load_simulator()[1].__version__).split(".")[:2])
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 5.6), sharey=True)
    for ax, (name, trains, colour) in zip(
            axes, (("torch engine (reference)", want, "#1f77b4"),
                   (f"NEST {version} through PyNN", got, "#d62728")), strict=True):
        s = trains[pop][:, 0].flatten(1)[:, :RASTER_NEURONS]  # [T, neurons]
        # one row of ticks per neuron, a tick per spike at its step
        ax.eventplot([torch.nonzero(s[:, n]).flatten().numpy() for n in range(s.shape[1])],
                     lineoffsets=1, linelengths=0.8, linewidths=2.0, colors=colour)
        ax.set_title(f"{name}: {int(s.sum())} spikes", color=colour)
        ax.set_xlabel("time step t")
        ax.set_xticks(range(0, T, 5))
        ax.set_xlim(-0.7, T - 0.3)
        ax.set_ylim(-1, RASTER_NEURONS)
    axes[0].set_ylabel(f"neuron of {pop} (first {RASTER_NEURONS} of "
                       f"{net.population(pop).size})")
    label = t.labels[int(t.y[SAMPLE])]
    fig.suptitle(f"One test image ({label}), T = {T}, deployment timing: {total} spikes on "
                 f"torch, {total_nest} on NEST, {differ} differ (all "
                 f"{sum(p.size for p in net.populations)} neurons, every step)", fontsize=10)
    fig.text(0.5, 0.005, _train_note(t), ha="center", va="bottom", fontsize=8, color="#555555")
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    _save(fig, out / "raster.png")
    if differ != 0:
        raise AssertionError(f"torch and NEST differ in {differ} spikes: the parity claim "
                             f"fails on this spec")
    return f"{total} spikes on torch, {total_nest} on NEST, {differ} differing spikes"


# ---------------------------------------------------------------------------------------------
# rates


def fixed_point(net: Any, x: Any, *, tol: float = 1e-13, max_iter: int = 10_000
                ) -> dict[str, Any]:
    """``a* = clamp((W a* + F x + b) / V_th, 0, 1)``, by iterating fsnn's equilibrium map (a
    contraction here: the feedback's spectral norm is 1 and V_th = 2) from zero rates."""
    import torch

    from fsnn.platform.engine import circuit_from_network, equilibrium_map

    circuit, _ = circuit_from_network(net, x)
    a = {p.name: torch.zeros(x.shape[0], *p.shape, dtype=x.dtype) for p in net.populations}
    for _ in range(max_iter):
        new = equilibrium_map(circuit, a)
        step = max(float((new[k] - a[k]).abs().max()) for k in a)
        a = new
        if step < tol:
            return a
    raise RuntimeError(f"the equilibrium map did not converge in {max_iter} iterations")


def fig_rates(out: Path, quick: bool) -> str:
    import numpy as np
    import torch

    from fsnn.platform.engine import simulate

    t = trained_f400(quick)
    net = t.net.to(torch.float64)
    x = t.x[:RATE_SAMPLES].double()
    steps = RATE_STEPS[quick]
    with torch.no_grad():
        star = fixed_point(net, x)
        # the running average up to step T of one long run is the rate a run of T steps gives
        res = simulate(net, x, T=steps, timing="deploy", record_trains=True)
    assert res.trains is not None
    pop = net.readout.source
    train = res.trains[pop].flatten(2)  # [steps, B, N]
    running = train.cumsum(0) / torch.arange(1, steps + 1, dtype=train.dtype).view(-1, 1, 1)
    a_star = star[pop].flatten(1)  # [B, N]
    gap = (running - a_star).abs().mean((1, 2)).numpy()  # mean |a(T) - a*| over neurons, images
    Ts = np.arange(1, steps + 1)
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.0, 3.9))
    colours = plt.get_cmap("tab10")
    shown = [(0, 0), (0, 3), (1, 7), (2, 1), (3, 5)]  # (image, a neuron of mid-range rate)
    mid = ((a_star > 0.15) & (a_star < 0.85)).numpy()
    for i, (b, k) in enumerate(shown):
        idx = np.flatnonzero(mid[b])
        n = int(idx[(k * 37) % len(idx)]) if len(idx) else k
        c = colours(i)
        left.plot(Ts, running[:, b, n].numpy(), color=c, linewidth=1.1)
        left.axhline(float(a_star[b, n]), color=c, linestyle="--", linewidth=0.8)
    left.set_xscale("log")
    left.set_xlabel("time steps T")
    left.set_ylabel("average rate a(T) (spikes per step)")
    left.set_title("five neurons: a(T) (solid) and their a* (dashed)")
    left.set_ylim(-0.02, 1.02)
    left.grid(alpha=0.3, which="both", linewidth=0.5)
    right.loglog(Ts, gap, color="#1f77b4", linewidth=1.4, label="mean |a(T) − a*|")
    ref = gap[9] * 10 / Ts
    right.loglog(Ts, ref, color="#888888", linestyle=":", linewidth=1.0, label="∝ 1/T")
    marked = [m for m in MARKED_T if m <= steps]
    right.scatter(marked, gap[np.array(marked) - 1], color="#d62728", zorder=3, s=18)
    for m in marked:
        late = m >= steps / 5  # near the right edge: label below, to the left
        right.annotate(f"T={m}: {gap[m - 1]:.2g}", (m, gap[m - 1]), textcoords="offset points",
                       xytext=(-5, -11) if late else (5, 4), ha="right" if late else "left",
                       fontsize=7.5, color="#d62728")
    right.set_ylim(bottom=gap[-1] / 4)
    right.set_xlabel("time steps T")
    right.set_ylabel("gap to the fixed point")
    right.set_title(f"all {a_star.shape[1]} neurons, {RATE_SAMPLES} test images")
    right.legend(loc="lower left", fontsize=8)
    right.grid(alpha=0.3, which="both", linewidth=0.5)
    fig.suptitle("Average firing rates converge to a* = clamp((W a* + F x + b) / V_th, 0, 1)",
                 fontsize=10)
    fig.text(0.5, 0.005, _train_note(t) + "; deployment timing", ha="center", va="bottom",
             fontsize=8, color="#555555")
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    _save(fig, out / "rates.png")
    return ", ".join(f"gap at T={m}: {gap[m - 1]:.4f}" for m in marked)


# ---------------------------------------------------------------------------------------------
# t_vth


def run_search(quick: bool) -> tuple[dict[tuple[int, float], float], float, dict[str, int]]:
    """A 3x3 grid search over T and V_th through `fsnn tune`'s code (configs/tune-demo.yaml,
    narrowed): local Ray with 2 CPUs, MLflow and Tune's state in a temporary directory.
    Returns test accuracy per (T, V_th), the seconds it took and the budget."""
    from fsnn.pipelines.console import set_verbosity

    set_verbosity(False)  # before Ray and MLflow are imported, as the CLI does
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from fsnn.pipelines.raycluster import connect
    from fsnn.pipelines.tune.search import TuneOptions, run_tune
    from fsnn.platform.config import load_config

    budget = SEARCH_BUDGET[quick]
    space = (f"{{T: {{grid: {list(GRID_T)}}}, vth: {{grid: {list(GRID_VTH)}}}}}")
    cfg = load_config(ROOT / "configs" / "tune-demo.yaml", [
        "name=docs-t-vth", f"search.space={space}", "search.algorithm=grid",
        "search.num_samples=1", "search.scheduler=none", f"search.seed={SEED}",
        f"train.seed={SEED}", f"train.epochs={budget['epochs']}",
        f"data.train_limit={budget['train_limit']}", f"data.test_limit={budget['test_limit']}"])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fsnn-docs-") as d:
        connect(None, num_cpus=SEARCH_CPUS)
        try:
            result = run_tune(cfg, TuneOptions(tracking_uri=f"sqlite:///{d}/mlflow.db",
                                               storage=f"{d}/runs"))
        finally:
            ray.shutdown()
    seconds = time.perf_counter() - start
    if result.interrupted:
        raise RuntimeError("the search was interrupted")
    acc: dict[tuple[int, float], float] = {}
    for row in result.rows:
        if row.error is not None or "test_accuracy" not in row.metrics:
            raise RuntimeError(f"trial {row.trial_id} {row.params} failed: {row.error}")
        acc[(int(row.params["T"]), float(row.params["vth"]))] = float(
            row.metrics["test_accuracy"])
    missing = [(T, v) for T in GRID_T for v in GRID_VTH if (T, v) not in acc]
    if missing:
        raise RuntimeError(f"no result for {missing}")
    return acc, seconds, budget


def fig_t_vth(out: Path, quick: bool) -> str:
    import numpy as np

    acc, seconds, budget = run_search(quick)
    grid = np.array([[acc[(T, v)] for v in GRID_VTH] for T in GRID_T]) * 100
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    im = ax.imshow(grid, cmap="viridis", origin="lower", aspect="auto")
    lo, hi = float(grid.min()), float(grid.max())
    for i in range(len(GRID_T)):
        for j in range(len(GRID_VTH)):
            value = grid[i, j]
            dark = value < lo + 0.55 * (hi - lo)
            ax.text(j, i, f"{value:.1f}%", ha="center", va="center", fontsize=10,
                    weight="bold" if value == hi else "normal",
                    color="white" if dark else "black")
    ax.set_xticks(range(len(GRID_VTH)), [f"{v:g}" for v in GRID_VTH])
    ax.set_yticks(range(len(GRID_T)), [str(T) for T in GRID_T])
    ax.set_xlabel("threshold V_th")
    ax.set_ylabel("time steps T")
    fig.colorbar(im, ax=ax, label="test accuracy (%)")
    ax.set_title("F400 on Fashion-MNIST: test accuracy over T and V_th")
    note = (f"Ray Tune grid, 9 trials (IF, lr 0.05), each {budget['epochs']} epoch"
            f"{'s' if budget['epochs'] > 1 else ''} on {budget['train_limit']:,} train images,\n"
            f"tested on {budget['test_limit']:,}; `fsnn tune` code, local Ray with "
            f"{SEARCH_CPUS} CPUs")
    fig.text(0.5, 0.01, note, ha="center", va="bottom", fontsize=7.5, color="#555555")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    _save(fig, out / "t_vth.png")
    best = max(acc, key=lambda k: acc[k])
    return (f"9 trials in {seconds:.0f} s ({budget['epochs']} epoch(s) x "
            f"{budget['train_limit']} train / {budget['test_limit']} test images); best T="
            f"{best[0]} V_th={best[1]:g}: {100 * acc[best]:.2f}%")


# ---------------------------------------------------------------------------------------------

FIGURES: dict[str, Callable[[Path, bool], str]] = {
    "flow": fig_flow, "rates": fig_rates, "raster": fig_raster, "t_vth": fig_t_vth}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"folder for the PNGs (default: {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--only", nargs="+", choices=list(FIGURES), metavar="NAME",
                   help=f"only these figures ({', '.join(FIGURES)}); default: all")
    p.add_argument("--quick", action="store_true",
                   help="smaller training and search budgets (for tests)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # the same sums in the same order on every machine
    torch.manual_seed(SEED)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or list(FIGURES):
        start = time.perf_counter()
        summary = FIGURES[name](args.out, args.quick)
        path = args.out / f"{name}.png"
        print(f"[figures] {path.name}: {path.stat().st_size / 1024:.0f} KB in "
              f"{time.perf_counter() - start:.1f} s; {summary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
