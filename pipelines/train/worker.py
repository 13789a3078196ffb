"""The function each Ray Train worker runs: the single-process IDE trainer on its data shard.

Rank 0 alone talks to MLflow (metrics per epoch, the final spec, plots); every rank reports to
Ray Train, and rank 0 attaches a checkpoint every ``train.checkpoint_every`` epochs.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fsnn.pipelines.progress import Event
from fsnn.pipelines.train.recipe import build_training, epoch_metrics, log_final_artifacts
from fsnn.platform.checkpoint import (
    CheckpointError,
    TrainingState,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from fsnn.platform.config import ConfigError, config_from_dict
from fsnn.platform.data import DataError
from fsnn.platform.solvers import DivergenceError
from fsnn.platform.trainer import evaluate, train_epoch

# failures that a retry meets again: they end the run at once (see pipelines/train/ray_trainer.py)
DETERMINISTIC = (ConfigError, DataError, CheckpointError, DivergenceError)


def _gather(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def newest_state(candidates: list[str | Path]) -> TrainingState | None:
    """The state of the newest complete checkpoint among ``candidates`` (checkpoint folders,
    or run folders holding ``checkpoint_*``); unreadable ones are skipped, so a checkpoint
    torn by a kill falls back to the one before it."""
    found: list[tuple[int, Path]] = []
    for c in candidates:
        root = Path(c)
        if "://" in str(c) or not root.is_dir():
            continue
        for d in [root, *root.glob("checkpoint_*")]:
            try:
                found.append((int(read_meta(d)["epoch"]), d))
            except (CheckpointError, KeyError, TypeError, ValueError):
                continue
    for _, d in sorted(found, key=lambda e: e[0], reverse=True):
        try:
            return load_checkpoint(d)
        except CheckpointError:
            continue
    return None


def epoch_seed(seed: int, epoch: int) -> int:
    """Each epoch's random stream (dropout masks) depends only on the seed and the epoch, so a
    resumed run draws what an uninterrupted one would."""
    return (seed * 1_000_003 + epoch) % (2**63)


def _sync_buffers(model: torch.nn.Module, world: int) -> None:
    """Every rank evaluates with rank 0's buffers (BN statistics, spectral-norm vectors): the
    model that is checkpointed and exported."""
    if world == 1:
        return
    import torch.distributed as dist

    for b in model.buffers():
        dist.broadcast(b.data, 0)


def _progress(cfg: Any, epoch: int, batches: int, push: Callable[[Event], None]
              ) -> Callable[[int, torch.Tensor], None]:
    """Sends the driver the batch, loss and images per second every ``train.log_every``
    batches (the driver draws them: pipelines/progress.py)."""
    start = time.perf_counter()
    every = cfg.train.log_every
    per_batch = max(1, cfg.data.batch_size)

    def show(i: int, loss: torch.Tensor) -> None:
        if (i + 1) % every == 0 and i + 1 < batches:
            value = float(loss)  # waits for the device: only when progress is sent
            rate = (i + 1) * per_batch / max(time.perf_counter() - start, 1e-9)
            push({"kind": "batch", "epoch": epoch + 1, "epochs": cfg.train.epochs,
                   "batch": i + 1, "batches": batches, "loss": value, "img_s": rate})
    return show


def train_loop(loop: dict[str, Any]) -> None:
    """Ray Train's worker function; a deterministic failure ends the run without retries."""
    from fsnn.pipelines.train.ray_trainer import FatalTrainingError

    try:
        _train(loop)
    except DETERMINISTIC as exc:
        what = "lower optim.lr or check the data" if isinstance(exc, DivergenceError) else ""
        # the driver prints the reason in one line: no traceback from each worker
        logging.getLogger(RAY_TRAIN_UTIL_LOGGER).addFilter(_drop_fatal_traceback)
        raise FatalTrainingError(f"{exc}" + (f"; {what}" if what else "")) from None


RAY_TRAIN_UTIL_LOGGER = "ray.train.v2._internal.util"  # logs a worker's error with traceback


def _drop_fatal_traceback(record: logging.LogRecord) -> bool:
    return "FatalTrainingError" not in record.getMessage()


def _train(loop: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch

    cfg = config_from_dict(loop["config"])
    run_id: str = loop["run_id"]
    from fsnn.pipelines.progress import pusher

    push = pusher(loop.get("progress"))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(loop.get("threads", 1))))
    torch.manual_seed(cfg.train.seed)
    device = ray.train.torch.get_device()
    setup = build_training(cfg, rank=rank, world=world)
    model, optimizer, scheduler = setup.model, setup.optimizer, setup.scheduler
    train_loader, test_loader = setup.train_loader, setup.test_loader
    start, history = 0, []
    # the newest of: Ray's checkpoint of this run (a restart), the run's own folder (a restart
    # can race the controller's bookkeeping of the last report) and --resume's checkpoint
    candidates = [p for p in (loop.get("run_dir"), loop.get("resume")) if p]
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = newest_state([d, *candidates])
    else:
        state = newest_state(candidates)
    if state is not None:
        model.load_state_dict(state.model)
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        start, history = state.epoch, state.history
    elif loop.get("init"):  # fine-tuning: the weights of a trained run, a fresh optimiser
        model.load_state_dict(load_checkpoint(loop["init"]).model)
    from fsnn.pipelines.hil.loop import (
        due,
        evaluate_targets,
        open_forward,
        target_data,
        train_epoch_in_loop,
    )

    pool = open_forward(cfg, model)  # hardware in the loop: the forward on a simulator
    ddp = ray.train.torch.prepare_model(model)
    c = None
    if rank == 0:
        from fsnn.pipelines.tracking import client, log_epoch, set_tags

        c = client(loop["tracking_uri"])
        for row in history:  # epochs checkpointed before a restart but never logged
            log_epoch(c, run_id, {k: v for k, v in row.items() if k != "epoch"},
                      int(row["epoch"]))
    where = _gather((ray.get_runtime_context().get_node_id(), os.getpid()), world)
    if c is not None:
        set_tags(c, run_id, {"fsnn.worker_nodes": ",".join(n for n, _ in where),
                            "fsnn.worker_pids": ",".join(str(p) for _, p in where),
                            "fsnn.resumed_from_epoch": str(start)})
    from fsnn.pipelines.energy_meter import EnergyMeter

    meter = EnergyMeter(gpus=[device.index or 0] if device.type == "cuda" else [],
                        cpu=ctx.get_local_rank() == 0)
    if c is not None:
        set_tags(c, run_id, {f"fsnn.absent.{k}": v for k, v in meter.reasons.items()})
    targets = None
    for epoch in range(start, cfg.train.epochs):
        train_loader.set_epoch(epoch)
        torch.manual_seed(epoch_seed(cfg.train.seed, epoch))
        meter.start()
        retries = 0
        progress = _progress(cfg, epoch, len(train_loader), push) if rank == 0 else None
        try:
            if pool is not None and world == 1:  # a dead simulator worker: retry the epoch
                tr, retries = train_epoch_in_loop(
                    model, train_loader, optimizer, scheduler, device, pool,
                    retries=cfg.hil.retries, on_batch=progress,
                    log=lambda msg: push({"kind": "note", "text": msg}))
            else:  # with several ranks a dead worker fails the rank: Ray Train restarts them
                tr = train_epoch(ddp, train_loader, optimizer, scheduler, device,
                                 ide_model=model, on_batch=progress)
        except DivergenceError as exc:
            raise DivergenceError(f"{exc} of epoch {epoch + 1}") from None
        energy = meter.stop()
        _sync_buffers(model, world)
        te = evaluate(model, test_loader, device)
        metrics = epoch_metrics(tr, te, optimizer.param_groups[0]["lr"], world, energy)
        if pool is not None:
            metrics.update(pool.take_stats().metrics())
            metrics["hil/epoch_retries"] = float(retries)
        if rank == 0 and due(cfg, epoch):
            net = model.to_network()
            if targets is None:
                targets = target_data(cfg, net)
            metrics.update(evaluate_targets(cfg, net, *targets, pool=pool))
        history.append({"epoch": float(epoch), **metrics})
        ckpt_obj = None
        tmp = None
        last = epoch + 1 == cfg.train.epochs
        if rank == 0 and ((epoch + 1) % cfg.train.checkpoint_every == 0 or last):
            tmp = tempfile.TemporaryDirectory()
            save_checkpoint(TrainingState(epoch + 1, model.state_dict(), optimizer.state_dict(),
                                          scheduler.state_dict(), run_id, loop["config"],
                                          history), tmp.name)
            ckpt_obj = ray.train.Checkpoint.from_directory(tmp.name)
        ray.train.report({**metrics, "epoch": epoch + 1}, checkpoint=ckpt_obj)
        if tmp is not None:
            tmp.cleanup()
        if rank == 0:
            assert c is not None
            log_epoch(c, run_id, metrics, epoch)
            on_targets = "".join(f"  {k.split('/')[1]} {v:.4f}" for k, v in metrics.items()
                                 if k.startswith("target/") and k.endswith("/accuracy"))
            push({"kind": "epoch", "text":
                  f"[fsnn] epoch {epoch + 1}/{cfg.train.epochs}  loss "
                  f"{metrics['train_loss']:.4f}  train {metrics['train_accuracy']:.4f}  test "
                  f"{metrics['test_accuracy']:.4f}{on_targets}  {metrics['images_per_s']:.0f} "
                  f"img/s  adjoint iters {metrics.get('adjoint_iterations', 0):.1f}"})
    if pool is not None:
        pool.close()
    if rank == 0:
        assert c is not None
        log_final_artifacts(c, run_id, model, cfg.data.name, history, setup.sample)

