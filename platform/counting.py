"""Operation counts on any engine: fan-out per source neuron and synaptic events per sample."""

from __future__ import annotations

import torch

from fsnn.platform.engine import apply_projection
from fsnn.platform.spec import INPUT, Network, Projection


def fan_out(net: Network) -> dict[str, torch.Tensor]:
    """Per source neuron (population or spike input), the number of synapses it drives."""
    out: dict[str, torch.Tensor] = {}
    for q in net.projections:
        if q.source == INPUT and net.input.kind == "analog":
            continue
        out[q.source] = out.get(q.source, 0) + projection_fan_out(q, net)
    return out


def projection_fan_out(q: Projection, net: Network) -> torch.Tensor:
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
