"""IDE gradients against autograd through a converged fixed-point iteration of the same map."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from nets import small_model

from fsnn.platform.engine import equilibrium_map
from fsnn.platform.ide import AdjointConfig
from fsnn.platform.model import FeedbackSNN


def _loss_grads(model: FeedbackSNN, rates: dict[str, torch.Tensor],
                y: torch.Tensor) -> dict[str, torch.Tensor]:
    logits = model.classifier(rates[model.readout_population].flatten(1))
    loss = F.cross_entropy(logits, y)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {k: g for k, g in zip(params, grads, strict=True) if g is not None}


def _zero_state(model: FeedbackSNN, batch: int) -> dict[str, torch.Tensor]:
    return {p.name: torch.zeros(batch, *p.shape, dtype=torch.float64)
            for p in model.populations()}


def _converge_power_iteration(model: FeedbackSNN) -> None:
    """Make the spectral-norm estimate stationary so repeated forwards use identical weights."""
    for _ in range(500):
        model.ring[0].refresh()


def _gradients(kind: str, solver: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    model = small_model(kind).double().train()
    model.adjoint = AdjointConfig(solver, max_iter=300, tol=1e-11)
    _converge_power_iteration(model)
    x = torch.randn(6, *model.input_shape, dtype=torch.float64) * 2
    y = torch.randint(0, 4, (6,))
    # reference: unrolled fixed-point iteration with the full autograd graph
    circuit, _, _ = model.prepare(x, model.T)
    a = _zero_state(model, 6)
    for _ in range(300):
        a = equilibrium_map(circuit, a)
    ref = _loss_grads(model, a, y)
    # IDE: the equilibrium without a graph, gradient from the adjoint solve
    circuit, _, _ = model.prepare(x, model.T)
    with torch.no_grad():
        star = _zero_state(model, 6)
        for _ in range(300):
            star = equilibrium_map(circuit, star)
    ide = _loss_grads(model, model.implicit(circuit, star, None), y)
    return ref, ide


@pytest.mark.parametrize("kind", ["dense", "conv"])
@pytest.mark.parametrize("solver", ["broyden", "fixed_point", "anderson"])
def test_implicit_gradient_equals_unrolled_autograd(kind: str, solver: str) -> None:
    ref, ide = _gradients(kind, solver)
    assert set(ref) == set(ide)
    assert {"ring.0.sn.raw", "ring.0.sn.g", "input_layer.weight_raw",
            "input_layer.bn.weight"} <= set(ref)
    for name in ref:
        num = float((ide[name] - ref[name]).norm())
        den = float(ref[name].norm())
        if den < 1e-10:  # a bias followed by batch norm has no gradient at all
            assert num < 1e-10, name
            continue
        assert num / den < 1e-4, f"{name}: relative error {num / den:.2e}"


def test_training_step_reports_adjoint_statistics() -> None:
    model = small_model("dense", T=20)
    x = torch.randn(16, 8)
    y = torch.randint(0, 4, (16,))
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    stats = model.adjoint_log.summary()
    assert stats["adjoint_unconverged"] == 0.0
    assert 0 < stats["adjoint_iterations"] <= model.adjoint.max_iter
    assert stats["adjoint_residual"] < model.adjoint.tol
    assert model.ring[0].sn.raw.grad is not None and model.ring[0].sn.raw.grad.abs().sum() > 0


def test_non_converging_adjoint_is_reported_not_raised() -> None:
    model = small_model("dense", T=20)
    model.adjoint = AdjointConfig("fixed_point", max_iter=1, tol=1e-14)
    x = torch.randn(16, 8) * 3
    F.cross_entropy(model(x), torch.randint(0, 4, (16,))).backward()
    stats = model.adjoint_log.summary()
    assert stats["adjoint_unconverged"] == 1.0
    assert stats["adjoint_residual"] > 1e-14
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_forward_value_is_the_simulated_rate() -> None:
    """In training the readout sees exactly the spiking rates, not f(rates)."""
    model = small_model("dense", T=7).double().train()
    _converge_power_iteration(model)
    x = torch.randn(5, 8, dtype=torch.float64) * 3
    logits = model(x)
    circuit, _, _ = model.prepare(x, 7)
    from fsnn.platform.engine import simulate_circuit
    with torch.no_grad():
        sim = simulate_circuit(circuit.detached(), 7, batch=5)
    assert 0 < float(sim.rates["h0"].mean()) < 1
    expected = model.classifier(sim.rates["h0"].flatten(1))
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-12)
