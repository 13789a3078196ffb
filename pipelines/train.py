"""`fsnn train`: a Ray Train V2 TorchTrainer over N workers, tracked in MLflow, resumable."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsnn.pipelines.hil import cpu_budget
from fsnn.pipelines.raycluster import check_resources, connect
from fsnn.pipelines.run_status import closing_run
from fsnn.pipelines.storage import check_storage, resolve_storage
from fsnn.pipelines.tracking import (
    TrackingError,
    check_tracking_uri,
    client,
    create_run,
    resolve_tracking_uri,
)
from fsnn.platform.checkpoint import CheckpointError, read_meta
from fsnn.platform.config import Config, dump_config
from fsnn.platform.model import FeedbackSNN

RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"
# config fields a resumed run may change: how it runs, not what it trains
RESUMABLE_CHANGES = ("name", "train.epochs", "train.num_workers", "train.use_gpu",
                     "train.max_failures", "train.log_every", "train.checkpoint_every",
                     "data.root", "data.test_batch_size", "target_eval.")


@dataclass
class TrainOptions:
    address: str | None = None
    tracking_uri: str | None = None
    storage: str | None = None
    resume: str | None = None
    config_path: str | None = None
    tags: dict[str, str] | None = None  # extra tags on the training run (e.g. the pipeline's)
    parent_run_id: str | None = None
    init: str | None = None  # fine-tune: the weights of this run (id) or checkpoint (path)


@dataclass
class TrainOutcome:
    run_id: str
    tracking_uri: str
    metrics: dict[str, Any]
    checkpoint: str | None


def checkpoints_in(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for d in run_dir.glob("checkpoint_*"):
        try:
            found.append((int(read_meta(d)["epoch"]), d))
        except CheckpointError:
            continue
    return sorted(found)


@dataclass
class Resume:
    """A run to continue: validated on the driver before Ray starts."""

    run_id: str
    checkpoint: Path  # the newest complete checkpoint found
    epoch: int  # epochs it holds
    run_dir: str  # the run's Ray storage folder: STORAGE/fsnn-RUN_ID


def find_resume(resume: str, cfg: Config, uri: str) -> Resume:
    """The run ``--resume PATH|RUN_ID`` continues, its checkpoint read in full (safetensors,
    shapes that fit ``cfg``'s model and optimiser) and its config compared with ``cfg``;
    every refusal is a :class:`CheckpointError` raised before anything is written."""
    run_id, path, meta = locate_checkpoint(resume, uri, "--resume")
    try:
        run = client(uri).get_run(run_id)
    except Exception:
        raise CheckpointError(f"--resume {resume}: its checkpoint belongs to MLflow run {run_id},"
                              f" which the tracking store {uri} does not hold; pass the "
                              f"--tracking-uri it was trained with") from None
    if run.info.status == "FINISHED":
        raise CheckpointError(f"--resume {resume}: run {run_id} finished; to train it further, "
                              f"start a new run from its weights: fsnn train --init {run_id} "
                              f"--set train.epochs=N")
    _same_config(meta.get("config"), cfg, resume)
    _fits(path, cfg, f"--resume {resume}")
    epoch = int(meta["epoch"])
    if epoch > cfg.train.epochs:
        raise CheckpointError(f"--resume {resume}: its checkpoint holds {epoch} epochs, the "
                              f"config asks for {cfg.train.epochs}; raise train.epochs")
    run_dir = run.data.tags.get("fsnn.run_dir") or str(path.parent)
    return Resume(run_id, path, epoch, run_dir)


def _same_config(saved: Any, cfg: Config, resume: str) -> None:
    from fsnn.pipelines.tracking import flatten_params

    if not isinstance(saved, dict) or not saved:
        raise CheckpointError(f"--resume {resume}: its checkpoint holds no config")
    old, new = flatten_params(saved), flatten_params(cfg.model_dump(mode="json"))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k)
                     and not any(k == f or (f.endswith(".") and k.startswith(f))
                                 for f in RESUMABLE_CHANGES))
    if changed:
        shown = ", ".join(f"{k} ({old.get(k, '-')} -> {new.get(k, '-')})" for k in changed[:4])
        raise CheckpointError(f"--resume {resume}: the config differs from the one the run was "
                              f"trained with in {shown}{' ...' if len(changed) > 4 else ''}; "
                              f"resume without CONFIG (the run's own config is used) or start a "
                              f"new run")


def _fits(path: Path, cfg: Config, what: str) -> None:
    """The checkpoint's tensors load (safetensors) into ``cfg``'s model and optimiser."""
    from fsnn.platform.checkpoint import load_checkpoint
    from fsnn.platform.trainer import build_optimizer

    state = load_checkpoint(path)
    model = _model(cfg)
    try:
        model.load_state_dict(state.model)
        build_optimizer(cfg, model).load_state_dict(state.optimizer)
    except (RuntimeError, ValueError, KeyError) as exc:
        first = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise CheckpointError(f"{what}: the checkpoint {path} does not fit model {cfg.model!r} "
                              f"with this config ({first[-1] if first else exc})") from None


def set_aside_stale_snapshot(run_dir: str) -> str | None:
    """Ray Train restores a run from its checkpoint-manager snapshot and refuses to start when
    the snapshot names a checkpoint that is gone (a driver killed while Ray pruned old ones).
    Such a snapshot is renamed (kept, not deleted); fsnn's workers then find the newest
    complete checkpoint themselves. Returns the new name, or None."""
    if "://" in run_dir:
        return None
    snap = Path(run_dir) / RAY_SNAPSHOT
    if not snap.is_file():
        return None
    try:
        doc = json.loads(snap.read_text())
        names = [r["checkpoint_dir_name"] for r in doc["checkpoint_results"]]
        if all((Path(run_dir) / n).is_dir() for n in names):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        pass
    aside = snap.with_name(f"{RAY_SNAPSHOT}.stale-{int(time.time())}")
    snap.rename(aside)
    return str(aside)


def _model(cfg: Config) -> FeedbackSNN:
    from fsnn.platform.data import DATASETS
    from fsnn.platform.trainer import model_from_config

    info = DATASETS[cfg.data.name]
    return model_from_config(cfg, num_classes=info.num_classes, labels=list(info.classes))


def find_init(init: str, cfg: Config, uri: str) -> tuple[str, Path, FeedbackSNN]:
    """(run id, checkpoint dir, model with its weights) of the trained run ``--init
    PATH|RUN_ID`` fine-tunes; the weights must fit the model ``cfg`` builds (checked here,
    before anything is written)."""
    from fsnn.platform.checkpoint import load_checkpoint

    run_id, path, _ = locate_checkpoint(init, uri, "--init")
    model = _model(cfg)
    try:
        model.load_state_dict(load_checkpoint(path).model)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:2] or [str(exc)]
        raise CheckpointError(f"--init {init}: its weights do not fit model {cfg.model!r} with "
                              f"this config ({first[0].strip()}); fine-tune with the model, "
                              f"data set and neuron the run was trained with") from None
    return run_id, path, model


def locate_checkpoint(ref: str, uri: str, flag: str) -> tuple[str, Path, dict[str, Any]]:
    """(run id, newest checkpoint dir, its metadata) for a checkpoint path or an MLflow run."""
    path = Path(ref)
    resume = ref
    if path.exists():
        if not (path / "fsnn-checkpoint.json").exists() and path.is_dir():
            ckpts = checkpoints_in(path)
            if ckpts:
                path = ckpts[-1][1]
        meta = read_meta(path)
        run_id = meta.get("run_id")
        if not run_id:
            raise CheckpointError(f"{path}: the checkpoint names no MLflow run")
    else:
        c = client(uri)
        try:
            run = c.get_run(resume)
        except Exception as exc:
            raise CheckpointError(f"{flag} {resume!r}: neither a checkpoint path nor an MLflow "
                                  f"run id in {uri} ({type(exc).__name__})") from None
        run_dir = run.data.tags.get("fsnn.run_dir")
        ckpts = checkpoints_in(Path(run_dir)) if run_dir else []
        if not ckpts:
            raise CheckpointError(f"run {resume} has no checkpoint under {run_dir!r}")
        run_id, path = resume, ckpts[-1][1]
        meta = read_meta(path)
    return run_id, path, meta


def check_simulators(cfg: Config, model: FeedbackSNN | None) -> None:
    """Before Ray starts: every backend the run uses (forward, target_eval) can run the model
    (``model``, or a fresh one of ``cfg``): options, expressible, fits the machine, simulator
    installed, board reachable."""
    from fsnn.pipelines.hil import preflight, simulator_backends

    if simulator_backends(cfg):
        preflight(cfg, (model or _model(cfg)).eval().to_network())


class TrainingError(RuntimeError):
    """Training ended without finishing; the message says why and what to do."""


def _kept(run_dir: str, run_id: str) -> str:
    """What an interrupted run leaves behind, and how to go on."""
    found = checkpoints_in(Path(run_dir)) if "://" not in run_dir else [(-1, Path())]
    if not found:
        return "no checkpoint was written yet; start again with `fsnn train CONFIG`"
    kept = (f"checkpoints up to epoch {found[-1][0]} kept in {run_dir}" if found[-1][0] >= 0
            else f"its checkpoints are in {run_dir}")
    return f"{kept}; continue with `fsnn train --resume {run_id}`"


def _prepare_data(cfg: Config, address: str | None) -> None:
    """The data set fetched (local Ray: the workers read this machine's cache) and its headers
    parsed, so a corrupt file fails here rather than in every worker."""
    from fsnn.platform.data import check_dataset, fetch_dataset

    root = Path(cfg.data.root) if cfg.data.root else None
    if address is None:
        fetch_dataset(cfg.data.name, root)
        check_dataset(cfg.data.name, root)


def run_train(cfg: Config, opts: TrainOptions) -> TrainOutcome:
    import ray
    import ray.train

    from fsnn.pipelines.progress import ProgressView, start_channel
    from fsnn.pipelines.ray_trainer import FsnnTorchTrainer, describe_failure, fatal_error
    from fsnn.pipelines.train_worker import train_loop

    uri = resolve_tracking_uri(opts.tracking_uri)
    check_tracking_uri(uri)
    resume = find_resume(opts.resume, cfg, uri) if opts.resume else None
    if resume is not None:  # the same Ray run: its name and storage
        storage, _, name = resume.run_dir.rstrip("/").rpartition("/")
        asked = resolve_storage(opts.storage) if opts.storage else storage
        if asked.rstrip("/") != storage:
            print(f"[fsnn] --resume: the run keeps its storage {storage} (--storage {asked} "
                  f"ignored)", flush=True)
    else:
        storage, name = resolve_storage(opts.storage), ""
    check_storage(storage)
    init: tuple[str, Path, FeedbackSNN] | None = None
    if opts.init and resume is None:
        init = find_init(opts.init, cfg, uri)
    check_simulators(cfg, init[2] if init else None)
    _prepare_data(cfg, opts.address)
    connect(opts.address)
    cpus_per_worker = 1.0
    total, why = cpu_budget(cfg)
    check_resources(cfg.train.num_workers, cpus_per_worker, cfg.train.use_gpu, total=total,
                    what=why)
    doc = cfg.model_dump(mode="json")
    if resume is None:
        run_id = create_run(uri, run_name=cfg.name, params=doc, tags={
            "fsnn.kind": "train", "fsnn.model": cfg.model, "ray.version": ray.__version__,
            "ray.num_workers": str(cfg.train.num_workers),
            "ray.use_gpu": str(cfg.train.use_gpu),
            "fsnn.config_path": str(opts.config_path or ""), "fsnn.forward": cfg.forward,
            **({"fsnn.init_run_id": init[0], "fsnn.init_checkpoint": str(init[1])}
               if init else {}),
            **(opts.tags or {}),
        }, parent_run_id=opts.parent_run_id)
        name = f"fsnn-{run_id}"
    else:
        run_id = resume.run_id
    run_dir = f"{storage.rstrip('/')}/{name}"
    c = client(uri)
    with closing_run(c, run_id, what=f"training run {run_id}",
                     kept=lambda: _kept(run_dir, run_id)):
        if resume is None:
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "config.yaml").write_text(dump_config(cfg))
                c.log_artifact(run_id, str(Path(d) / "config.yaml"))
        else:
            c.update_run(run_id, status="RUNNING")
            aside = set_aside_stale_snapshot(run_dir)
            if aside:
                print(f"[fsnn] Ray's checkpoint index named a checkpoint that is gone; kept it "
                      f"as {aside} and resume from fsnn's newest checkpoint", flush=True)
            print(f"[fsnn] resuming run {run_id} after epoch {resume.epoch} "
                  f"({resume.checkpoint})", flush=True)
        c.set_tag(run_id, "fsnn.run_dir", run_dir)
        print(f"[fsnn] MLflow run {run_id} ({uri})", flush=True)
        # Train V2 patches print() in workers to log through its logger *and* tee to the
        # redirected stdout: every progress line would reach the driver twice
        os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
        channel = start_channel()  # rank 0's progress, drawn here
        trainer = FsnnTorchTrainer(
            train_loop,
            train_loop_config={"config": doc, "run_id": run_id, "tracking_uri": uri,
                               "threads": cpus_per_worker, "run_dir": run_dir,
                               "init": str(init[1]) if init else None,
                               "resume": str(resume.checkpoint) if resume else None,
                               "progress": channel},
            scaling_config=ray.train.ScalingConfig(
                num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                resources_per_worker={"CPU": cpus_per_worker}),
            run_config=ray.train.RunConfig(
                name=name, storage_path=storage,
                failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
            progress_channel=channel,
        )
        try:
            with ProgressView(channel):
                result = trainer.fit()
        except ray.train.TrainingFailedError as exc:
            fatal = fatal_error(exc)
            if fatal is not None:
                raise TrainingError(f"training failed: {fatal}") from None
            raise TrainingError(
                f"training failed after {cfg.train.max_failures} restarts "
                f"({describe_failure(exc)}); continue from its last checkpoint with "
                f"`fsnn train --resume {run_id}`") from None
        c.set_terminated(run_id, "FINISHED")
    ckpt = result.checkpoint.path if result.checkpoint is not None else None
    return TrainOutcome(run_id, uri, dict(result.metrics or {}), ckpt)


__all__ = ["Resume", "TrackingError", "TrainOptions", "TrainOutcome", "TrainingError",
           "find_resume", "run_train"]
