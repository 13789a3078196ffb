"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint directory holds ``fsnn-checkpoint.json`` (format, version, epoch, MLflow run id,
config, metric history and the non-tensor parts of every state) and ``state.safetensors`` (the
tensors of the model, optimiser and scheduler states).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fsnn.platform.errors import FsnnError

CHECKPOINT_FORMAT = "fsnn-checkpoint"
CHECKPOINT_VERSION = 1
META = "fsnn-checkpoint.json"
TENSORS = "state.safetensors"


class CheckpointError(FsnnError, ValueError):
    """A checkpoint is missing, corrupt or not an fsnn checkpoint; the message says which."""


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[_key(k), _flatten(v, f"{prefix}.{k}", tensors)]
                             for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        items = [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise CheckpointError(f"cannot store a {type(obj).__name__} at {prefix} in a checkpoint")


def _key(k: Any) -> Any:
    if isinstance(k, bool | int | str):
        return k
    raise CheckpointError(f"cannot store dict key {k!r} ({type(k).__name__}) in a checkpoint")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            key = obj["__tensor__"]
            if key not in tensors:
                raise CheckpointError(f"tensor {key!r} is missing from {TENSORS}")
            return tensors[key]
        if "__dict__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        raise CheckpointError("malformed state entry in the checkpoint")
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


@dataclass
class TrainingState:
    epoch: int  # epochs completed
    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    run_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


def save_checkpoint(state: TrainingState, path: str | Path) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    states = {name: _flatten(getattr(state, name), name, tensors)
              for name in ("model", "optimizer", "scheduler")}
    save_file(tensors, str(out / TENSORS), metadata={"format": CHECKPOINT_FORMAT})
    meta = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epoch": state.epoch,
            "run_id": state.run_id, "config": state.config, "history": state.history,
            "states": states}
    (out / META).write_text(json.dumps(meta) + "\n")
    return out


def read_meta(path: str | Path) -> dict[str, Any]:
    root = Path(path)
    meta_file = root / META
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such checkpoint directory")
    if not meta_file.is_file():
        raise CheckpointError(f"{root}: not an fsnn checkpoint (no {META}); "
                              "pass a directory written by `fsnn train`")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_file}: corrupt ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{meta_file}: not an fsnn checkpoint (format field)")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{meta_file}: checkpoint version {meta.get('version')!r}, "
                              f"this fsnn reads {CHECKPOINT_VERSION}")
    return meta


def load_checkpoint(path: str | Path) -> TrainingState:
    root = Path(path)
    meta = read_meta(root)
    try:
        tensors = load_file(str(root / TENSORS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{root / TENSORS}: corrupt or missing ({exc})") from None
    try:
        states = {k: _unflatten(v, tensors) for k, v in meta["states"].items()}
        return TrainingState(epoch=int(meta["epoch"]), model=states["model"],
                             optimizer=states["optimizer"], scheduler=states["scheduler"],
                             run_id=meta.get("run_id"), config=meta.get("config", {}),
                             history=list(meta.get("history", [])))
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{root / META}: malformed ({exc!r})") from None
