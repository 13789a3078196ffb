"""Validated training configuration, loaded from YAML.

Every field has a default; a bad value fails with the field's dotted path and the reason before
any work starts. ``overrides`` (``["optim.lr=0.1", "T=8"]``) apply on top of the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration is invalid; the message names the field and the reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    name: Literal["mnist", "fashion-mnist", "cifar10", "cifar100", "nmnist"] = "fashion-mnist"
    root: str | None = Field(None, description="data cache directory (default: $FSNN_DATA)")
    train_limit: int | None = Field(None, gt=0, description="use only the first N train samples")
    test_limit: int | None = Field(None, gt=0, description="use only the first N test samples")
    batch_size: int = Field(128, gt=0, description="global train batch (split across workers)")
    test_batch_size: int = Field(200, gt=0)
    augment: bool = Field(False, description="random crop + flip (CIFAR)")


class MethodConfig(_Strict):
    name: Literal["ide"] = "ide"
    solver: Literal["broyden", "fixed_point"] = "broyden"
    max_iter: int = Field(30, gt=0, description="adjoint solver iteration cap")
    tol: float = Field(1e-4, gt=0, description="relative residual to stop the adjoint solve")


class OptimConfig(_Strict):
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["step", "cosine", "constant"] = "step"
    milestones: list[int] = Field(default_factory=lambda: [30, 60, 90])
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_iters: int = Field(0, ge=0)


class TrainConfig(_Strict):
    epochs: int = Field(100, gt=0)
    seed: int = 0
    num_workers: int = Field(1, gt=0, description="Ray Train workers")
    use_gpu: bool = False
    checkpoint_every: int = Field(1, gt=0, description="checkpoint every K epochs")
    max_failures: int = Field(2, ge=0, description="worker failures tolerated (Ray)")
    log_every: int = Field(50, gt=0, description="batches between progress updates")


class Config(_Strict):
    name: str = "fsnn"
    model: str = "f400"
    neuron: Literal["IF", "LIF"] = "IF"
    T: int = Field(5, gt=0, description="time steps of the forward simulation")
    vth: float = Field(2.0, gt=0, description="firing threshold V_th")
    leak: float | None = Field(None, gt=0, le=1, description="LIF leak (IF: 1.0)")
    reset: Literal["subtract", "to_value"] = "subtract"
    dropout: float = Field(0.2, ge=0, lt=1)
    timing: Literal["ide", "deploy"] = "ide"
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _leak(self) -> Config:
        if self.leak is None:
            object.__setattr__(self, "leak", 1.0 if self.neuron == "IF" else 0.95)
        if self.neuron == "IF" and self.leak != 1.0:
            raise ValueError("leak: an IF neuron has leak 1.0; set neuron: LIF for a leaky one")
        if self.neuron == "LIF" and self.leak == 1.0:
            raise ValueError("leak: a LIF neuron needs leak < 1; set neuron: IF for leak 1.0")
        from fsnn.platform.zoo import ZOO

        if self.model not in ZOO:
            known = ", ".join(sorted(ZOO))
            raise ValueError(f"model: unknown model {self.model!r}; known: {known}")
        return self

    @property
    def leak_value(self) -> float:
        assert self.leak is not None
        return self.leak


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "config"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; `fsnn train --help` lists the sections)"
        lines.append(f"{loc}: {msg}")
    return "invalid config: " + "; ".join(lines)


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(doc: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=0.1")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = doc
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = _parse_value(value)
    return doc


def config_from_dict(doc: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(doc)
    except ValidationError as err:
        raise ConfigError(_format(err)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    doc: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({exc})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of fields")
        doc = loaded
    return config_from_dict(apply_overrides(doc, overrides or []))


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
