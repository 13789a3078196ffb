"""Plots logged to MLflow: training curves and firing-rate convergence over time steps."""

from __future__ import annotations

from pathlib import Path

import torch

from fsnn.platform.engine import simulate
from fsnn.platform.spec import Network


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict[str, float]], out: Path) -> Path:
    plt = _pyplot()
    epochs = [int(h["epoch"]) + 1 for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(epochs, [h["train_loss"] for h in history], label="train")
    a.plot(epochs, [h["test_loss"] for h in history], label="test")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(epochs, [h["train_accuracy"] for h in history], label="train")
    b.plot(epochs, [h["test_accuracy"] for h in history], label="test")
    b.set_xlabel("epoch")
    b.set_ylabel("accuracy")
    b.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


@torch.no_grad()
def plot_rate_convergence(net: Network, x: torch.Tensor, out: Path) -> Path:
    """Average firing rate up to step t, per population, against t (the equilibrium forming)."""
    plt = _pyplot()
    res = simulate(net, x, record_trains=True)
    assert res.trains is not None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, train in res.trains.items():
        per_t = train.flatten(1).mean(1)  # mean over batch and neurons at each step
        running = per_t.cumsum(0) / torch.arange(1, len(per_t) + 1)
        ax.plot(range(1, len(per_t) + 1), running.numpy(), label=name)
    ax.set_xlabel("time step t")
    ax.set_ylabel("average rate up to t")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_energy(metrics: dict[str, float], backend: str, out: Path) -> Path:
    """Energy per inference: measured (GPU/CPU counters, SpiNNaker) beside the estimates."""
    plt = _pyplot()
    bars: list[tuple[str, float, str]] = []
    for key, label in (("energy/gpu_j_per_inference", "GPU (measured)"),
                       ("energy/cpu_j_per_inference", "CPU (measured)"),
                       ("energy/spinnaker_j_per_inference", "SpiNNaker (measured)")):
        if key in metrics:
            bars.append((label, metrics[key], "tab:blue"))
    for key, value in sorted(metrics.items()):
        if key.startswith("energy_est/"):
            name = key.removeprefix("energy_est/").removesuffix("_j")
            bars.append((f"{name} (estimate)", value, "tab:orange"))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if bars:
        ax.bar([b[0] for b in bars], [b[1] for b in bars], color=[b[2] for b in bars])
        ax.set_yscale("log")
    ax.set_ylabel("joules per inference")
    ax.set_title(f"{backend}: accuracy {metrics.get('accuracy', float('nan')):.4f}")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_tune(trials: list[dict[str, float]], metric: str, out: Path) -> Path:
    """A search at a glance: ``metric`` against T and against V_th (one point per trial, coloured
    by the other), and the mean firing rate against T. Each row has T, vth, metric, rate."""
    plt = _pyplot()
    rows = [t for t in trials if metric in t]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (("T", metric, "vth"), ("vth", metric, "T"), ("T", "rate", "vth"))
    labels = {"T": "time steps T", "vth": "threshold V_th", "rate": "mean firing rate"}
    for ax, (x, y, colour) in zip(axes, panels, strict=True):
        pts = [r for r in rows if y in r]
        if pts:
            sc = ax.scatter([r[x] for r in pts], [r[y] for r in pts],
                            c=[r[colour] for r in pts], cmap="viridis", edgecolors="k")
            fig.colorbar(sc, ax=ax, label=labels[colour])
        ax.set_xlabel(labels[x])
        ax.set_ylabel(labels.get(y, y))
        ax.grid(alpha=0.3)
        if x == "T":
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{len(rows)} trials")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
