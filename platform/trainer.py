"""Single-process training and evaluation (no Ray). Each Ray Train worker runs these functions.

The optimiser settings default to the IDE paper's (SGD, lr 0.05, momentum 0.9, weight decay 5e-4,
x0.1 at epochs 30/60/90).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fsnn.platform.config import Config
from fsnn.platform.ide import AdjointConfig
from fsnn.platform.methods import method_from_config
from fsnn.platform.model import FeedbackSNN
from fsnn.platform.solvers import DivergenceError
from fsnn.platform.spec import Neuron
from fsnn.platform.zoo import build_model


def neuron_from_config(cfg: Config) -> Neuron:
    return Neuron(model=cfg.neuron, v_th=cfg.vth, leak=cfg.leak_value, reset=cfg.reset)


def model_from_config(cfg: Config, *, num_classes: int, labels: list[str] | None = None,
                      input_shape: tuple[int, ...] | None = None) -> FeedbackSNN:
    return build_model(cfg.model, num_classes=num_classes, T=cfg.T,
                       neuron=neuron_from_config(cfg), dropout=cfg.dropout,
                       input_shape=input_shape, timing=cfg.timing,
                       adjoint=AdjointConfig(cfg.method.solver, cfg.method.max_iter,
                                             cfg.method.tol, cfg.method.memory,
                                             cfg.method.check_every),
                       labels=labels, method=method_from_config(cfg.method)).set_speed(
        cuda_graphs=cfg.train.cuda_graphs,
        spike_dtype=None if cfg.train.spike_dtype == "float32" else torch.bfloat16,
        fused_step=cfg.train.fused_step, channels_last=cfg.train.channels_last)


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration schedule: linear warm-up, then step / cosine / constant by epoch."""
    o = cfg.optim
    total = cfg.train.epochs * steps_per_epoch

    def factor(it: int) -> float:
        warm = min(1.0, (it + 1) / o.warmup_iters) if o.warmup_iters else 1.0
        epoch = it // max(1, steps_per_epoch)
        if o.schedule == "step":
            base = o.gamma ** sum(epoch >= m for m in o.milestones)
        elif o.schedule == "cosine":
            base = 0.5 * (1 + math.cos(math.pi * min(it, total) / max(1, total)))
        else:
            base = 1.0
        return warm * base

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    samples: int
    seconds: float
    rates: dict[str, float]
    adjoint: dict[str, float]  # the training method's statistics (IDE: adjoint_iterations, ...)

    def metrics(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}_loss": self.loss, f"{prefix}_accuracy": self.accuracy,
               f"{prefix}_seconds": self.seconds,
               f"{prefix}_images_per_s": self.samples / max(self.seconds, 1e-9)}
        out.update({f"{prefix}_rate_{k}": v for k, v in self.rates.items()})
        out.update(self.adjoint)
        return out


Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class _Sums:
    """Loss, correct predictions and mean rates summed on the device over a pass; read once
    (``result``), so the loop never waits for the GPU."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device)
        self.rates: dict[str, torch.Tensor] = {}
        self.seen = 0
        self.batches = 0
        # the first batch whose loss was not finite (-1: none); kept on the device
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.start = time.perf_counter()

    def add(self, loss_sum: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
            rates: dict[str, torch.Tensor]) -> None:
        n = y.shape[0]
        bad = ~torch.isfinite(loss_sum.detach()) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, self.batches, self.first_bad)
        self.batches += 1
        self.loss += loss_sum.detach()
        self.correct += (logits.detach().argmax(1) == y).sum()
        self.seen += n
        for k, v in rates.items():
            self.rates[k] = self.rates[k] + v * n if k in self.rates else v * n

    def check_finite(self) -> None:
        """Raise :class:`DivergenceError` naming the first batch whose loss was not finite."""
        first = int(self.first_bad)  # waits for the device
        if first >= 0:
            raise DivergenceError(f"the loss became NaN or infinite at batch {first + 1}")

    def result(self, adjoint: dict[str, float]) -> EpochStats:
        n = max(self.seen, 1)
        loss, accuracy = float(self.loss) / n, float(self.correct) / n  # waits for the device
        return EpochStats(loss, accuracy, self.seen, time.perf_counter() - self.start,
                          {k: float(v) / n for k, v in self.rates.items()}, adjoint)


def train_epoch(model: FeedbackSNN, batches: Batches, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None, device: torch.device,
                *, on_batch: Callable[[int, torch.Tensor], None] | None = None,
                ide_model: FeedbackSNN | None = None) -> EpochStats:
    """One pass over ``batches``. ``model`` may be a DDP wrapper; ``ide_model`` is the inner
    FeedbackSNN whose method statistics and rates are reported (defaults to ``model``).

    ``on_batch(i, loss)`` gets the batch's loss as a 0-d tensor on the device: converting it
    (``float(loss)``) waits for the GPU, so a progress callback does it only when it prints.
    Nothing else in the loop waits for the device."""
    inner = ide_model or model
    model.train()
    inner.reset_method_stats()
    sums = _Sums(device)
    for i, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        try:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        except DivergenceError as exc:
            sums.check_finite()  # an earlier batch's loss went first: name that one
            raise DivergenceError(f"{exc} at batch {i + 1}") from None
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        sums.add(loss * y.shape[0], logits, y, inner.last_rates)
        if on_batch is not None:
            on_batch(i, loss.detach())
    sums.check_finite()
    return sums.result(inner.method_stats())


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, device: torch.device) -> EpochStats:
    """One pass without gradients (evaluation mode); like :func:`train_epoch`, it reads the
    device once, at the end."""
    inner = getattr(model, "module", model)
    model.eval()
    sums = _Sums(device)
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        sums.add(F.cross_entropy(logits, y, reduction="sum"), logits, y,
                 getattr(inner, "last_rates", {}))
    return sums.result({})


def pick_device(use_gpu: bool) -> torch.device:
    if use_gpu and not torch.cuda.is_available():
        raise RuntimeError("use_gpu is set but no CUDA device is visible; "
                           "drop --gpu or run on a GPU machine")
    return torch.device("cuda" if use_gpu else "cpu")
