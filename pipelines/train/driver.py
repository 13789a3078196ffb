"""`fsnn train`: a Ray Train V2 TorchTrainer over N workers, tracked in MLflow, resumable."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsnn.pipelines.hil.loop import cpu_budget
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
from fsnn.pipelines.train.resume import (
    Resume,
    checkpoints_in,
    find_init,
    find_resume,
    model_for,
    set_aside_stale_snapshot,
)
from fsnn.platform.config import Config, dump_config
from fsnn.platform.errors import FsnnError
from fsnn.platform.model import FeedbackSNN


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
    register: str | None = None  # register the run's MLflow Model as a version of this name


@dataclass
class TrainResult:
    """A finished training run: its MLflow ``run_id`` (its spec is the artifact ``spec``,
    `fsnn.run_spec` reads it), the last epoch's ``metrics`` (test_accuracy, train_loss, epoch,
    rates, adjoint statistics, ...) and the last checkpoint's folder."""

    run_id: str
    tracking_uri: str
    metrics: dict[str, Any]
    checkpoint: str | None
    model_version: str | None = None  # models:/NAME/VERSION when registered


def check_simulators(cfg: Config, model: FeedbackSNN | None) -> None:
    """Before Ray starts: every backend the run uses (forward, target_eval) can run the model
    (``model``, or a fresh one of ``cfg``): options, expressible, fits the machine, simulator
    installed, board reachable."""
    from fsnn.pipelines.hil.loop import preflight, simulator_backends

    if simulator_backends(cfg):
        preflight(cfg, (model or model_for(cfg)).eval().to_network())


class TrainingError(FsnnError, RuntimeError):
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


def run_train(cfg: Config, opts: TrainOptions) -> TrainResult:
    import ray
    import ray.train

    from fsnn.pipelines.progress import ProgressView, start_channel
    from fsnn.pipelines.train.ray_trainer import FsnnTorchTrainer, describe_failure, fatal_error
    from fsnn.pipelines.train.worker import train_loop

    uri = resolve_tracking_uri(opts.tracking_uri)
    check_tracking_uri(uri)
    if opts.register:
        from fsnn.pipelines.mlflow_model import check_registry

        check_registry(uri, opts.register)
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
    metrics = dict(result.metrics or {})
    version = None
    if opts.register:
        from fsnn.pipelines.mlflow_model import register, version_tags

        number = register(uri, run_id, opts.register, version_tags(cfg, metrics))
        version = f"models:/{opts.register}/{number}"
        print(f"[fsnn] registered {version}", flush=True)
    return TrainResult(run_id, uri, metrics, ckpt, version)


__all__ = ["Resume", "TrackingError", "TrainOptions", "TrainResult", "TrainingError",
           "find_resume", "run_train"]
