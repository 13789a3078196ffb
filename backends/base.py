"""The Backend protocol: build a spec, run batches of inputs for T steps, report counts.

Every backend runs the spec in *deployment timing* (each projection acts ``delay`` steps after
the spike) and returns a :class:`BatchResult`; :func:`get_backend` finds one by name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from fsnn.platform.engine import apply_projection
from fsnn.platform.spec import INPUT, Network, Projection


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

    def run(self, x: torch.Tensor) -> BatchResult:
        """Run a batch: ``[B, *input.shape]`` (analog) or ``[B, T, *input.shape]`` (spikes)."""

    def close(self) -> None:
        """Release the simulator."""


def fan_out(net: Network) -> dict[str, torch.Tensor]:
    """Per source neuron (population or spike input), the number of synapses it drives."""
    out: dict[str, torch.Tensor] = {}
    for q in net.projections:
        if q.source == INPUT and net.input.kind == "analog":
            continue
        out[q.source] = out.get(q.source, 0) + _projection_fan_out(q, net)
    return out


def _projection_fan_out(q: Projection, net: Network) -> torch.Tensor:
    """Count of nonzero synapses per source neuron: the transpose map applied to ones."""
    src_shape = net.shape_of(q.source)
    tgt_shape = net.population(q.target).shape
    mask = (q.weight != 0).to(torch.float64)
    ones = torch.ones(1, *src_shape, dtype=torch.float64, requires_grad=True)
    probe = Projection(q.name, q.source, q.target, q.kind, mask, None, q.stride, q.padding,
                       q.output_padding)
    y = apply_projection(probe, ones, tgt_shape)
    (g,) = torch.autograd.grad(y, ones, torch.ones_like(y))
    return g[0].round()


def synaptic_events(net: Network, counts: dict[str, torch.Tensor],
                    input_counts: torch.Tensor | None = None) -> torch.Tensor:
    """Per sample: sum over source neurons of spikes x fan-out (input spikes included)."""
    fo = fan_out(net)
    total: torch.Tensor | None = None
    for src, f in fo.items():
        c = input_counts if src == INPUT else counts[src]
        if c is None:
            continue
        ev = (c.to(torch.float64) * f).flatten(1).sum(1)
        total = ev if total is None else total + ev
    if total is None:
        batch = next(iter(counts.values())).shape[0]
        return torch.zeros(batch, dtype=torch.float64)
    return total


BACKENDS: dict[str, str] = {
    "torch": "fsnn.backends.torch_backend:TorchBackend",
    "nest": "fsnn.backends.nest_backend:NestBackend",
}


def get_backend(name: str, **options: object) -> Backend:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    module, _, cls = BACKENDS[name].partition(":")
    factory: Callable[..., Backend] = getattr(importlib.import_module(module), cls)
    return factory(**options)
