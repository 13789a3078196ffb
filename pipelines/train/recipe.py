"""What a Ray Train worker (`fsnn train`) and a Ray Tune trial (`fsnn tune`) share: the model,
optimiser, schedule and loaders built from a Config, one epoch's metrics, and the artifacts
logged when a run ends."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fsnn.platform.config import Config
from fsnn.platform.data import DATASETS, ShardedLoader, load_dataset, make_loader
from fsnn.platform.model import FeedbackSNN
from fsnn.platform.spec import save_spec
from fsnn.platform.trainer import (
    EpochStats,
    build_optimizer,
    build_scheduler,
    model_from_config,
)

# the metrics every epoch reports (besides rate_<population> and, with IDE, the adjoint ones)
EPOCH_METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr",
                 "epoch_seconds", "images_per_s", "epoch")
ADJOINT_METRICS = ("adjoint_iterations", "adjoint_residual", "adjoint_unconverged")


@dataclass
class Training:
    model: FeedbackSNN
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    train_loader: ShardedLoader
    test_loader: ShardedLoader
    sample: torch.Tensor  # the first test inputs, for the rate-convergence plot


def build_training(cfg: Config, *, rank: int = 0, world: int = 1) -> Training:
    """The model, optimiser, schedule and this rank's loaders for ``cfg`` (data from the cache)."""
    info = DATASETS[cfg.data.name]
    root = Path(cfg.data.root) if cfg.data.root else None
    xtr, ytr = load_dataset(cfg.data.name, "train", root, limit=cfg.data.train_limit,
                            progress=False)
    xte, yte = load_dataset(cfg.data.name, "test", root, limit=cfg.data.test_limit,
                            progress=False)
    per_worker = max(1, cfg.data.batch_size // world)
    train_loader = make_loader(xtr, ytr, per_worker, shuffle=True, seed=cfg.train.seed,
                               rank=rank, world_size=world, drop_last=world > 1)
    test_loader = make_loader(xte, yte, cfg.data.test_batch_size, shuffle=False, seed=0,
                              rank=rank, world_size=world)
    model = model_from_config(cfg, num_classes=info.num_classes, labels=list(info.classes))
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, len(train_loader))
    return Training(model, optimizer, scheduler, train_loader, test_loader, xte[:64])


def reported_metrics(cfg: Config) -> list[str]:
    """The names an epoch of ``cfg`` reports (to check a tune metric before any trial runs)."""
    model = model_from_config(cfg, num_classes=DATASETS[cfg.data.name].num_classes)
    rates = [f"rate_{p.name}" for p in model.populations()]
    adjoint = list(ADJOINT_METRICS) if cfg.method.name == "ide" else []
    return [*EPOCH_METRICS, *rates, *adjoint]


def all_reduce(values: list[float], world: int) -> list[float]:
    if world == 1:
        return values
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


ENERGY_KEYS = ("energy/gpu_j", "energy/cpu_j")


def epoch_metrics(tr: EpochStats, te: EpochStats, lr: float, world: int = 1,
                  energy: dict[str, float] | None = None) -> dict[str, float]:
    """One epoch's metrics, summed over ``world`` ranks (a collective when world > 1).

    ``energy``: this rank's measured joules; summed over the ranks that measured them and
    absent where no rank has the counter."""
    energy = energy or {}
    sums = all_reduce([tr.loss * tr.samples, tr.accuracy * tr.samples, tr.samples,
                       te.loss * te.samples, te.accuracy * te.samples, te.samples,
                       tr.seconds, *(energy.get(k, 0.0) for k in ENERGY_KEYS),
                       *(float(k in energy) for k in ENERGY_KEYS)], world)
    metrics: dict[str, float] = {
        "train_loss": sums[0] / sums[2], "train_accuracy": sums[1] / sums[2],
        "test_loss": sums[3] / max(sums[5], 1), "test_accuracy": sums[4] / max(sums[5], 1),
        "lr": lr, "epoch_seconds": tr.seconds,
        "images_per_s": sums[2] / max(sums[6] / world, 1e-9),
    }
    for i, k in enumerate(ENERGY_KEYS):
        if sums[9 + i] > 0:
            metrics[k] = sums[7 + i]
            metrics[f"{k}_per_image"] = sums[7 + i] / sums[2]
    metrics.update({f"rate_{k}": v for k, v in tr.rates.items()})
    metrics.update(tr.adjoint)
    return metrics


def log_final_artifacts(c: Any, run_id: str, model: FeedbackSNN, dataset: str,
                        history: list[dict[str, float]], sample: torch.Tensor) -> None:
    """The run's spec (spec/), the same spec as the MLflow Model ``model`` (pyfunc + fsnn
    flavors; :mod:`fsnn.pipelines.mlflow_model`), training curves and rate convergence
    (plots/)."""
    from fsnn.pipelines.plots import plot_curves, plot_rate_convergence

    model = model.cpu().eval()
    with tempfile.TemporaryDirectory() as d:
        spec_dir = Path(d) / "spec"
        net = model.to_network(metadata={"mlflow_run_id": run_id, "dataset": dataset})
        save_spec(net, spec_dir)
        c.log_artifacts(run_id, str(spec_dir), "spec")
        from fsnn.pipelines.mlflow_model import log_spec_model

        log_spec_model(c, run_id, spec_dir, net, sample)  # the MLflow Model `model` (~3 s)
        plots = Path(d) / "plots"
        plots.mkdir()
        plot_curves(history, plots / "curves.png")
        plot_rate_convergence(net, sample, plots / "rate_convergence.png")
        c.log_artifacts(run_id, str(plots), "plots")
    c.set_tag(run_id, "fsnn.spec", "spec")
