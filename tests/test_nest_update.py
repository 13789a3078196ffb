"""NestBackend.update: new values of a built spec, set in the running NEST kernel.

Hardware-in-the-loop training pushes a spec with new weights after every optimiser step. An
update in place must give exactly the spikes of a fresh build of the new spec and of the torch
engine (deployment timing); a spec that differs in anything but values (neurons, delays, which
weights are zero, ...) must be built anew, and still run exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch
from nets import dense_net, uniform
from test_nest_parity import (  # also sets PYNEST_QUIET and skips without NEST
    EXPANSION_SOURCE,
    IF,
    T,
    conv_net,
    expansion_cases,
)
from test_nest_parity import LIF90 as LIF

from fsnn.backends.base import BatchResult
from fsnn.backends.connections import expand
from fsnn.backends.nest.backend import NestBackend
from fsnn.platform.engine import readout, simulate
from fsnn.platform.spec import Network, Neuron, Projection


def _sparsify(net: Network, seed: int, fraction: float = 0.2) -> Network:
    """Zero a random ``fraction`` of every projection's weights (synapses that do not exist)."""
    g = torch.Generator().manual_seed(seed)
    projs = []
    for q in net.projections:
        keep = torch.rand(q.weight.shape, generator=g) >= fraction
        projs.append(replace(q, weight=torch.where(keep, q.weight, 0.0)))
    return replace(net, projections=projs)


def _conv_net(neuron: Neuron, *, seed: int, spikes: bool = False) -> Network:
    """The parity tests' conv net (convT feedback b -> a, b -> b with delay 2) plus a second
    b -> b projection with delay 1 (one source and target, two delays), sparsified."""
    net = conv_net(neuron, seed=seed, spikes=spikes)
    g = torch.Generator().manual_seed(seed + 50)
    extra = Projection("bb1", "b", "b", "conv", uniform(g, 6, 6, 1, 1, scale=0.2), None,
                       feedback=True)
    return _sparsify(replace(net, projections=[*net.projections, extra]), seed + 100)


def _dense_net(neuron: Neuron, *, seed: int) -> Network:
    return _sparsify(dense_net(neuron=neuron, T=T, seed=seed, scale=1.0), seed + 100)


def _revalue(net: Network, seed: int) -> Network:
    """New random weights on the same nonzero pattern (same scale), new biases, new readout."""
    g = torch.Generator().manual_seed(seed)

    def like(t: torch.Tensor) -> torch.Tensor:
        scale = float(t.abs().max())
        new = uniform(g, *t.shape, scale=scale)
        return torch.where(new == 0, scale / 2, new)

    projs = []
    for q in net.projections:
        w = torch.where(q.weight != 0, like(q.weight), 0.0)
        b = None if q.bias is None else uniform(g, *q.bias.shape, scale=0.1) + 0.1
        projs.append(replace(q, weight=w, bias=b))
    r = net.readout
    ro = replace(r, weight=like(r.weight), bias=None if r.bias is None else like(r.bias))
    return replace(net, projections=projs, readout=ro)


def _input(net: Network, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if net.input.kind == "analog":
        return torch.rand(batch, *net.input.shape, generator=g, dtype=torch.float64) * 2 - 0.5
    shape = (batch, T + 2, *net.input.shape)
    x = (torch.rand(*shape, generator=g) < 0.15).double()
    return x + ((torch.rand(*shape, generator=g) < 0.01) & (x > 0)).double()  # a few 2s


def _torch(net: Network, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Counts and logits of the torch engine in deployment timing, float64."""
    net = net.to(torch.float64)
    res = simulate(net, x if net.input.kind == "analog" else x[:, :T].transpose(0, 1),
                   timing="deploy")
    return res.counts, readout(net, res.rates)


def _assert_exact(net: Network, got: BatchResult, want: tuple[dict[str, torch.Tensor],
                                                              torch.Tensor]) -> None:
    """Every neuron's count equal to the reference's, on a net busy enough to tell."""
    counts, logits = want
    batch = got.logits.shape[0]
    total = 0
    for p in net.populations:
        assert torch.equal(got.counts[p.name], counts[p.name]), p.name
        busy = counts[p.name].flatten(1)
        assert int((busy > 0).sum()) >= busy.numel() // 4, f"{p.name}: too few neurons fire"
        assert int((busy == T).sum()) < busy.numel() // 2, f"{p.name}: saturated"
        total += int(busy.sum())
    assert total >= 20 * batch, "net too quiet to test parity"
    torch.testing.assert_close(got.logits, logits, rtol=1e-10, atol=1e-12)


def _differ(a: BatchResult, b: BatchResult) -> bool:
    return any(not torch.equal(a.counts[n], b.counts[n]) for n in a.counts)


def _fresh(net: Network, x: torch.Tensor) -> BatchResult:
    """A new backend's build of ``net`` (this takes the process's NEST kernel)."""
    backend = NestBackend()
    backend.build(net)
    try:
        return backend.run(x)
    finally:
        backend.close()


@pytest.fixture
def backend() -> Iterator[NestBackend]:
    b = NestBackend(in_place=True)
    yield b
    b.close()


def test_expand_index_points_at_weight() -> None:
    """Every synapse's index is its weight's flat position in the projection's own layout, every
    nonzero weight has synapses, and (pre, post) pairs are unique (update matches NEST's
    synapses to weights by them)."""
    src, cases = EXPANSION_SOURCE, expansion_cases(3)
    for q, tgt in cases:
        q.weight[q.weight.abs() < 0.3] = 0.0
        flat = q.weight.flatten().numpy()
        seen = torch.zeros(flat.size, dtype=torch.bool)
        pairs = []
        for s in expand(q, src, tgt):
            assert s.index.dtype == s.pre.dtype and s.index.shape == s.pre.shape
            assert (flat[s.index] == s.weight).all(), q.kind
            seen[torch.from_numpy(s.index)] = True
            pairs.append(torch.from_numpy(s.post * math.prod(src) + s.pre))
        assert torch.equal(seen, q.weight.flatten() != 0), q.kind
        pairs = torch.cat(pairs)
        assert pairs.unique().numel() == pairs.numel(), q.kind


CASES = [("dense", IF, False), ("dense", LIF, False), ("conv", IF, False), ("conv", LIF, False),
         ("conv", IF, True), ("conv", LIF, True)]


def _net(kind: str, neuron: Neuron, spikes: bool, seed: int) -> Network:
    return _conv_net(neuron, seed=seed, spikes=spikes) if kind == "conv" else _dense_net(
        neuron, seed=seed)


@pytest.mark.parametrize(("kind", "neuron", "spikes"), CASES,
                         ids=["dense-IF", "dense-LIF", "conv-IF", "conv-LIF", "conv-IF-spikes",
                              "conv-LIF-spikes"])
def test_update_in_place_is_exact(backend: NestBackend, kind: str, neuron: Neuron,
                                  spikes: bool) -> None:
    a = _net(kind, neuron, spikes, seed=31)
    b = _revalue(a, seed=32)
    x = _input(a, 4, seed=33)
    backend.build(a)
    before = backend.run(x)
    _assert_exact(a, before, _torch(a, x))
    synapses = backend.synapse_count
    assert backend.update(b) is True
    assert backend.synapse_count == synapses
    after = backend.run(x)
    _assert_exact(b, after, _torch(b, x))
    assert _differ(before, after), "the new weights changed nothing: the test cannot fail"
    fresh = _fresh(b, x)
    for name, counts in fresh.counts.items():
        assert torch.equal(after.counts[name], counts), name
    assert torch.equal(after.logits, fresh.logits)
    assert torch.equal(after.synaptic_events, fresh.synaptic_events)


def test_update_twice_stays_exact(backend: NestBackend) -> None:
    """A -> B -> C in place; C comes as float32, as a model's ``to_network`` gives it."""
    a = _conv_net(LIF, seed=21)
    b, c = _revalue(a, seed=22), _revalue(a, seed=23).to(torch.float32)
    x = _input(a, 3, seed=24)
    backend.build(a)
    first = backend.run(x)
    assert backend.update(b) is True
    second = backend.run(x)
    _assert_exact(b, second, _torch(b, x))
    assert backend.update(c) is True
    third = backend.run(x)
    _assert_exact(c, third, _torch(c, x))
    assert _differ(first, second) and _differ(second, third)
    assert backend.update(a) is True  # and back: A's spikes again
    again = backend.run(x)
    for name, counts in first.counts.items():
        assert torch.equal(again.counts[name], counts), name
    fresh = _fresh(c, x)
    for name, counts in fresh.counts.items():
        assert torch.equal(third.counts[name], counts), name


def _with_threshold(net: Network) -> Network:
    pops = list(net.populations)
    pops[1] = replace(pops[1], neuron=replace(pops[1].neuron, v_th=0.8))
    return replace(net, populations=pops)


def _with_weight_zeroed(net: Network) -> Network:
    q = net.projections[2]  # a spike-carrying projection (ba / bc)
    w = q.weight.clone()
    w.view(-1)[int(torch.nonzero(w.flatten())[0])] = 0.0
    return replace(net, projections=[*net.projections[:2], replace(q, weight=w),
                                     *net.projections[3:]])


def _with_weight_added(net: Network) -> Network:
    q = net.projections[1]
    w = q.weight.clone()
    w.view(-1)[int(torch.nonzero(w.flatten() == 0)[0])] = 0.3
    return replace(net, projections=[net.projections[0], replace(q, weight=w),
                                     *net.projections[2:]])


def _with_delay(net: Network) -> Network:
    q = net.projections[2]
    return replace(net, projections=[*net.projections[:2], replace(q, delay=q.delay + 1),
                                     *net.projections[3:]])


def _without_bias(net: Network) -> Network:
    q = net.projections[1]
    return replace(net, projections=[net.projections[0], replace(q, bias=None),
                                     *net.projections[2:]])


CHANGES = {"threshold": _with_threshold, "weight_zeroed": _with_weight_zeroed,
           "weight_added": _with_weight_added, "delay": _with_delay, "bias_removed": _without_bias}


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_structure_change_builds_anew(backend: NestBackend, kind: str, change: str) -> None:
    a = _net(kind, IF, False, seed=31)
    b = CHANGES[change](_revalue(a, seed=32))
    x = _input(a, 3, seed=33)
    backend.build(a)
    backend.run(x)
    synapses = backend.synapse_count
    assert backend.update(b) is False
    if change == "weight_zeroed":
        assert backend.synapse_count < synapses
    if change == "weight_added":
        assert backend.synapse_count > synapses
    _assert_exact(b, backend.run(x), _torch(b, x))
    c = _revalue(b, seed=34)  # the rebuilt network updates in place
    assert backend.update(c) is True
    _assert_exact(c, backend.run(x), _torch(c, x))


def test_shared_source_target_and_delay_builds_anew(backend: NestBackend) -> None:
    """Two projections a -> a with delay 2: their synapses cannot be told apart."""
    a = _dense_net(IF, seed=71)
    extra = replace(a.projections[3], name="aa_again", weight=a.projections[3].weight.flip(0))
    a = replace(a, projections=[*a.projections, extra])
    b = _revalue(a, seed=72)
    x = _input(a, 3, seed=73)
    backend.build(a)
    assert backend.update(b) is False
    _assert_exact(b, backend.run(x), _torch(b, x))
    c = _revalue(a, seed=74)
    assert backend.update(c) is False
    _assert_exact(c, backend.run(x), _torch(c, x))


def test_update_without_a_network_builds(backend: NestBackend) -> None:
    a = _dense_net(LIF, seed=51)
    b = _revalue(a, seed=52)
    x = _input(a, 3, seed=53)
    assert backend.update(a) is False  # nothing built yet
    _assert_exact(a, backend.run(x), _torch(a, x))
    other = NestBackend()
    other.build(a)  # takes the process's NEST kernel from ``backend``
    other.close()
    assert backend.update(b) is False
    _assert_exact(b, backend.run(x), _torch(b, x))


def test_update_in_chunks(backend: NestBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Handles read and weights set in many small chunks (as for millions of synapses)."""
    import fsnn.backends.nest.update as nest_update

    monkeypatch.setattr(nest_update, "CHUNK_SYNAPSES", 97)
    a = _conv_net(IF, seed=31, spikes=True)
    b = _revalue(a, seed=32)
    x = _input(a, 2, seed=33)
    backend.build(a)
    before = backend.run(x)
    assert backend.synapse_count > 10 * 97
    assert backend.update(b) is True
    after = backend.run(x)
    _assert_exact(b, after, _torch(b, x))
    assert _differ(before, after)


def test_update_rebuilds_by_default() -> None:
    """Without in_place (the default: a rebuild is faster on NEST 3.10) update builds anew."""
    a = _dense_net(LIF, seed=51)
    b = _revalue(a, seed=52)
    x = _input(a, 3, seed=53)
    nb = NestBackend()
    try:
        nb.build(a)
        assert nb.update(b) is False
        _assert_exact(b, nb.run(x), _torch(b, x))
    finally:
        nb.close()
