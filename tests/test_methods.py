"""The training methods (TSBP, SPIDE, DSR next to IDE) against independent computations, in
float64 on tiny nets; each also trains a small net on real data."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from nets import dense_net

from fsnn.platform.config import ConfigError, load_config
from fsnn.platform.data import load_dataset, make_loader
from fsnn.platform.engine import circuit_from_network, readout, simulate, simulate_circuit
from fsnn.platform.ide import AdjointConfig
from fsnn.platform.layers import ProjectionLayer
from fsnn.platform.methods import DSRMethod, IDEMethod, Method, SPIDEMethod, TSBPMethod
from fsnn.platform.methods.spide import spiking_adjoint
from fsnn.platform.methods.tsbp import surrogate_spike
from fsnn.platform.model import FeedbackSNN
from fsnn.platform.spec import Neuron
from fsnn.platform.trainer import build_optimizer, evaluate, model_from_config, train_epoch

D = torch.float64


def ring_model(method: Method, *, neuron: Neuron | None = None, T: int = 12) -> FeedbackSNN:
    """input(8) -> h0(10) -> h1(6) -> h0 (feedback, spectral norm); readout from h1."""
    inp = ProjectionLayer("dense", (8,), 10, bias=True, batch_norm=True)
    ff = ProjectionLayer("dense", (10,), 6, bias=True)
    fb = ProjectionLayer("dense", (6,), 10, bias=False, spectral_norm=1.0)
    model = FeedbackSNN(input_kind="analog", input_shape=(8,), input_layer=inp, ring=[ff, fb],
                        neuron=neuron or Neuron("IF", v_th=1.0), num_classes=4, T=T,
                        method=method).to(D).train()
    for _ in range(300):  # a stationary spectral-norm estimate: repeated forwards agree
        fb.refresh()
    return model


def grads(model: FeedbackSNN, rates: dict[str, torch.Tensor],
          y: torch.Tensor) -> dict[str, torch.Tensor]:
    loss = F.cross_entropy(model.classifier(model.readout_input(rates)), y)
    params = {k: v for k, v in model.named_parameters() if v.requires_grad}
    out = torch.autograd.grad(loss, list(params.values()), allow_unused=True, retain_graph=True)
    return {k: g for k, g in zip(params, out, strict=True) if g is not None}


def flat(g: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g[k].flatten() for k in sorted(g)])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def batch(n: int = 6, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 8, dtype=D) * scale, torch.randint(0, 4, (n,))


# -- the engine's differentiable mode -------------------------------------------------------------

@pytest.mark.parametrize("timing", ["ide", "deploy"])
@pytest.mark.parametrize("neuron", [Neuron("IF", v_th=1.0), Neuron("LIF", v_th=0.8, leak=0.9),
                                    Neuron("IF", v_th=1.0, reset="to_value", v_reset=-0.1)])
def test_differentiable_simulation_has_the_same_values(timing: str, neuron: Neuron) -> None:
    net = dense_net(neuron=neuron, T=20)
    x = torch.rand(4, 6, dtype=D) * 2
    circuit, _ = circuit_from_network(net, x)
    plain = simulate_circuit(circuit, 20, batch=4, timing=timing, window_start=7)
    spike = surrogate_spike("sigmoid", 0.5)
    for reset_grad in (True, False):
        diff = simulate_circuit(circuit, 20, batch=4, timing=timing, spike_fn=spike,
                                reset_grad=reset_grad)
        for name, r in plain.rates.items():
            assert torch.equal(diff.rates[name], r)
    # the second-stage rates are the (leak-weighted) rates of steps 7..19 alone
    trains = simulate(net, x, timing=timing, record_trains=True).trains
    assert trains is not None and plain.window_rates is not None
    lam = neuron.leak
    w = torch.tensor([lam ** (19 - t) for t in range(7, 20)], dtype=D)
    for name, tr in trains.items():
        expected = (w.view(-1, 1, 1) * tr[7:]).sum(0) / w.sum()
        torch.testing.assert_close(plain.window_rates[name], expected, rtol=1e-12, atol=1e-12)


# -- TSBP ----------------------------------------------------------------------------------------

class _RefSpike(torch.autograd.Function):
    """The test's own Heaviside with surrogate derivatives (written from the formulas)."""

    @staticmethod
    def forward(ctx: Any, v: torch.Tensor, theta: float, a: float,  # type: ignore[override]
                kind: str) -> torch.Tensor:
        ctx.save_for_backward(v)
        ctx.theta, ctx.a, ctx.kind = theta, a, kind
        return torch.where(v >= theta, 1.0, 0.0).to(v.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        (v,) = ctx.saved_tensors
        z = (v - ctx.theta) / ctx.a
        if ctx.kind == "rectangle":
            d = torch.where(z.abs() < 0.5, 1.0 / ctx.a, 0.0)
        else:
            d = torch.exp(-z) / (1 + torch.exp(-z)) ** 2 / ctx.a
        return grad * d, None, None, None


def unrolled_tsbp(circuit: Any, n: Neuron, T: int, *, reset_grad: bool, kind: str,
                  width: float) -> dict[str, torch.Tensor]:
    """Explicit per-step loop of the ring in IDE timing (h0 gets h1's spikes one step late)."""
    w = {q.name: q.weight for q in circuit.projections}
    c0, c1 = circuit.const["h0"], circuit.const["h1"]
    B = c0.shape[0]
    u0, u1 = torch.zeros(B, 10, dtype=D), torch.zeros(B, 6, dtype=D)
    s1 = torch.zeros(B, 6, dtype=D)
    acc0, acc1 = torch.zeros(B, 10, dtype=D), torch.zeros(B, 6, dtype=D)
    a = width * n.v_th
    for _ in range(T):
        v0 = n.leak * u0 + c0 + s1 @ w["fb"].T
        s0 = _RefSpike.apply(v0, n.v_th, a, kind)
        u0 = v0 - n.v_th * (s0 if reset_grad else s0.detach())
        v1 = n.leak * u1 + c1 + s0 @ w["ff0"].T
        s1 = _RefSpike.apply(v1, n.v_th, a, kind)
        u1 = v1 - n.v_th * (s1 if reset_grad else s1.detach())
        acc0, acc1 = n.leak * acc0 + s0, n.leak * acc1 + s1
    norm = sum(n.leak ** k for k in range(T))
    return {"h0": acc0 / norm, "h1": acc1 / norm}


@pytest.mark.parametrize("reset_grad", [True, False])
@pytest.mark.parametrize(("neuron", "kind"), [(Neuron("IF", v_th=1.0), "rectangle"),
                                              (Neuron("LIF", v_th=0.9, leak=0.85), "sigmoid")])
def test_tsbp_gradient_equals_unrolled_surrogate_autograd(reset_grad: bool, neuron: Neuron,
                                                          kind: str) -> None:
    method = TSBPMethod(surrogate=kind, width=0.8, reset_grad=reset_grad)  # type: ignore[arg-type]
    model = ring_model(method, neuron=neuron, T=10)
    x, y = batch()
    circuit, _, _ = model.prepare(x, 10)
    mine = method.rates(model, circuit, 10, None, None)
    ref = unrolled_tsbp(circuit, neuron, 10, reset_grad=reset_grad, kind=kind, width=0.8)
    for k in ref:
        torch.testing.assert_close(mine[k], ref[k], rtol=0, atol=1e-15)  # the same spikes
        assert 0.05 < float(ref[k].detach().mean()) < 0.95
    g_mine, g_ref = grads(model, mine, y), grads(model, ref, y)
    assert set(g_mine) == set(g_ref) >= {"ring.1.sn.raw", "ring.0.weight_raw",
                                         "input_layer.weight_raw"}
    for k in g_ref:
        torch.testing.assert_close(g_mine[k], g_ref[k], rtol=1e-10, atol=1e-13)


def test_tsbp_reset_term_changes_the_gradient() -> None:
    x, y = batch()
    out = []
    for reset_grad in (True, False):
        torch.manual_seed(3)
        method = TSBPMethod(reset_grad=reset_grad)
        model = ring_model(method, T=10)
        circuit, _, _ = model.prepare(x, 10)
        out.append(flat(grads(model, method.rates(model, circuit, 10, None, None), y)))
    assert rel_err(out[0], out[1]) > 1e-2


# -- SPIDE ---------------------------------------------------------------------------------------

def test_spiking_adjoint_solves_the_linear_system() -> None:
    torch.manual_seed(1)
    J = torch.randn(3, 20, 20, dtype=D)
    J = 0.6 * J / torch.linalg.matrix_norm(J, ord=2).view(3, 1, 1)
    b = torch.randn(3, 20, dtype=D) * 1e-3
    exact = torch.linalg.solve((torch.eye(20, dtype=D) - J).transpose(1, 2), b)  # g = J^T g + b

    def jt(s: torch.Tensor) -> torch.Tensor:
        return (J * s.unsqueeze(2)).sum(1)  # (J^T s) per sample

    errors = [rel_err(spiking_adjoint(jt, b, steps=n, vth=1.0)[0], exact)
              for n in (16, 64, 256, 1024)]
    assert all(e2 < e1 for e1, e2 in itertools.pairwise(errors)), errors
    assert errors[-1] < 5e-3


def test_spide_gradient_approaches_ide_as_the_backward_window_grows() -> None:
    model = ring_model(IDEMethod(), T=40)
    model.adjoint = AdjointConfig("broyden", max_iter=200, tol=1e-12)
    x, y = batch(8)
    circuit, _, _ = model.prepare(x, 40)
    rates = model.simulate(circuit, 40, None)
    ide = flat(grads(model, model.implicit(circuit, rates, None), y))
    errors, cosines = [], []
    for steps in (16, 64, 256, 1024):
        spide = SPIDEMethod(backward_T=steps)
        g = flat(grads(model, spide.attach_gradient(model, circuit, rates, rates, None), y))
        errors.append(rel_err(g, ide))
        cosines.append(float(F.cosine_similarity(g, ide, dim=0)))
        assert spide.log.solves[-1].backward_rate > 0
    assert all(e2 < e1 for e1, e2 in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.02, errors
    assert cosines[-1] > 0.9998 and cosines[-1] > cosines[0], cosines


def test_spide_modified_reset_and_forward_value() -> None:
    method = SPIDEMethod(backward_T=32, forward_warmup=4)
    model = ring_model(method, T=16)
    x, y = batch()
    F.cross_entropy(model(x), y).backward()  # train mode: spike-based gradient attached
    assert model.ring[1].sn.raw.grad is not None and model.ring[1].sn.raw.grad.abs().sum() > 0
    assert set(model.method_stats()) == {"spide_backward_rate", "spide_residual"}
    model.eval()
    net = model.to_network()
    assert all(p.neuron.v_init == p.neuron.v_th / 2 for p in net.populations)
    with torch.no_grad():  # the spec runs the same forward
        torch.testing.assert_close(model(x), readout(net, simulate(net, x).rates), rtol=0,
                                   atol=1e-12)


# -- DSR -----------------------------------------------------------------------------------------

def _set_thresholds(method: DSRMethod, values: dict[str, float]) -> None:
    with torch.no_grad():
        for k, v in values.items():
            method.v_th[k].fill_(v)


def test_dsr_gradient_equals_the_representation_mapping() -> None:
    method = DSRMethod(alpha=0.5, unroll=1)
    model = ring_model(method, T=20)
    _set_thresholds(method, {"h0": 1.3, "h1": 0.8})
    x, y = batch()
    circuit, _, _ = model.prepare(x, 20)
    mine = method.rates(model, circuit, 20, None, None)
    # independent: r = clamp((W r_src + c) / V, 0, 1), a spike worth V/V0 (V0 = 1 here), the
    # feedback source read as a constant, every value replaced by the simulated rate
    sim = model.simulate(circuit, 20, None)
    V0, V1 = method.v_th["h0"], method.v_th["h1"]
    w_ff, b_ff = model.ring[0].folded()
    w_fb, _ = model.ring[1].folded()
    c0 = model.input_layer.current(x)
    z0 = torch.clamp((c0 + (sim["h1"] * V1) @ w_fb.T) / V0, 0, 1)
    r0 = z0 + (sim["h0"] - z0).detach()
    z1 = torch.clamp(((r0 * V0) @ w_ff.T + b_ff) / V1, 0, 1)
    r1 = z1 + (sim["h1"] - z1).detach()
    for k, r in {"h0": r0, "h1": r1}.items():
        torch.testing.assert_close(mine[k], r, rtol=0, atol=1e-15)
    g_mine, g_ref = grads(model, mine, y), grads(model, {"h0": r0, "h1": r1}, y)
    assert set(g_mine) == set(g_ref) >= {"method.v_th.h0", "method.v_th.h1", "ring.1.sn.raw"}
    for k in g_ref:
        torch.testing.assert_close(g_mine[k], g_ref[k], rtol=1e-10, atol=1e-14)
    assert float(g_mine["method.v_th.h0"].abs()) > 1e-6
    assert float(g_mine["method.v_th.h1"].abs()) > 1e-6


def test_dsr_unrolling_approaches_the_implicit_gradient() -> None:
    method = DSRMethod(alpha=1.0, train_vth=False)
    model = ring_model(method, T=40)
    model.adjoint = AdjointConfig("broyden", max_iter=200, tol=1e-12)
    x, y = batch(8)
    circuit, _, _ = model.prepare(x, 40)
    sim = model.simulate(circuit, 40, None)
    ide = flat(grads(model, model.implicit(circuit, sim, None), y))
    errors = []
    for k in (1, 3, 30):
        method.unroll = k
        errors.append(rel_err(flat(grads(model, method.representation_sweeps(
            circuit, sim, None), y)), ide))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-6, errors


def test_dsr_thresholds_export_into_the_spec() -> None:
    method = DSRMethod(alpha=0.5)
    model = ring_model(method, T=16)
    _set_thresholds(method, {"h0": 1.4, "h1": 0.7})
    net = model.to_network()
    assert [p.neuron.v_th for p in net.populations] == pytest.approx([1.4, 0.7])
    assert [p.neuron.v_init for p in net.populations] == pytest.approx([0.7, 0.35])
    model.eval()
    x, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(model(x), readout(net, simulate(net, x).rates), rtol=0,
                                   atol=1e-12)
    _set_thresholds(method, {"h0": -1.0})  # below the bound: projected back before use
    assert model.to_network().populations[0].neuron.v_th == pytest.approx(method.vth_bound)
    _set_thresholds(method, {"h0": -1.0})
    model(x)
    assert float(method.v_th["h0"].detach()) == pytest.approx(method.vth_bound)


# -- configuration and training on real data -----------------------------------------------------

def test_method_config_refuses_another_methods_setting() -> None:
    with pytest.raises(ConfigError, match="backward_T: a setting of method 'spide'"):
        load_config(None, ["method.name=tsbp", "method.backward_T=10"])
    with pytest.raises(ConfigError, match=r"method\.name"):
        load_config(None, ["method.name=bptt"])
    cfg = load_config(None, ["method.name=spide", "method.backward_T=10"])
    assert cfg.method.backward_T == 10


TRAIN_CASES = {
    "ide": [],
    "tsbp": ["method.reset_grad=true"],
    "tsbp-noreset": ["method.name=tsbp", "method.reset_grad=false"],
    "dsr": [],
    "spide": ["method.backward_T=64"],
}
EXPECTED = {"ide": IDEMethod, "tsbp": TSBPMethod, "tsbp-noreset": TSBPMethod, "dsr": DSRMethod,
            "spide": SPIDEMethod}
STATS = {"ide": "adjoint_iterations", "dsr": "dsr_vth_h0", "spide": "spide_residual"}


@pytest.fixture(scope="module")
def fashion() -> tuple[torch.Tensor, torch.Tensor]:
    return load_dataset("fashion-mnist", "train", limit=512, progress=False)


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_each_method_trains_on_fashion_mnist(case: str, fashion: Any) -> None:
    name = case.split("-")[0]
    cfg = load_config(None, ["model=f400", "T=5", "dropout=0", f"method.name={name}",
                             *TRAIN_CASES[case]])
    torch.manual_seed(0)
    model = model_from_config(cfg, num_classes=10)
    assert type(model.method) is EXPECTED[case]
    x, y = fashion
    loader = make_loader(x, y, 128, shuffle=True, seed=0)
    probe = make_loader(x, y, 256, shuffle=False, seed=0)
    before = evaluate(model, probe, torch.device("cpu")).loss
    opt = build_optimizer(cfg, model)
    for epoch in range(2):
        loader.set_epoch(epoch)
        stats = train_epoch(model, loader, opt, None, torch.device("cpu"))
    after = evaluate(model, probe, torch.device("cpu")).loss
    assert after < 0.8 * before, (before, after)
    if case in STATS:
        assert STATS[case] in stats.adjoint
    model.to_network().validate()
