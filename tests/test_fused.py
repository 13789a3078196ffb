"""The compiled neuron step (``train.fused_step``) against the eager in-place step.

torch.compile builds real kernels here (C++ on this CPU); every comparison is with the eager
simulation on the same circuit. A compiler may contract ``v * leak + I`` into one rounding, so
the tests allow a spike that sits exactly on threshold to differ (none did on our machines).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from nets import assert_same_gradients, dense_net, small_model, spike_input_circuit

from fsnn.platform import fused
from fsnn.platform.config import load_config
from fsnn.platform.engine import Circuit, SimResult, circuit_from_network, simulate_circuit
from fsnn.platform.graphs import structure_key
from fsnn.platform.methods.tsbp import surrogate_spike
from fsnn.platform.spec import Neuron, SpecError
from fsnn.platform.trainer import model_from_config

NEURONS = [Neuron("IF", v_th=1.0), Neuron("LIF", v_th=0.8, leak=0.9),
           Neuron("LIF", v_th=0.7, leak=0.95, reset="to_value", v_reset=0.05)]


def _assert_close(got: SimResult, want: SimResult, *, spikes: float = 50) -> None:
    """Counts equal but for near-threshold flips (< 0.1%), rates within one spike's weight."""
    total = 0.0
    for k, counts in want.counts.items():
        differ = float((got.counts[k] != counts).float().mean())
        assert differ <= 1e-3, f"{k}: {differ:.2%} of spike counts differ"
        assert got.rates[k].dtype == want.rates[k].dtype
        assert float((got.rates[k] - want.rates[k]).abs().max()) <= 1.0 + 1e-6
        assert float((got.rates[k] - want.rates[k]).abs().mean()) < 1e-3
        total += float(counts.sum())
    assert total > spikes  # not a silent net
    if want.trains is not None:
        assert got.trains is not None
        for k, trains in want.trains.items():
            assert float((got.trains[k] != trains).float().mean()) <= 1e-3


@pytest.mark.parametrize("neuron", NEURONS)
def test_fused_step_matches_the_eager_step(neuron: Neuron) -> None:
    net = dense_net(neuron=neuron, T=25)
    x = torch.rand(4, 6, dtype=torch.float64) * 2
    circuit, _ = circuit_from_network(net, x)
    for timing in ("ide", "deploy"):
        kw = {"timing": timing, "record_trains": True, "window_start": 7}
        want = simulate_circuit(circuit, 25, batch=4, **kw)  # type: ignore[arg-type]
        got = simulate_circuit(circuit, 25, batch=4, fused=True, **kw)  # type: ignore[arg-type]
        _assert_close(got, want, spikes=20)
        assert got.window_rates is not None and want.window_rates is not None
        for k in want.window_rates:
            assert torch.allclose(got.window_rates[k], want.window_rates[k], atol=1e-3)


def test_fused_step_with_masks_spike_input_bf16_and_a_population_without_input() -> None:
    g = torch.Generator().manual_seed(3)
    model = small_model("conv", neuron=Neuron("LIF", v_th=0.6, leak=0.9), dropout=0.3).train()
    x = torch.rand(5, 1, 8, 8, generator=g) * 3
    circuit, _, _ = model.prepare(x, 20)
    assert circuit.masks, "the model should have sampled dropout masks"
    frozen = circuit.detached()
    _assert_close(simulate_circuit(frozen, 20, batch=5, fused=True),
                  simulate_circuit(frozen, 20, batch=5))
    got = simulate_circuit(frozen, 20, batch=5, fused=True, spike_dtype=torch.bfloat16)
    want = simulate_circuit(frozen, 20, batch=5, spike_dtype=torch.bfloat16)
    _assert_close(got, want)

    spiking, spikes = spike_input_circuit(g)
    _assert_close(simulate_circuit(spiking, 12, batch=3, spike_input=spikes, fused=True),
                  simulate_circuit(spiking, 12, batch=3, spike_input=spikes), spikes=5)
    only_bias = Circuit(spiking.populations[:1], [], {"a": spiking.const["a"]})
    _assert_close(simulate_circuit(only_bias, 12, batch=3, fused=True),
                  simulate_circuit(only_bias, 12, batch=3), spikes=5)
    with pytest.raises(SpecError, match="fused: only for simulations without a graph"):
        simulate_circuit(frozen, 5, batch=5, fused=True,
                         spike_fn=surrogate_spike("rectangle", 1.0))


def test_a_model_trains_and_evaluates_the_same_with_the_fused_step() -> None:
    """One IDE training step: the same loss, and gradients within a near-threshold flip."""
    torch.manual_seed(4)
    plain = small_model("conv", neuron=Neuron("LIF", v_th=0.6, leak=0.9), T=20)
    fast = small_model("conv", neuron=Neuron("LIF", v_th=0.6, leak=0.9), T=20)
    fast.load_state_dict(plain.state_dict())
    fast.set_speed(fused_step=True)
    x, y = torch.rand(6, 1, 8, 8) * 3, torch.randint(0, 4, (6,))
    with torch.no_grad():
        assert torch.allclose(fast.eval()(x), plain.eval()(x), atol=1e-4)
    assert_same_gradients(plain, fast, x, y)


def _count_fused_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one at each call of the fused step."""
    calls: list[int] = []
    real = fused.neuron_step

    def counted(*args: object, **kw: object) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr("fsnn.platform.engine.fused_neuron_step", counted)
    return calls


@contextmanager
def _no_compiler(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A machine whose C++ compiler is missing: every new compile fails."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(fused, "_kernels", {})
    torch._dynamo.reset()
    # the config's own patch (monkeypatching its attributes left it broken for later compiles)
    patch = inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",),
                                   "force_disable_caches": True})
    try:
        with patch:
            yield
    finally:
        torch._dynamo.reset()


def test_dsr_training_does_not_compile_a_step_per_threshold(monkeypatch) -> None:
    """DSR changes its thresholds every step: its training simulates eagerly, evaluation fuses."""
    cfg = load_config(None, ["model=f400", "method.name=dsr", "train.fused_step=true",
                             "T=5", "train.cuda_graphs=false"])
    model = model_from_config(cfg, num_classes=10)
    assert model.fused_step
    calls = _count_fused_calls(monkeypatch)
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    model.train()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert not calls
    with torch.no_grad():
        model.eval()(x)
    assert calls


def test_a_machine_that_cannot_compile_gets_the_fix(monkeypatch) -> None:
    with _no_compiler(monkeypatch):
        net = dense_net(neuron=Neuron("LIF", v_th=0.61, leak=0.93), T=5)
        circuit, _ = circuit_from_network(net, torch.rand(3, 6, dtype=torch.float64))
        with pytest.raises(fused.FusedStepError, match=r"train\.fused_step: false"):
            simulate_circuit(circuit, 5, batch=3, fused=True)


def test_auto_fuses_on_gpus_only_and_falls_back_where_it_cannot_compile(monkeypatch) -> None:
    """``train.fused_step: auto`` (the default): CUDA devices fuse, a CPU does not; a device
    whose compile fails warns once and goes on unfused with the same rates."""
    calls = _count_fused_calls(monkeypatch)
    cfg = load_config(None, ["model=f400", "T=5", "train.cuda_graphs=false"])
    assert cfg.train.fused_step == "auto"
    model = model_from_config(cfg, num_classes=10).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        plain = model(x)
    assert not calls and model.fused_step == "auto"  # a CPU: unfused

    monkeypatch.setattr("fsnn.platform.model.AUTO_FUSED_DEVICES", ("cpu",))
    with _no_compiler(monkeypatch), torch.no_grad(), \
            pytest.warns(RuntimeWarning, match="unfused step"):
        again = model(x)
    assert calls and model.fused_step is False
    assert torch.equal(again, plain)
    with torch.no_grad():
        assert torch.equal(model(x), plain)  # no second warning: it stays off


def test_the_config_and_the_graph_key_know_the_fused_step() -> None:
    model = model_from_config(load_config(None, ["train.fused_step=true"]), num_classes=10)
    assert model.fused_step is True
    off = model_from_config(load_config(None, ["train.fused_step=false"]), num_classes=10)
    assert off.fused_step is False
    circuit, _ = circuit_from_network(dense_net(T=5), torch.rand(3, 6, dtype=torch.float64))
    plain = structure_key(circuit, 5, 3, "ide", None, None, fused=False)
    assert structure_key(circuit, 5, 3, "ide", None, None, fused=True) != plain
    assert structure_key(circuit, 5, 3, "ide", None, None, fused=False,
                         channels_last=True) != plain


def test_kernels_stay_apart_where_the_process_loads_libraries_globally() -> None:
    """PyNEST sets RTLD_GLOBAL for the whole process; compiled kernels loaded so called each
    other (a segfault once NEST was imported). A fresh process, flags as PyNEST sets them."""
    code = (
        "import os, sys\n"
        "sys.setdlopenflags(os.RTLD_NOW | os.RTLD_GLOBAL)\n"
        "sys.path.insert(0, 'tests')\n"
        "import torch\n"
        "from nets import dense_net\n"
        "from fsnn.platform.engine import circuit_from_network, simulate_circuit\n"
        "from fsnn.platform.spec import Neuron\n"
        "for batch, neuron in ((4, Neuron('IF', v_th=1.0)),\n"
        "                      (5, Neuron('LIF', v_th=0.8, leak=0.9))):\n"
        "    circuit, _ = circuit_from_network(dense_net(neuron=neuron, T=20),\n"
        "                                      torch.rand(batch, 6, dtype=torch.float64) * 2)\n"
        "    for timing in ('ide', 'deploy'):\n"
        "        a = simulate_circuit(circuit, 20, batch=batch, timing=timing, fused=True)\n"
        "        b = simulate_circuit(circuit, 20, batch=batch, timing=timing)\n"
        "        assert all(torch.equal(a.counts[k], b.counts[k]) for k in b.counts)\n"
        "print('same counts')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, cwd=Path(__file__).parents[1])
    assert out.returncode == 0 and "same counts" in out.stdout, out.stderr[-3000:]
