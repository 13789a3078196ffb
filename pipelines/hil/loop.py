"""Hardware-in-the-loop training: the simulator forward, its checks, epoch retries and the
in-training evaluation on backends.

* :func:`preflight` runs on the driver before Ray Train starts: every backend the config names
  (``forward``, ``target_eval.backends``) must accept its options, express the spec, fit the
  target machine and find its simulator or board, else a :class:`BackendError` says which and why;
* :func:`open_forward` (in each training worker) freezes batch norm, starts the
  :class:`~fsnn.pipelines.forward_pool.ForwardPool` and makes it the model's rate source;
* :func:`train_epoch_in_loop` runs an epoch and, when a simulator worker dies, restores the
  model, optimiser and schedule to the epoch's start and runs the epoch again on the restarted
  worker (``hil.retries`` times at most);
* :func:`evaluate_targets` deploys the current spec to ``target_eval.backends`` (sharded over Ray
  actors; the forward's own pool is reused for the forward's backend) and returns accuracy and
  agreement with the torch reference as ``target/<backend>/<metric>``.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from fsnn.backends.base import BackendError, get_backend
from fsnn.pipelines.hil.pool import ForwardPool, ForwardWorkerLost, attach
from fsnn.platform.config import Config
from fsnn.platform.model import FeedbackSNN
from fsnn.platform.spec import Network
from fsnn.platform.trainer import Batches, EpochStats, train_epoch


def backend_options(cfg: Config, backend: str, *, dtype: torch.dtype | None = None
                    ) -> dict[str, Any]:
    """The constructor options of ``backend``: the config's ``backend_options``; the torch
    backend runs in the model's dtype when it is training's forward."""
    options: dict[str, Any] = dict(cfg.backend_options.get(backend, {}))  # type: ignore[call-overload]
    if backend == "torch" and dtype is not None:
        options.setdefault("dtype", dtype)
    return options


def simulator_backends(cfg: Config) -> list[str]:
    """The backends a training run of ``cfg`` uses besides the engine, forward first."""
    names = [] if cfg.forward == "engine" else [cfg.forward]
    every, backends = cfg.target_eval_plan()
    if every > 0:
        names += [b for b in backends if b not in names]
    return names


def preflight(cfg: Config, net: Network) -> None:
    """Fail before any training step if a configured backend cannot run ``net``."""
    for name in simulator_backends(cfg):
        where = "forward" if name == cfg.forward else "target_eval.backends"
        try:
            backend = get_backend(name, **backend_options(cfg, name))
        except (TypeError, BackendError) as exc:
            text = str(exc).removeprefix(f"backend {name}: ").replace(
                " (from --option or the config's backend_options)", "")
            raise BackendError(f"backend_options.{name}: {text}") from None
        try:
            backend.check(net)
            probe = getattr(backend, "probe", None)
            if probe is not None:
                probe()
        except BackendError as exc:
            raise BackendError(f"{where}: {name} cannot run this model: {exc}") from None


def cpu_budget(cfg: Config) -> tuple[float, str]:
    """Ray CPUs of a run and, where it needs more than a CPU per training worker, why (with what
    lowers it): the simulator actors of every training worker, and the actors of the in-training
    evaluation on backends the forward pool does not serve."""
    need, why = float(cfg.train.num_workers), []
    if cfg.forward != "engine":
        need += cfg.train.num_workers * cfg.hil.workers * cfg.hil.cpus_per_worker
        why.append(f"each of the {cfg.train.num_workers} training workers also starts "
                   f"{cfg.hil.workers} simulator actor(s) of {cfg.hil.cpus_per_worker:g} CPU "
                   f"(lower --num-workers, hil.workers or hil.cpus_per_worker)")
    if [b for b in simulator_backends(cfg) if b not in (cfg.forward, "torch")]:
        need += cfg.target_eval.workers
        why.append(f"the in-training evaluation starts {cfg.target_eval.workers} actor(s) of "
                   f"1 CPU (lower target_eval.workers)")
    return need, f" ({'; '.join(why)})" if why else ""


def open_forward(cfg: Config, model: FeedbackSNN) -> ForwardPool | None:
    """With a simulator ``forward``: freeze batch norm, start the pool, attach it."""
    if cfg.forward == "engine":
        return None
    model.freeze_bn()
    dtype = next(model.parameters()).dtype
    pool = ForwardPool(cfg.forward, workers=cfg.hil.workers,
                       cpus_per_worker=cfg.hil.cpus_per_worker,
                       options=backend_options(cfg, cfg.forward, dtype=dtype),
                       max_restarts=cfg.hil.retries)
    attach(model, pool)
    return pool


def train_epoch_in_loop(model: FeedbackSNN, batches: Batches, optimizer: torch.optim.Optimizer,
                        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
                        device: torch.device, pool: ForwardPool, *, retries: int,
                        on_batch: Callable[[int, torch.Tensor], None] | None = None,
                        log: Callable[[str], None] | None = None) -> tuple[EpochStats, int]:
    """One epoch with ``pool`` as the forward; returns the stats and how often it was retried.

    When a simulator worker dies the epoch restarts from its beginning: model, optimiser,
    schedule and torch's random state as they were, ``batches`` iterated again (a loader
    with ``set_epoch`` gives the same order), the restarted worker loaded with the spec."""
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    parts: list[Any] = [model, optimizer, *([scheduler] if scheduler is not None else [])]
    states = [copy.deepcopy(p.state_dict()) for p in parts]
    rng = torch.get_rng_state()
    for attempt in range(retries + 1):
        try:
            return train_epoch(model, batches, optimizer, scheduler, device,
                               on_batch=on_batch), attempt
        except ForwardWorkerLost as exc:
            if attempt == retries:
                raise ForwardWorkerLost(f"{exc}; the epoch failed {retries + 1} times "
                                        f"(hil.retries={retries})") from exc
            say(f"[fsnn] {exc}: retrying the epoch ({attempt + 1}/{retries})")
            for obj, state in zip(parts, states, strict=True):
                obj.load_state_dict(copy.deepcopy(state))
            torch.set_rng_state(rng)
            pool.recover()
    raise AssertionError("unreachable")


def evaluate_targets(cfg: Config, net: Network, x: torch.Tensor, y: torch.Tensor,
                     pool: ForwardPool | None = None) -> dict[str, float]:
    """Accuracy of ``net`` on every ``target_eval`` backend, and agreement with the torch
    reference (float64), as ``target/<backend>/<metric>``."""
    from fsnn.pipelines.deploy import ShardOutput, compare, evaluate

    reference, _ = evaluate(net, "torch", x, workers=1, progress=False)
    out: dict[str, float] = {}
    for name in cfg.target_eval_plan()[1]:
        start = time.perf_counter()
        if pool is not None and name == pool.backend:
            training = pool.take_stats()  # the evaluation does not count as training's forward
            pool.push(net)
            res = pool.run(x)
            pool.stats = training
            wall = time.perf_counter() - start
            outs = [ShardOutput(0, res.logits.argmax(1), res.counts, res.events, res.wall_time)]
            build = 0.0
        else:
            outs, build = evaluate(net, name, x, workers=cfg.target_eval.workers,
                                   options=backend_options(cfg, name), progress=False,
                                   remote=name != "torch")
            wall = time.perf_counter() - start
        m = compare(name, outs, y, reference if name != "torch" else None, wall, build)
        keep = ("accuracy", "agreement_predictions", "agreement_counts", "samples_per_s",
                "spikes_per_sample")
        out.update({f"target/{name}/{k}": float(v) for k, v in m.items() if k in keep})
    return out


def target_data(cfg: Config, net: Network) -> tuple[torch.Tensor, torch.Tensor]:
    from fsnn.pipelines.deploy import load_test_data

    return load_test_data(net, cfg.data.name, cfg.target_eval.samples, cfg.data.root)


def due(cfg: Config, epoch: int) -> bool:
    """Whether the in-training evaluation runs after ``epoch`` (0-based)."""
    every = cfg.target_eval_plan()[0]
    return every > 0 and ((epoch + 1) % every == 0 or epoch + 1 == cfg.train.epochs)


__all__ = ["ForwardPool", "ForwardWorkerLost", "backend_options", "cpu_budget", "due",
           "evaluate_targets", "open_forward", "preflight", "simulator_backends",
           "target_data", "train_epoch_in_loop"]
