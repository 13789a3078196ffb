"""Finding what ``--resume`` continues and what ``--init`` fine-tunes: a run's newest
complete checkpoint, read in full and checked against the config (same training, tensors that
fit the model and optimiser) on the driver, before Ray starts or anything is written."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsnn.pipelines.tracking import client
from fsnn.platform.checkpoint import CheckpointError, read_meta
from fsnn.platform.config import Config
from fsnn.platform.model import FeedbackSNN

RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"
# config fields a resumed run may change: how it runs, not what it trains
RESUMABLE_CHANGES = ("name", "train.epochs", "train.num_workers", "train.use_gpu",
                     "train.max_failures", "train.log_every", "train.checkpoint_every",
                     "data.root", "data.test_batch_size", "target_eval.")


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
    model = model_for(cfg)
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


def model_for(cfg: Config) -> FeedbackSNN:
    """A fresh model of ``cfg`` (its data set's classes)."""
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
    model = model_for(cfg)
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
