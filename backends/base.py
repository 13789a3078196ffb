"""The Backend protocol: build a spec, run batches of inputs for T steps, report counts.

Every backend runs the spec in *deployment timing* (each projection acts ``delay`` steps after
the spike) and returns a :class:`BatchResult`; :func:`get_backend` finds one by name. A backend
that needs a simulator or a machine also has ``probe()``: raise BackendError unless the simulator
imports and the machine answers (hardware-in-the-loop training calls it before any step).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from fsnn.platform.counting import fan_out, synaptic_events
from fsnn.platform.spec import Network

__all__ = ["Backend", "BackendError", "BatchResult", "fan_out", "get_backend",
           "synaptic_events"]


class BackendError(RuntimeError):
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
    "nest": "fsnn.backends.nest_backend:NestBackend",
    "spinnaker": "fsnn.backends.spinnaker_backend:SpinnakerBackend",
    "spinnaker-emulated": "fsnn.backends.spinnaker_emulation:SpinnakerEmulatedBackend",
}


def get_backend(name: str, **options: object) -> Backend:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    module, _, cls = BACKENDS[name].partition(":")
    factory: Callable[..., Backend] = getattr(importlib.import_module(module), cls)
    return factory(**options)
