"""`fsnn train`: a Ray Train V2 TorchTrainer over N workers, tracked in MLflow, resumable."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsnn.pipelines.hil import cpu_budget
from fsnn.pipelines.raycluster import check_resources, connect
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

DEFAULT_STORAGE = "runs"


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


def _storage(path: str | None) -> str:
    s = path or os.environ.get("FSNN_STORAGE") or DEFAULT_STORAGE
    return s if "://" in s else str(Path(s).resolve())


def _checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for d in run_dir.glob("checkpoint_*"):
        try:
            found.append((int(read_meta(d)["epoch"]), d))
        except CheckpointError:
            continue
    return sorted(found)


def find_resume(resume: str, cfg: Config, uri: str) -> tuple[str, Path]:
    """(run id, checkpoint dir) for --resume PATH|RUN_ID; errors before anything is written."""
    run_id, path, meta = locate_checkpoint(resume, uri, "--resume")
    saved_model = meta.get("config", {}).get("model")
    if saved_model != cfg.model:
        raise CheckpointError(f"{path}: a checkpoint of model {saved_model!r}, the config asks for "
                              f"{cfg.model!r}; resume with the config it was trained with")
    return run_id, path


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
            ckpts = _checkpoints(path)
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
        ckpts = _checkpoints(Path(run_dir)) if run_dir else []
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


def run_train(cfg: Config, opts: TrainOptions) -> TrainOutcome:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from fsnn.pipelines.train_worker import train_loop

    uri = resolve_tracking_uri(opts.tracking_uri)
    check_tracking_uri(uri)
    resume_ckpt: Path | None = None
    run_id: str | None = None
    if opts.resume:
        run_id, resume_ckpt = find_resume(opts.resume, cfg, uri)
    init: tuple[str, Path, FeedbackSNN] | None = None
    if opts.init and not opts.resume:
        init = find_init(opts.init, cfg, uri)
    check_simulators(cfg, init[2] if init else None)
    if opts.address is None:
        from fsnn.platform.data import fetch_dataset

        fetch_dataset(cfg.data.name, Path(cfg.data.root) if cfg.data.root else None)
    connect(opts.address)
    cpus_per_worker = 1.0
    total, why = cpu_budget(cfg)
    check_resources(cfg.train.num_workers, cpus_per_worker, cfg.train.use_gpu, total=total,
                    what=why)
    storage = _storage(opts.storage)
    doc = cfg.model_dump(mode="json")
    if run_id is None:
        run_id = create_run(uri, run_name=cfg.name, params=doc, tags={
            "fsnn.kind": "train", "fsnn.model": cfg.model, "ray.version": ray.__version__,
            "ray.num_workers": str(cfg.train.num_workers),
            "ray.use_gpu": str(cfg.train.use_gpu),
            "fsnn.config_path": str(opts.config_path or ""), "fsnn.forward": cfg.forward,
            **({"fsnn.init_run_id": init[0], "fsnn.init_checkpoint": str(init[1])}
               if init else {}),
            **(opts.tags or {}),
        }, parent_run_id=opts.parent_run_id)
        c = client(uri)
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "config.yaml").write_text(dump_config(cfg))
            c.log_artifact(run_id, str(Path(d) / "config.yaml"))
    c = client(uri)
    if opts.resume:
        c.update_run(run_id, status="RUNNING")
    name = f"fsnn-{run_id}"
    run_dir = f"{storage.rstrip('/')}/{name}"
    c.set_tag(run_id, "fsnn.run_dir", run_dir)
    print(f"[fsnn] MLflow run {run_id} ({uri})", flush=True)
    # Train V2 patches print() in workers to log through its logger *and* tee to the redirected
    # stdout: every progress line would reach the driver twice
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": doc, "run_id": run_id, "tracking_uri": uri,
                           "threads": cpus_per_worker, "run_dir": run_dir,
                           "init": str(init[1]) if init else None},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
        resume_from_checkpoint=(ray.train.Checkpoint.from_directory(str(resume_ckpt))
                                if resume_ckpt else None),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        c.set_terminated(run_id, "FAILED")
        raise RuntimeError(f"training failed after {cfg.train.max_failures} restarts: {exc}; "
                           f"resume with `fsnn train CONFIG --resume {run_id}`") from None
    c.set_terminated(run_id, "FINISHED")
    ckpt = result.checkpoint.path if result.checkpoint is not None else None
    return TrainOutcome(run_id, uri, dict(result.metrics or {}), ckpt)


__all__ = ["TrackingError", "TrainOptions", "TrainOutcome", "find_resume", "run_train"]
