"""One training epoch's measured joules, checked against power × time (issue #8).

    python benchmarks/energy_check.py [--model f64c5] [--T 30] [--batch 128] [--images N]
                                      [--device cuda] [--interval-ms 20] [--target-s 30]

One IDE training epoch on MNIST training images (the project's IDX reader, loader, model,
optimiser, schedule and ``train_epoch``) runs inside an ``EnergyMeter`` window, as an epoch of
``fsnn train`` does. The meter's GPU joules come from NVML's cumulative energy counter
(``nvmlDeviceGetTotalEnergyConsumption``). Independently, a background thread reads
``nvmlDeviceGetPowerUsage`` (milliwatts) of the same GPUs every ``--interval-ms``; the trapezoid
integral of those samples over the window, and their mean × the window's seconds, are the
power × time figures the counter is compared with. Where NVML has it, the instantaneous power field
(``NVML_FI_DEV_POWER_INSTANT``) is sampled and integrated as well.

On Ampere (GA100 excepted) and newer GPUs, the H100 and H200 among them,
``nvmlDeviceGetPowerUsage`` is a one-second moving average: it lags the load by about half a second
at each end of the window. Over a window of 20 s or more that moves the integral by a few per cent
at most, so a counter / integrated ratio within about 10 % is the plausibility criterion. The
script reports the ratio; it does not assert it.

On CUDA without ``--images`` the epoch is sized from the warm-up batches' rate to last about
``--target-s`` seconds (at most MNIST's 60,000 training images). The warm-up batches (CUDA start,
cuDNN autotuning) run before the window. MNIST's training files are read from
``<--data-root>/mnist`` (default: the data cache that ``fsnn data fetch mnist`` fills); nothing is
fetched, and without them the epoch runs on random images of MNIST's shape and says why. Without a
GPU the epoch runs on the CPU and the GPU figures are absent with the meter's reason; RAPL's CPU
joules are given where readable, else their reason.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import torch

if TYPE_CHECKING:
    from fsnn.platform.config import Config
    from fsnn.platform.model import FeedbackSNN

sys.path.insert(0, str(Path(__file__).parent))
from common import table, write_json

Sample = tuple[float, float]  # (time.perf_counter() seconds, watts)
Probe = Callable[[], float]  # one power reading, watts
R = TypeVar("R")
MNIST_TRAIN = 60_000
CRITERION = 0.10  # |counter / integrated - 1| that counts as plausible over >= 20 s
EXPLAIN = ("nvmlDeviceGetPowerUsage is a 1 s moving average on Ampere and newer GPUs (H100, "
           "H200): it lags the load by ~0.5 s at each end of the window, so over >= 20 s the "
           "counter and the integrated power should agree within ~10 %.")


def integrate_power(samples: Sequence[Sample], start: float | None = None,
                    end: float | None = None) -> float:
    """Joules: the trapezoid rule over (seconds, watts) samples from ``start`` to ``end``
    (default: the first and the last sample). The power at a bound is interpolated linearly
    between its neighbours, and held at the nearest sample outside the samples' span."""
    if not samples:
        raise ValueError("no power samples to integrate")
    pts = sorted(samples)
    t = np.array([p[0] for p in pts], dtype=np.float64)
    w = np.array([p[1] for p in pts], dtype=np.float64)
    lo = float(t[0]) if start is None else start
    hi = float(t[-1]) if end is None else end
    if hi < lo:
        raise ValueError(f"the window ends ({hi}) before it starts ({lo})")
    inside = (t > lo) & (t < hi)
    ts = np.concatenate([[lo], t[inside], [hi]])
    ws = np.concatenate([np.interp([lo], t, w), w[inside], np.interp([hi], t, w)])
    return float(np.sum((ws[1:] + ws[:-1]) * np.diff(ts)) / 2)


def in_window(samples: Sequence[Sample], start: float, end: float) -> list[Sample]:
    return [s for s in samples if start <= s[0] <= end]


class PowerSampler:
    """A daemon thread that records ``(time, watts)`` from each probe every ``interval_s``.
    A failed reading is left out; the first failure of each probe is kept in ``errors``."""

    def __init__(self, probes: dict[str, Probe], interval_s: float) -> None:
        self.probes, self.interval_s = probes, interval_s
        self.samples: dict[str, list[Sample]] = {k: [] for k in probes}
        self.errors: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        due = time.perf_counter()
        while not self._stop.is_set():
            for name, read in self.probes.items():
                before = time.perf_counter()
                try:
                    watts = read()
                except Exception as exc:
                    self.errors.setdefault(name, f"{name} reading failed ({exc})")
                    continue
                self.samples[name].append(((before + time.perf_counter()) / 2, watts))
            due = max(due + self.interval_s, time.perf_counter())
            self._stop.wait(due - time.perf_counter())

    def __enter__(self) -> PowerSampler:
        if self.probes:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def nvml_probes(handles: list[Any]) -> tuple[dict[str, Probe], dict[str, str]]:
    """Power readers summed over ``handles``: ``power`` (nvmlDeviceGetPowerUsage) and
    ``instant`` (the instantaneous power field); one whose first reading fails is absent, with
    the reason."""
    import pynvml

    def power() -> float:
        return sum(pynvml.nvmlDeviceGetPowerUsage(h) for h in handles) / 1e3

    def instant() -> float:
        total = 0.0
        for h in handles:
            v = pynvml.nvmlDeviceGetFieldValues(h, [pynvml.NVML_FI_DEV_POWER_INSTANT])[0]
            if v.nvmlReturn != pynvml.NVML_SUCCESS:
                raise pynvml.NVMLError(v.nvmlReturn)
            kinds = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")
            total += float(getattr(v.value, kinds[v.valueType]))
        return total / 1e3

    probes: dict[str, Probe] = {}
    reasons: dict[str, str] = {}
    for name, read in (("power", power), ("instant", instant)):
        try:
            read()
            probes[name] = read
        except Exception as exc:
            reasons[name] = f"{name} unreadable (NVML: {exc})"
    return probes, reasons


def training_images(root: Path | None, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first ``n`` MNIST training images, normalised as ``load_dataset`` does, from
    ``<root>/mnist`` (default root: the data cache), and where they came from. Nothing is
    fetched (a GPU machine may have no network): without the files, random images of MNIST's
    shape, and the reason."""
    from fsnn.platform.data import DATASETS, DataError, cache_root, normalize, read_idx

    folder = cache_root(root) / "mnist"
    try:
        images = read_idx(folder / "train-images-idx3-ubyte")[:n, None]
        labels = read_idx(folder / "train-labels-idx1-ubyte")[:n].astype(np.int64)
    except DataError as exc:
        g = torch.Generator().manual_seed(0)
        return (torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g),
                f"random images: MNIST is not readable here ({exc}); run `fsnn data fetch mnist` "
                f"or pass --data-root")
    return normalize(images, DATASETS["mnist"]), torch.from_numpy(labels), f"MNIST ({folder})"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.machine() or "cpu"


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="f64c5")
    ap.add_argument("--T", type=int, default=30)
    ap.add_argument("--neuron", default="IF", choices=["IF", "LIF"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--images", type=int, default=None,
                    help="training images in the epoch (default: CPU 512; CUDA ~--target-s)")
    ap.add_argument("--target-s", type=float, default=30.0,
                    help="CUDA without --images: size the epoch to last about this long")
    ap.add_argument("--warmup", type=int, default=3, help="untimed batches before the window")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--interval-ms", type=float, default=20.0, help="power sampling period")
    ap.add_argument("--data-root", type=Path, default=None, help="holds mnist/ (IDX files)")
    ap.add_argument("--out", default="benchmarks/results/energy_check.json")
    args = ap.parse_args(argv)
    if args.warmup < 1 or args.batch < 1 or (args.images is not None and args.images < 1):
        ap.error("--warmup, --batch and --images must be >= 1")
    return args


def build(args: argparse.Namespace,
          dev: torch.device) -> tuple[Config, FeedbackSNN, torch.optim.Optimizer]:
    """Config, model and optimiser as ``fsnn train`` builds them (IDE, MNIST)."""
    from fsnn.platform.config import config_from_dict
    from fsnn.platform.trainer import build_optimizer, model_from_config

    cfg = config_from_dict({"model": args.model, "T": args.T, "neuron": args.neuron,
                            "data": {"name": "mnist", "batch_size": args.batch},
                            "method": {"name": "ide"}, "train": {"epochs": 1}})
    model = model_from_config(cfg, num_classes=10).to(dev)
    return cfg, model, build_optimizer(cfg, model)


def warm_up(model: FeedbackSNN, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
            args: argparse.Namespace, dev: torch.device) -> float | None:
    """Runs ``--warmup`` batches before the window; images/s of those after the first."""
    from fsnn.platform.data import make_loader
    from fsnn.platform.trainer import train_epoch

    n = args.warmup * args.batch
    batches = list(make_loader(x[:n], y[:n], args.batch, shuffle=False, seed=0))
    train_epoch(model, batches[:1], opt, None, dev)
    sync(dev)
    if len(batches) < 2:
        return None
    rest = train_epoch(model, batches[1:], opt, None, dev)
    sync(dev)
    return rest.samples / max(rest.seconds, 1e-9)


def epoch_size(args: argparse.Namespace, dev: torch.device, rate: float | None) -> int:
    if args.images is not None:
        return min(args.images, MNIST_TRAIN)
    if dev.type != "cuda" or rate is None:
        return 512
    batches = max(4, round(rate * args.target_s / args.batch))
    return min(batches * args.batch, MNIST_TRAIN)


def progress(batches: int) -> Callable[[int, float | torch.Tensor], None]:
    """About five progress lines per epoch (the loss is read only when a line is printed)."""
    every = max(1, batches // 5)

    def show(i: int, loss: float | torch.Tensor) -> None:
        if (i + 1) % every == 0 and i + 1 < batches:
            print(f"[energy_check] batch {i + 1}/{batches}  loss {float(loss):.4f}", flush=True)
    return show


def power_figures(name: str, samples: list[Sample], t0: float, t1: float,
                  counter_j: float | None) -> dict[str, float]:
    """Integrated joules, mean watts, mean W × s, the counter's ratio and the sampling period."""
    window = in_window(samples, t0, t1)
    if not window:
        return {}
    seconds = t1 - t0
    joules = integrate_power(samples, t0, t1)
    mean_w = float(np.mean([w for _, w in window]))
    out = {f"{name}_integrated_j": joules, f"{name}_mean_w": mean_w,
           f"{name}_mean_w_x_s": mean_w * seconds, f"{name}_samples": float(len(window))}
    if len(window) > 1:
        out[f"{name}_period_ms"] = float(np.median(np.diff([t for t, _ in window]))) * 1e3
    if counter_j is not None and joules > 0:
        out[f"counter_over_{name}"] = counter_j / joules
    return out


@dataclass
class Window:
    """What one metered window saw: the meter's joules, the power samples, its bounds."""

    energy: dict[str, float]
    samples: dict[str, list[Sample]]
    errors: dict[str, str]
    t0: float
    t1: float


class Meter(Protocol):
    """What ``metered`` needs of an ``EnergyMeter``."""

    def start(self) -> None: ...

    def stop(self) -> dict[str, float]: ...


def metered(work: Callable[[], R], meter: Meter, probes: dict[str, Probe], interval_s: float,
            dev: torch.device) -> tuple[R, Window]:
    """Runs ``work()`` between ``meter.start()`` and ``meter.stop()`` while the probes are
    sampled (from a few periods before the window to a few after)."""
    pad = 3 * interval_s if probes else 0.0
    with PowerSampler(probes, interval_s) as sampler:
        time.sleep(pad)  # samples on both sides of each bound, for the interpolation there
        sync(dev)
        t0 = time.perf_counter()
        meter.start()
        result = work()
        sync(dev)
        energy = meter.stop()
        t1 = time.perf_counter()
        time.sleep(pad)
    return result, Window(energy, sampler.samples, dict(sampler.errors), t0, t1)


def energy_figures(win: Window, images: int) -> tuple[dict[str, float], dict[str, str]]:
    """The counter's joules, each probe's figures against it, RAPL's joules; reasons for
    probes that saw nothing inside the window."""
    row: dict[str, float] = {}
    absent = dict(win.errors)
    counter = win.energy.get("energy/gpu_j")
    if counter is not None:
        row["counter_gpu_j"] = counter
        row["counter_gpu_j_per_image"] = counter / images
    for name, samples in win.samples.items():
        figures = power_figures(name, samples, win.t0, win.t1, counter)
        row.update(figures)
        if not figures:
            absent.setdefault(name, f"{name}: no sample inside the window")
    if "energy/cpu_j" in win.energy:
        row["rapl_cpu_j"] = win.energy["energy/cpu_j"]
        row["rapl_cpu_j_per_image"] = win.energy["energy/cpu_j"] / images
    return row, absent


def measure(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """The metered epoch: its figures, a reason for each figure that is absent, the config."""
    from fsnn.pipelines.energy_meter import EnergyMeter
    from fsnn.platform.data import make_loader
    from fsnn.platform.trainer import build_scheduler, train_epoch

    dev = torch.device(args.device)
    torch.manual_seed(0)
    wanted = MNIST_TRAIN if args.images is None and dev.type == "cuda" else args.images or 512
    x, y, source = training_images(args.data_root, max(wanted, args.warmup * args.batch))
    cfg, model, opt = build(args, dev)
    rate = warm_up(model, opt, x, y, args, dev)
    images = epoch_size(args, dev, rate)
    loader = make_loader(x[:images], y[:images], args.batch, shuffle=True, seed=0)
    scheduler = build_scheduler(cfg, opt, len(loader))
    gpus = [] if dev.type != "cuda" else \
        [dev.index if dev.index is not None else torch.cuda.current_device()]
    meter = EnergyMeter(gpus=gpus)  # NVML index = CUDA index, as the training worker assumes
    absent = dict(meter.reasons)
    probes, why = nvml_probes(meter.gpu_handles) if meter.gpu_handles else ({}, {})
    absent.update(why)
    if not meter.gpu_handles:
        absent["power"] = f"not sampled: {meter.reasons['energy/gpu_j']}"
    stats, win = metered(lambda: train_epoch(model, loader, opt, scheduler, dev,
                                             on_batch=progress(len(loader))),
                         meter, probes, args.interval_ms / 1e3, dev)
    seconds = win.t1 - win.t0
    row: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "data": source, "model": args.model, "T": args.T, "batch": args.batch,
        "images": stats.samples, "seconds": seconds, "images_per_s": stats.samples / seconds,
        "train_loss": stats.loss, "train_accuracy": stats.accuracy, **stats.adjoint}
    if rate is not None:
        row["warmup_images_per_s"] = rate
    figures, missing = energy_figures(win, stats.samples)
    row.update(figures)
    absent.update(missing)
    return row, absent, cfg.model_dump(mode="json")


def verdict(row: dict[str, Any]) -> str | None:
    ratio = row.get("counter_over_power")
    if ratio is None:
        return None
    ok = abs(ratio - 1) <= CRITERION
    short = "" if row["seconds"] >= 20 else \
        "; the window is under 20 s, where the 1 s averaging weighs more"
    return (f"counter / integrated power = {ratio:.4f} over {row['seconds']:.1f} s: "
            f"{'plausible (within' if ok else 'NOT plausible (outside'} "
            f"{CRITERION:.0%}){short}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    row, absent, config = measure(args)
    print()
    print(table([{"quantity": k, "value": v} for k, v in row.items()], ["quantity", "value"]))
    for key, reason in absent.items():
        print(f"absent {key}: {reason}")
    print(f"note: {EXPLAIN}")
    check = verdict(row)
    if check:
        print(check)
    payload = {"args": {k: str(v) for k, v in vars(args).items()}, "result": row,
               "absent": absent, "note": EXPLAIN, "verdict": check, "config": config}
    print(f"wrote {write_json(args.out, payload)}")
    return payload


if __name__ == "__main__":
    main()
