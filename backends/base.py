"""The Backend protocol: build a spec, run batches of inputs for T steps, report counts.

Every backend runs the spec in *deployment timing* (each projection acts ``delay`` steps after
the spike) and returns a `BatchResult`; `get_backend` finds one by name. A backend
that needs a simulator or a machine also has ``probe()``: raise BackendError unless the simulator
imports and the machine answers (hardware-in-the-loop training calls it before any step).
"""

from __future__ import annotations

import importlib
import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Union, get_args, get_origin, get_type_hints

import torch
import yaml

from fsnn.platform.config import yaml_reason
from fsnn.platform.counting import fan_out, synaptic_events
from fsnn.platform.errors import FsnnError
from fsnn.platform.spec import Network

__all__ = ["Backend", "BackendError", "BatchResult", "check_options", "fan_out", "get_backend",
           "parse_option", "parse_options", "synaptic_events"]


class BackendError(FsnnError, RuntimeError):
    """A backend is missing, unreachable, or cannot express a spec; the message says why."""


@dataclass
class BatchResult:
    """What one batch produced on a backend (tensors on the CPU, batch first)."""

    counts: dict[str, torch.Tensor]  # spike counts per neuron, [B, *shape] per population
    rates: dict[str, torch.Tensor]  # (leak-weighted) average rates, [B, *shape]
    logits: torch.Tensor  # readout on the readout population's rates, [B, classes]
    synaptic_events: torch.Tensor  # per sample: spikes x fan-out, summed over projections, [B]
    wall_time: float  # seconds spent simulating this batch
    energy: dict[str, float] = field(default_factory=dict)  # the backend's own measured joules


class Backend(Protocol):
    name: str

    def check(self, net: Network) -> None:
        """Raise BackendError (naming the population) if the spec cannot be expressed; cheap,
        needs no simulator, builds nothing."""

    def build(self, net: Network) -> None:
        """Check the spec can be expressed (else BackendError naming the population); build."""

    def update(self, net: Network) -> bool:
        """Load new values of the built spec (weights, biases, readout) for the next runs: in
        place where the simulator allows it (True), else by building ``net`` anew (False).
        Hardware-in-the-loop training calls it after every optimiser step."""

    def run(self, x: torch.Tensor) -> BatchResult:
        """Run a batch: ``[B, *input.shape]`` (analog) or ``[B, T, *input.shape]`` (spikes)."""

    def close(self) -> None:
        """Release the simulator."""


BACKENDS: dict[str, str] = {
    "torch": "fsnn.backends.torch_backend:TorchBackend",
    "nest": "fsnn.backends.nest.backend:NestBackend",
    "spinnaker": "fsnn.backends.spinnaker.backend:SpinnakerBackend",
    "spinnaker-emulated": "fsnn.backends.spinnaker.emulation:SpinnakerEmulatedBackend",
}


def get_backend(name: str, **options: object) -> Backend:
    """The backend ``name`` built with constructor ``options``; an unknown option or a value of
    the wrong type (checked against the constructor's annotations) is a BackendError before
    anything is constructed."""
    factory = check_backend_options(name, options)
    return factory(**options)


def check_backend_options(name: str, options: dict[str, object]) -> Callable[..., Backend]:
    """Backend ``name``'s constructor, after checking ``options`` against it (nothing built)."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    module, _, cls = BACKENDS[name].partition(":")
    factory: Callable[..., Backend] = getattr(importlib.import_module(module), cls)
    check_options(name, factory, options)
    return factory


def check_options(name: str, factory: Callable[..., object], options: dict[str, object]) -> None:
    """Refuse an option ``factory`` does not take, or one whose value its annotation refuses."""
    init = factory.__init__ if inspect.isclass(factory) else factory
    params = inspect.signature(init).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = None  # **kwargs: any name goes
    else:
        accepted = [n for n, p in params.items() if n != "self" and p.kind in
                    (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    try:
        hints = get_type_hints(init)
    except (NameError, TypeError, AttributeError):  # unresolvable: check the names only
        hints = {}
    for key, value in options.items():
        if accepted is not None and key not in accepted:
            raise BackendError(f"backend {name}: unknown option {key!r} (from --option or "
                               f"the config's backend_options); accepted: "
                               f"{', '.join(accepted) or 'none'}")
        if key in hints and not _matches(value, hints[key]):
            raise BackendError(f"backend {name}: option {key}: expected "
                               f"{_describe(hints[key])}, got {value!r} "
                               f"({type(value).__name__})")


def _matches(value: object, ann: Any) -> bool:
    """Whether ``value`` is a value of annotation ``ann`` (an int is a float, a bool is no int)."""
    origin, args = get_origin(ann), get_args(ann)
    if ann is Any or ann is object:
        return True
    if ann is None or ann is type(None):
        return value is None
    if origin in (Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if ann is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:  # list[int], dict[str, float], ...: the container's type
        return isinstance(value, origin)
    return not isinstance(ann, type) or isinstance(value, ann)


def _describe(ann: Any) -> str:
    origin, args = get_origin(ann), get_args(ann)
    if ann is None or ann is type(None):
        return "None"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if not isinstance(ann, type):
        return str(ann)
    return ann.__name__ if ann.__module__ == "builtins" else f"{ann.__module__}.{ann.__name__}"


def parse_option(item: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``fsnn deploy --option`` as (key, value); the value is read as YAML."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise BackendError(f"--option {item!r}: expected KEY=VALUE, e.g. --option quantize=false")
    if text == "":
        return key.strip(), ""
    try:
        return key.strip(), yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise BackendError(f"--option {item!r}: not valid YAML ({yaml_reason(exc)}); check its "
                           "brackets and quotes") from None


def parse_options(items: list[str]) -> dict[str, object]:
    """Every ``--option KEY=VALUE`` as constructor options (BackendError on a malformed one)."""
    return dict(parse_option(item) for item in items)
