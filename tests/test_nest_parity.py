"""NEST (through PyNN) against the torch reference: the same spikes for every neuron.

Each net is run on both engines in deployment timing and every neuron's spike count is compared
with ``torch.equal``; the nets are checked to be busy enough (many spikes, not saturated) that a
wrong delay, leak, reset or sign would show. Also: the per-sample reset, the synapse expansion of
conv / transposed conv, and the refusals (inexpressible neurons, missing PyNN).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from nets import dense_net, uniform

from fsnn.backends.base import BackendError, BatchResult, fan_out
from fsnn.backends.connections import expand
from fsnn.backends.nest.backend import NestBackend
from fsnn.backends.nest.cells import leak_to_tau
from fsnn.backends.torch_backend import TorchBackend
from fsnn.platform.engine import apply_projection, readout, simulate
from fsnn.platform.spec import (
    INPUT,
    InputEncoding,
    Network,
    Neuron,
    Population,
    Projection,
    Readout,
)

os.environ.setdefault("PYNEST_QUIET", "1")
pytest.importorskip("pyNN.nest")

T = 30
IF = Neuron("IF", v_th=1.0)
LIF95 = Neuron("LIF", v_th=1.0, leak=0.95)
LIF90 = Neuron("LIF", v_th=1.0, leak=0.9)
TO_VALUE = Neuron("LIF", v_th=1.0, leak=0.9, reset="to_value", v_reset=-0.2)



def conv_net(neuron: Neuron, *, seed: int = 0, spikes: bool = False) -> Network:
    """input (2,8,8) -conv s1-> a (4,8,8) -conv s2-> b (6,4,4) -dense-> c (10);
    feedback b -convT s2-> a (delay 1) and b -conv-> b (delay 2); biases on the forward path."""
    g = torch.Generator().manual_seed(seed)
    pops = [Population("a", (4, 8, 8), neuron), Population("b", (6, 4, 4), neuron),
            Population("c", (10,), neuron)]
    in_scale = 0.9 if spikes else 0.35
    projs = [
        Projection("in", INPUT, "a", "conv", uniform(g, 4, 2, 3, 3, scale=in_scale),
                   uniform(g, 4, scale=0.1) + 0.1, padding=1),
        Projection("ab", "a", "b", "conv", uniform(g, 6, 4, 3, 3, scale=0.5),
                   uniform(g, 6, scale=0.1) + 0.1, stride=2, padding=1),
        Projection("bc", "b", "c", "dense", uniform(g, 10, 96, scale=0.4),
                   uniform(g, 10, scale=0.1) + 0.1),
        Projection("ba", "b", "a", "conv_transpose", uniform(g, 6, 4, 3, 3, scale=0.4), None,
                   stride=2, padding=1, output_padding=1, feedback=True),
        Projection("bb", "b", "b", "conv", uniform(g, 6, 6, 3, 3, scale=0.15), None, padding=1,
                   feedback=True, delay=2),
    ]
    ro = Readout("c", uniform(g, 3, 10), uniform(g, 3))
    kind = "spikes" if spikes else "analog"
    return Network(InputEncoding(kind, (2, 8, 8)), pops, projs, ro, T, labels=["x", "y", "z"])


def analog_input(net: Network, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, *net.input.shape, generator=g, dtype=torch.float64) * 2 - 0.5


def spike_input(net: Network, batch: int, seed: int) -> torch.Tensor:
    """Binary trains with a few double spikes (counts of 2), longer than T."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, T + 3, *net.input.shape)
    x = (torch.rand(*shape, generator=g) < 0.15).double()
    return x + ((torch.rand(*shape, generator=g) < 0.01) & (x > 0)).double()


def reference(net: Network, x: torch.Tensor) -> BatchResult:
    """The torch engine in deployment timing, float64."""
    if net.input.kind == "analog":
        ref = TorchBackend()
        ref.build(net)
        return ref.run(x)
    # the engine takes spikes as [T, B, ...]; TorchBackend.run passes x through unchanged, so
    # it cannot take the protocol's [B, T, ...] yet: call the engine directly
    res = simulate(net, x.transpose(0, 1), timing="deploy")
    return BatchResult(counts=res.counts, rates=res.rates, logits=readout(net, res.rates),
                       synaptic_events=torch.zeros(x.shape[0]), wall_time=0.0)


def assert_same_spikes(net: Network, x: torch.Tensor, got: BatchResult, want: BatchResult
                       ) -> int:
    """Every neuron's count and (leak-weighted) rate equal, bit for bit; returns the number of
    spikes compared."""
    total = 0
    for p in net.populations:
        assert torch.equal(got.counts[p.name], want.counts[p.name]), p.name
        assert torch.equal(got.rates[p.name], want.rates[p.name]), p.name
        busy = want.counts[p.name].flatten(1)
        assert int((busy > 0).sum()) >= busy.numel() // 4, f"{p.name}: too few neurons fire"
        assert int((busy == T).sum()) < busy.numel() // 2, f"{p.name}: saturated"
        total += int(busy.sum())
    assert total >= 20 * x.shape[0], "net too quiet to test parity"
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-10, atol=1e-12)
    return total


@pytest.fixture(scope="module")
def nest_backend() -> Iterator[NestBackend]:
    backend = NestBackend()
    yield backend
    backend.close()


@pytest.mark.parametrize("neuron", [IF, LIF95, LIF90, TO_VALUE], ids=["IF", "LIF95", "LIF90",
                                                                     "to_value"])
def test_dense_parity(nest_backend: NestBackend, neuron: Neuron) -> None:
    net = dense_net(neuron=neuron, T=T, seed=2, scale=1.0)
    x = analog_input(net, 8, seed=1)
    nest_backend.build(net)
    got = nest_backend.run(x)
    want = reference(net, x)
    assert_same_spikes(net, x, got, want)
    assert torch.equal(got.synaptic_events, want.synaptic_events)


@pytest.mark.parametrize("neuron", [IF, LIF90, TO_VALUE], ids=["IF", "LIF90", "to_value"])
def test_conv_parity(nest_backend: NestBackend, neuron: Neuron) -> None:
    net = conv_net(neuron, seed=2)
    x = analog_input(net, 4, seed=2)
    nest_backend.build(net)
    got = nest_backend.run(x)
    want = reference(net, x)
    assert assert_same_spikes(net, x, got, want) > 2000
    assert torch.equal(got.synaptic_events, want.synaptic_events)


@pytest.mark.parametrize("neuron", [IF, LIF95], ids=["IF", "LIF95"])
def test_spike_input_parity(nest_backend: NestBackend, neuron: Neuron) -> None:
    net = conv_net(neuron, seed=4, spikes=True)
    x = spike_input(net, 4, seed=4)
    assert bool((x == 2).any())
    nest_backend.build(net)
    got = nest_backend.run(x)
    want = reference(net, x)
    assert assert_same_spikes(net, x, got, want) > 2000
    events = sum((want.counts[k] if k != INPUT else x[:, :T].sum(1)).flatten(1) @ f.flatten()
                 for k, f in fan_out(net).items())
    assert torch.equal(got.synaptic_events, events)


def test_reset_between_samples(nest_backend: NestBackend) -> None:
    """a, b, a in one batch and again over two batches: every run of a is identical."""
    net = conv_net(LIF95, seed=5)
    x = analog_input(net, 2, seed=5)
    nest_backend.build(net)
    first = nest_backend.run(x[[0, 1, 0]])
    again = nest_backend.run(x[[0]])
    want = reference(net, x[[0]])
    for p in net.populations:
        a = first.counts[p.name]
        assert torch.equal(a[0], a[2]) and torch.equal(a[0], again.counts[p.name][0])
        assert torch.equal(a[0], want.counts[p.name][0])
        assert not torch.equal(a[0], a[1])


def test_v_init_and_mixed_populations(nest_backend: NestBackend) -> None:
    net = dense_net(neuron=IF, T=T, seed=6)
    pops = [replace(net.populations[0], neuron=Neuron("LIF", v_th=0.8, leak=0.9, v_init=0.5)),
            replace(net.populations[1], neuron=Neuron("IF", v_th=1.2, reset="to_value",
                                                      v_reset=-0.3, v_init=-0.4))]
    net = replace(net, populations=pops)
    x = analog_input(net, 5, seed=6)
    nest_backend.build(net)
    assert_same_spikes(net, x, nest_backend.run(x), reference(net, x))


EXPANSION_SOURCE = (3, 6, 5)


def expansion_cases(seed: int) -> list[tuple[Projection, tuple[int, ...]]]:
    """A conv, a transposed conv and a dense projection from ``EXPANSION_SOURCE``, each with its
    target shape (random weights from ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    return [
        (Projection("c", "s", "t", "conv", uniform(g, 5, 3, 3, 2), None, stride=2, padding=1),
         (5, 3, 3)),
        (Projection("t", "s", "t", "conv_transpose", uniform(g, 3, 5, 3, 3), None, stride=2,
                    padding=1, output_padding=1), (5, 12, 10)),
        (Projection("d", "s", "t", "dense", uniform(g, 7, 90), None), (7,)),
    ]


def test_expansion_matches_torch() -> None:
    """Synapse lists of conv / transposed conv / dense are exactly the projection's matrix."""
    src, cases = EXPANSION_SOURCE, expansion_cases(7)
    for q, tgt in cases:
        q.weight[q.weight.abs() < 0.2] = 0.0  # zero weights make no synapse
        n_src, n_tgt = math.prod(src), math.prod(tgt)
        basis = torch.eye(n_src, dtype=torch.float64).view(n_src, *src)
        matrix = apply_projection(q, basis, tgt).reshape(n_src, n_tgt).T  # [post, pre]
        built = torch.zeros(n_tgt, n_src, dtype=torch.float64)
        n = 0
        for s in expand(q, src, tgt):
            built[torch.from_numpy(s.post), torch.from_numpy(s.pre)] += torch.from_numpy(s.weight)
            n += len(s)
        assert torch.equal(built, matrix), q.kind
        assert n == int((matrix != 0).sum())


def _bogus_net(neuron: Neuron) -> Network:
    net = dense_net(neuron=IF, T=T)
    pops = [net.populations[0], replace(net.populations[1], neuron=neuron)]
    return Network(net.input, pops, net.projections, net.readout, T)  # no validation


def test_refuses_inexpressible_neuron_before_building() -> None:
    import nest

    backend = NestBackend()
    size = nest.network_size
    with pytest.raises(BackendError, match=r"population 'b'.*reset rule 'bogus'"):
        backend.build(_bogus_net(replace(IF, reset="bogus")))  # type: ignore[arg-type]
    with pytest.raises(BackendError, match=r"population 'b'.*neuron model 'AdEx'"):
        backend.build(_bogus_net(replace(IF, model="AdEx")))  # type: ignore[arg-type]
    with pytest.raises(BackendError, match=r"population 'b'.*v_reset"):
        backend.build(_bogus_net(replace(TO_VALUE, v_reset=1.5)))
    assert nest.network_size == size


def test_refuses_inexact_leak_and_names_the_exact_one() -> None:
    leak = 0.3
    while leak_to_tau(leak)[1] == leak:  # ~20% of doubles below 0.5 are unreachable
        leak = math.nextafter(leak, 1.0)
    backend = NestBackend()
    with pytest.raises(BackendError, match=r"population 'b'.*nearest exact leak") as err:
        backend.build(_bogus_net(Neuron("LIF", leak=leak)))
    exact = float(str(err.value).rsplit("nearest exact leak is ", 1)[1].split(":")[0])
    assert exact != leak and abs(exact - leak) < 1e-15
    assert leak_to_tau(exact)[1] == exact
    assert leak_to_tau(0.95)[1] == 0.95 and leak_to_tau(1.0) == (1e300, 1.0)


def test_refuses_fractional_spike_counts(nest_backend: NestBackend) -> None:
    net = conv_net(IF, spikes=True)
    nest_backend.build(net)
    with pytest.raises(BackendError, match="integer spike counts"):
        nest_backend.run(torch.full((1, T, *net.input.shape), 0.5))


def test_second_backend_invalidates_first() -> None:
    first, second = NestBackend(), NestBackend()
    net = dense_net(neuron=IF, T=T)
    first.build(net)
    second.build(net)
    with pytest.raises(BackendError, match="another NestBackend"):
        first.run(torch.zeros(1, 6, dtype=torch.float64))
    assert second.run(torch.zeros(1, 6, dtype=torch.float64)).counts["a"].shape == (1, 5)
    second.close()


def test_missing_pynn_says_how_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['pyNN.nest'] = None\n"
        "sys.path.insert(0, 'tests')\n"
        "from nets import dense_net\n"
        "from fsnn.backends.base import BackendError, get_backend\n"
        "try:\n"
        "    get_backend('nest').build(dense_net())\n"
        "except BackendError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True, cwd=Path(__file__).parents[1])
    assert "pip install 'fsnn[nest]'" in out.stdout
