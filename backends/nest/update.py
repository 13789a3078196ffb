"""In-place weight updates of a built NEST network (see :meth:`NestBackend.update`).

A synapse exists for every nonzero weight of a spike-carrying projection; an update finds each
synapse's weight index once (by source, target, delay and the (pre, post) pair, through
:func:`~fsnn.backends.nest_connect.expand`) and then sets new weights in NEST's order. PyNEST
reads and writes synapse parameters as one dict per synapse (NEST 3.10 has no array setter), so
on F400 an in-place update costs ~0.16 s against ~0.065 s for a rebuild: the backend rebuilds by
default and updates in place only when asked (``in_place=True``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fsnn.backends.base import BackendError
from fsnn.backends.connections import expand
from fsnn.backends.nest.kernel import Kernel, SynapseGroup
from fsnn.platform.spec import INPUT, Network

CHUNK_SYNAPSES = 1_000_000  # synapse weights set at once (PyNEST makes a dict per synapse)


def spiking_projections(net: Network) -> list[int]:
    """Positions of the projections that carry spikes (NEST synapses): all but analog input."""
    return [i for i, q in enumerate(net.projections)
            if not (q.source == INPUT and net.input.kind == "analog")]


def layout(net: Network) -> tuple[Any, ...]:
    """Everything of a spec but its values: two specs with equal layouts build the same nodes
    and (given the same nonzero weights) the same synapses."""
    def shape(t: torch.Tensor | None) -> tuple[int, ...] | None:
        return None if t is None else tuple(t.shape)

    r = net.readout
    return (
        net.T, net.input.kind, tuple(net.input.shape),
        tuple((p.name, tuple(p.shape), p.neuron) for p in net.populations),
        tuple((q.name, q.source, q.target, q.kind, shape(q.weight), shape(q.bias), q.stride,
               q.padding, q.output_padding, q.delay, q.feedback) for q in net.projections),
        (r.source, shape(r.weight), shape(r.bias)),
    )


def same_synapses(old: Network, new: Network) -> bool:
    """Same nonzero weights in every spike-carrying projection (layouts already equal)."""
    return all(torch.equal(old.projections[i].weight != 0, new.projections[i].weight != 0)
               for i in spiking_projections(old))


def find_projection_synapses(k: Kernel) -> list[SynapseGroup] | None:
    """Handles on every spike-carrying projection's synapses, with the weight index of each.

    Synapses are matched to projections by (source, target, delay), then to weights by their
    (pre, post) pair, unique within a projection, through :func:`expand` of the built spec.
    Taken after the build's first run, like the clock handles (NEST sorts synapses then).
    None when two projections share source, target and delay: their synapses are not told apart.
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for i in spiking_projections(k.net):
        q = k.net.projections[i]
        groups.setdefault((q.source, q.target), []).append(i)
    if any(len({k.net.projections[i].delay for i in m}) < len(m) for m in groups.values()):
        return None
    pops = {p.name: p for p in k.populations}
    out = []
    for (source, target), members in groups.items():
        qs = [k.net.projections[i] for i in members]
        delays = np.array([float(q.delay) for q in qs])
        if source == INPUT:
            assert k.inputs is not None
            src_nodes = k.inputs
            src_ids = np.asarray(k.inputs.tolist(), dtype=np.int64)
        else:
            src_nodes, src_ids = pops[source].nodes, pops[source].ids
        tgt = pops[target]
        n_src, n_tgt = src_ids.size, tgt.ids.size
        keys, index, offset = [], [], 0
        for j, q in enumerate(qs):
            for chunk in expand(q, k.net.shape_of(source), tgt.shape):
                keys.append((j * n_tgt + chunk.post) * n_src + chunk.pre)
                index.append(chunk.index + offset)
            offset += q.weight.numel()
        handle = k.nest.GetConnections(source=src_nodes, target=tgt.nodes,
                                       synapse_model="static_synapse")
        n = sum(len(c) for c in keys)
        if len(handle) != n:
            raise BackendError(f"projections {[q.name for q in qs]}: NEST holds {len(handle)} "
                               f"synapses from {source!r} to {target!r}, the spec {n}")
        if n == 0:
            continue
        built = np.concatenate(keys)
        order = np.argsort(built)
        built, weight_index = built[order], np.concatenate(index)[order]
        source_ids, target_ids, delay = connection_ends(handle)
        pre, post = np.searchsorted(src_ids, source_ids), np.searchsorted(tgt.ids, target_ids)
        by_delay = np.argsort(delays)
        j = by_delay[np.minimum(np.searchsorted(delays[by_delay], delay), delays.size - 1)]
        key = (j * n_tgt + post) * n_src + pre
        pos = np.minimum(np.searchsorted(built, key), n - 1)
        if (not np.array_equal(delays[j], delay) or not np.array_equal(built[pos], key)
                or np.unique(pos).size != n):
            raise BackendError(f"projections {[q.name for q in qs]}: NEST's synapses from "
                               f"{source!r} to {target!r} do not match the spec")
        out.append(SynapseGroup(members, handle, weight_index[pos]))
    return out


def connection_ends(handle: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source ids, target ids and delays of a SynapseCollection, read in chunks (PyNEST makes a
    dict of every parameter per synapse)."""
    parts = []
    for lo in range(0, len(handle), CHUNK_SYNAPSES):
        got = handle[lo:lo + CHUNK_SYNAPSES].get(["source", "target", "delay"])
        parts.append([np.atleast_1d(np.asarray(got[key], dtype=dtype)) for key, dtype in
                      (("source", np.int64), ("target", np.int64), ("delay", np.float64))])
    source, target, delay = (np.concatenate(c) for c in zip(*parts, strict=True))
    return source, target, delay


def set_weights(group: SynapseGroup, weights: list[torch.Tensor]) -> None:
    """Set the group's synapse weights from its projections' float64 weight tensors."""
    flat = np.concatenate([w.reshape(-1).numpy() for w in weights])
    values = flat[group.index]
    for lo in range(0, values.size, CHUNK_SYNAPSES):
        hi = min(values.size, lo + CHUNK_SYNAPSES)
        part = group.handle if (lo, hi) == (0, len(group.handle)) else group.handle[lo:hi]
        part.set(weight=values[lo:hi].tolist())
