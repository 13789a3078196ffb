"""The engine's fast paths: the in-place graph-free step, spikes in bfloat16, CUDA-graph replay
(which falls back to the eager run off CUDA), and the config that turns them on."""

from __future__ import annotations

import pytest
import torch
from nets import assert_same_gradients, dense_net, small_model, spike_input_circuit

from fsnn.platform.config import ConfigError, load_config
from fsnn.platform.engine import Circuit, SimResult, circuit_from_network, simulate_circuit
from fsnn.platform.graphs import GraphedSimulator, structure_key
from fsnn.platform.methods.tsbp import surrogate_spike
from fsnn.platform.spec import Neuron, Projection
from fsnn.platform.trainer import model_from_config

NEURONS = [Neuron("IF", v_th=1.0), Neuron("LIF", v_th=0.8, leak=0.9),
           Neuron("IF", v_th=1.0, reset="to_value", v_reset=-0.1),
           Neuron("LIF", v_th=0.7, leak=0.95, reset="to_value", v_reset=0.05)]


def _graph_path(circuit: Circuit, T: int, batch: int, **kw: object) -> SimResult:
    """The BPTT loop (every step kept in an autograd graph): out-of-place arithmetic."""
    weights = [q.weight.detach().clone().requires_grad_(True) for q in circuit.projections]
    live = Circuit(circuit.populations,
                   [Projection(q.name, q.source, q.target, q.kind, w, q.bias, q.stride, q.padding,
                               q.output_padding, q.delay, q.feedback)
                    for q, w in zip(circuit.projections, weights, strict=True)],
                   circuit.const, circuit.masks)
    return simulate_circuit(live, T, batch=batch, spike_fn=surrogate_spike("rectangle", 1.0),
                            **kw)  # type: ignore[arg-type]


def _assert_same(a: SimResult, b: SimResult) -> None:
    for k in b.rates:
        assert torch.equal(a.rates[k], b.rates[k].detach()), k
        assert torch.equal(a.counts[k], b.counts[k].detach()), k
    if b.trains is not None:
        assert a.trains is not None
        for k in b.trains:
            assert torch.equal(a.trains[k], b.trains[k].detach()), k
    if b.window_rates is not None:
        assert a.window_rates is not None
        for k in b.window_rates:
            assert torch.equal(a.window_rates[k], b.window_rates[k].detach()), k


@pytest.mark.parametrize("timing", ["ide", "deploy"])
@pytest.mark.parametrize("neuron", NEURONS)
def test_inplace_step_is_bit_identical_to_the_graph_keeping_step(timing: str,
                                                                  neuron: Neuron) -> None:
    net = dense_net(neuron=neuron, T=25)
    x = torch.rand(4, 6, dtype=torch.float64) * 2
    circuit, _ = circuit_from_network(net, x)
    kw = {"timing": timing, "record_trains": True, "window_start": 7}
    fast = simulate_circuit(circuit, 25, batch=4, **kw)  # type: ignore[arg-type]
    _assert_same(fast, _graph_path(circuit, 25, 4, **kw))
    assert sum(float(c.sum()) for c in fast.counts.values()) > 20  # not a silent net


def test_inplace_step_with_masks_spike_input_and_a_population_without_input() -> None:
    """Conv ring with dropout masks, spike input, and a population fed by nothing but a bias."""
    g = torch.Generator().manual_seed(3)
    model = small_model("conv", neuron=Neuron("LIF", v_th=0.6, leak=0.9), dropout=0.3)
    model.train()
    x = torch.rand(5, 1, 8, 8, generator=g) * 3
    circuit, _, _ = model.prepare(x, 20)
    assert circuit.masks, "the model should have sampled dropout masks"
    frozen = circuit.detached()
    fast = simulate_circuit(frozen, 20, batch=5, record_trains=True)
    _assert_same(fast, _graph_path(frozen, 20, 5, record_trains=True))

    spiking, spikes = spike_input_circuit(g)
    fast = simulate_circuit(spiking, 12, batch=3, spike_input=spikes)
    _assert_same(fast, _graph_path(spiking, 12, 3, spike_input=spikes))
    only_bias = Circuit(spiking.populations[:1], [], {"a": spiking.const["a"]})
    got = simulate_circuit(only_bias, 12, batch=3)
    _assert_same(got, _graph_path(only_bias, 12, 3))


def test_bfloat16_spikes_change_only_what_rounding_the_products_changes() -> None:
    """Spikes are exact in bfloat16; the result must equal a float32 run whose weights were
    rounded to bfloat16, up to the rounding of the products (a few spikes near threshold)."""
    torch.manual_seed(0)
    model = small_model("conv", neuron=Neuron("LIF", v_th=1.0, leak=0.95), T=30).eval()
    x = torch.rand(16, 1, 8, 8) * 2
    circuit, _, _ = model.prepare(x, 30)
    frozen = circuit.detached()
    fast = simulate_circuit(frozen, 30, batch=16, spike_dtype=torch.bfloat16)
    rounded = Circuit(frozen.populations,
                      [Projection(q.name, q.source, q.target, q.kind,
                                  q.weight.to(torch.bfloat16).float(), None, q.stride, q.padding,
                                  q.output_padding, q.delay, q.feedback)
                       for q in frozen.projections], frozen.const)
    reference = simulate_circuit(rounded, 30, batch=16)
    exact = simulate_circuit(frozen, 30, batch=16)
    for k in reference.counts:
        assert fast.rates[k].dtype == torch.float32  # membranes and rates stay float32
        differ = float((fast.counts[k] != reference.counts[k]).float().mean())
        assert differ < 0.02, f"{k}: {differ:.1%} of counts differ"
        assert float((fast.rates[k] - exact.rates[k]).abs().mean()) < 0.01
        assert float(reference.counts[k].sum()) > 100
    with pytest.raises(Exception, match="spike_dtype"):
        simulate_circuit(frozen, 5, batch=16, spike_dtype=torch.bfloat16,
                         spike_fn=surrogate_spike("rectangle", 1.0))


def test_cuda_graphs_fall_back_to_the_eager_run_off_cuda() -> None:
    torch.manual_seed(1)
    plain = small_model("dense", T=20).eval()
    fast = small_model("dense", T=20).eval()
    fast.load_state_dict(plain.state_dict())
    fast.set_speed(cuda_graphs=True)
    x = torch.rand(6, 8)
    with torch.no_grad():
        assert torch.equal(fast(x), plain(x))
    assert fast.graphs is not None
    assert (fast.graphs.stats.captures, fast.graphs.stats.eager) == (0, 1)


def test_the_graph_key_holds_structure_not_values() -> None:
    net = dense_net(T=10)
    x = torch.rand(3, 6, dtype=torch.float64)
    circuit, _ = circuit_from_network(net, x)
    key = structure_key(circuit, 10, 3, "ide", None, None)
    other = Circuit(circuit.populations,
                    [Projection(q.name, q.source, q.target, q.kind, q.weight * 2, q.bias,
                                q.stride, q.padding, q.output_padding, q.delay, q.feedback)
                     for q in circuit.projections], {k: v + 1 for k, v in circuit.const.items()})
    assert structure_key(other, 10, 3, "ide", None, None) == key  # new values: same graph
    assert structure_key(circuit, 11, 3, "ide", None, None) != key
    assert structure_key(circuit, 10, 4, "ide", None, None) != key
    assert structure_key(circuit, 10, 3, "deploy", None, None) != key
    assert structure_key(circuit, 10, 3, "ide", None, torch.bfloat16) != key
    hotter = Circuit([type(p)(p.name, p.shape, Neuron("IF", v_th=2.0))
                      for p in circuit.populations], circuit.projections, circuit.const)
    assert structure_key(hotter, 10, 3, "ide", None, None) != key
    assert GraphedSimulator().max_graphs >= 2  # a training and an evaluation batch


def test_config_turns_the_speed_ups_on(tmp_path) -> None:
    cfg = load_config(None, ["model=f400", "train.spike_dtype=bfloat16"])
    model = model_from_config(cfg, num_classes=10)
    assert model.spike_dtype == torch.bfloat16 and model.graphs is not None
    cfg = load_config(None, ["model=f400", "train.cuda_graphs=false"])
    model = model_from_config(cfg, num_classes=10)
    assert model.spike_dtype is None and model.graphs is None
    with pytest.raises(ConfigError, match="spike_dtype"):
        load_config(None, ["train.spike_dtype=fp8"])


def test_a_model_with_graphs_can_be_copied() -> None:
    import copy

    model = small_model("dense", T=5).set_speed(cuda_graphs=True)
    assert model.graphs is not None
    model.graphs.stats.captures = 3
    clone = copy.deepcopy(model)
    assert clone.graphs is not None and clone.graphs is not model.graphs
    assert clone.graphs.stats.captures == 0 and clone.graphs.max_graphs == model.graphs.max_graphs


def test_channels_last_state_gives_the_same_spikes_and_trains(tmp_path) -> None:
    """NHWC state and weights: the layout changes, the spikes do not (but for threshold ties
    from a convolution that sums in another order), and weights still save as safetensors."""
    from fsnn.platform.checkpoint import TrainingState, load_checkpoint, save_checkpoint

    torch.manual_seed(5)
    plain = small_model("conv", neuron=Neuron("LIF", v_th=0.6, leak=0.9), T=25)
    nhwc = small_model("conv", neuron=Neuron("LIF", v_th=0.6, leak=0.9), T=25)
    nhwc.load_state_dict(plain.state_dict())
    nhwc.set_speed(channels_last=True)
    convs = [p for p in nhwc.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    x, y = torch.rand(6, 1, 8, 8) * 3, torch.randint(0, 4, (6,))
    circuit, _, _ = nhwc.eval().prepare(x, 25)
    frozen = circuit.detached()
    fast = simulate_circuit(frozen, 25, batch=6, channels_last=True, record_trains=True)
    ref = simulate_circuit(frozen, 25, batch=6, record_trains=True)
    total = 0.0
    for k, counts in ref.counts.items():
        if counts.dim() == 4:
            assert fast.rates[k].is_contiguous(memory_format=torch.channels_last), k
            assert not fast.rates[k].is_contiguous(), k
        assert float((fast.counts[k] != counts).float().mean()) <= 1e-3, k
        total += float(counts.sum())
    assert total > 50
    assert_same_gradients(plain, nhwc, x, y)
    save_checkpoint(TrainingState(1, nhwc.state_dict(), {}, {}), tmp_path / "ckpt")
    back = load_checkpoint(tmp_path / "ckpt").model
    assert all(torch.equal(back[k], v) for k, v in nhwc.state_dict().items())
    cfg = load_config(None, ["train.channels_last=true"])
    assert model_from_config(cfg, num_classes=10).channels_last


@pytest.mark.parametrize("neuron", NEURONS)
def test_rates_without_counts_are_the_same_rates(neuron: Neuron) -> None:
    """``with_counts=False`` (what training and evaluation ask for) drops only the counts."""
    net = dense_net(neuron=neuron, T=20)
    circuit, _ = circuit_from_network(net, torch.rand(4, 6, dtype=torch.float64) * 2)
    for kw in ({}, {"fused": True}, {"spike_fn": surrogate_spike("rectangle", 1.0)}):
        full = simulate_circuit(circuit, 20, batch=4, window_start=5, **kw)  # type: ignore[arg-type]
        lean = simulate_circuit(circuit, 20, batch=4, window_start=5, with_counts=False,
                                **kw)  # type: ignore[arg-type]
        assert lean.counts == {} and full.counts
        assert full.window_rates is not None and lean.window_rates is not None
        for k in full.rates:
            assert torch.equal(lean.rates[k], full.rates[k]), (kw, k)
            assert torch.equal(lean.window_rates[k], full.window_rates[k]), (kw, k)
    circuit, _ = circuit_from_network(net, torch.rand(4, 6, dtype=torch.float64))
    assert structure_key(circuit, 20, 4, "ide", None, None, with_counts=False) != \
        structure_key(circuit, 20, 4, "ide", None, None, with_counts=True)


def test_the_graph_check_compares_rates_when_there_are_no_counts() -> None:
    from fsnn.platform.graphs import _count_mismatch

    rates = {"a": torch.tensor([[0.1, 0.2, 0.3, 0.4]])}
    other = {"a": torch.tensor([[0.1, 0.2, 0.3, 0.5]])}
    assert _count_mismatch(SimResult(other, {}), SimResult(rates, {})) == 0.25
    counts = {"a": torch.tensor([[1.0, 2.0, 3.0, 4.0]])}
    assert _count_mismatch(SimResult(other, counts), SimResult(rates, counts)) == 0.0


def test_unit_rate_keeps_a_mask_and_gives_clamps_values_and_gradients() -> None:
    from fsnn.platform.engine import unit_rate

    g = torch.Generator().manual_seed(7)
    x = (torch.randn(64, 50, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    with torch.no_grad():  # values exactly on the clamp's edges: 0 and V_th
        x[0, :5] = 0.0
        x[1, :5] = 1.3
    grad = torch.randn(64, 50, generator=g, dtype=torch.float64)
    ours = unit_rate(x, 1.3)
    saved = ours.grad_fn.saved_tensors  # type: ignore[union-attr]
    assert [t.dtype for t in saved] == [torch.bool]  # 1 byte per neuron, not the 8-byte input
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    ref = torch.clamp(x / 1.3, 0.0, 1.0)
    (g_ref,) = torch.autograd.grad(ref, x, grad)
    assert torch.equal(ours, ref) and torch.equal(g_ours, g_ref)
    assert bool((g_ours[0, :5] != 0).all()) and bool((g_ours[1, :5] != 0).all())
