"""Small random networks shared by the tests (independent of the model zoo)."""

from __future__ import annotations

import torch

from fsnn.platform.engine import Circuit, circuit_from_network
from fsnn.platform.layers import ProjectionLayer
from fsnn.platform.model import FeedbackSNN
from fsnn.platform.spec import (
    INPUT,
    InputEncoding,
    Network,
    Neuron,
    Population,
    Projection,
    Readout,
)


def uniform(g: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    """float64 values uniform in [-scale, scale)."""
    return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * scale


def dense_net(*, neuron: Neuron | None = None, T: int = 30, seed: int = 0,
              scale: float = 0.6) -> Network:
    """input(6) -> a(5) -> b(4), feedback b -> a and a -> a; both signs of weights."""
    g = torch.Generator().manual_seed(seed)
    n = neuron or Neuron("IF", v_th=1.0)

    def w(o: int, i: int) -> torch.Tensor:
        return uniform(g, o, i, scale=scale)

    pops = [Population("a", (5,), n), Population("b", (4,), n)]
    projs = [
        Projection("in", INPUT, "a", "dense", w(5, 6), torch.rand(5, generator=g,
                                                                  dtype=torch.float64) * 0.2),
        Projection("ab", "a", "b", "dense", w(4, 5) * 1.5, torch.full((4,), 0.05,
                                                                      dtype=torch.float64)),
        Projection("ba", "b", "a", "dense", w(5, 4), None, feedback=True),
        Projection("aa", "a", "a", "dense", w(5, 5) * 0.5, None, feedback=True, delay=2),
    ]
    ro = Readout("b", w(3, 4), torch.zeros(3, dtype=torch.float64))
    return Network(InputEncoding("analog", (6,)), pops, projs, ro, T, labels=["x", "y", "z"])


def small_model(kind: str, *, neuron: Neuron | None = None, T: int = 30,
                dropout: float = 0.0) -> FeedbackSNN:
    """A tiny feedback SNN: dense (8 -> 12, feedback 12 -> 12) or conv (1x8x8 -> 3x4x4)."""
    if kind == "dense":
        inp = ProjectionLayer("dense", (8,), 12, bias=True, batch_norm=True, dropout=dropout)
        fb = ProjectionLayer("dense", (12,), 12, bias=False, spectral_norm=1.0, dropout=dropout)
        shape: tuple[int, ...] = (8,)
    else:
        inp = ProjectionLayer("conv", (1, 8, 8), 3, kernel=3, stride=2, padding=1, bias=True,
                              batch_norm=True, dropout=dropout)
        fb = ProjectionLayer("conv", (3, 4, 4), 3, kernel=3, padding=1, bias=False,
                             spectral_norm=1.0, dropout=dropout)
        shape = (1, 8, 8)
    return FeedbackSNN(input_kind="analog", input_shape=shape, input_layer=inp, ring=[fb],
                       neuron=neuron or Neuron("IF", v_th=1.0), num_classes=4, T=T)


def spike_input_circuit(g: torch.Generator) -> tuple[Circuit, torch.Tensor]:
    """The dense net fed by 12 steps of input spikes (batch 3) instead of analog input."""
    spikes = (torch.rand(12, 3, 6, generator=g) < 0.4).double()
    net = dense_net(neuron=Neuron("IF", v_th=0.9), T=12)
    net.projections[0] = Projection("in", INPUT, "a", "dense", net.projections[0].weight,
                                    net.projections[0].bias)
    circuit, _ = circuit_from_network(net, torch.rand(3, 6, dtype=torch.float64))
    return Circuit(circuit.populations, [*circuit.projections, net.projections[0]],
                   {"b": circuit.const["b"], "a": circuit.const["a"]}), spikes


def assert_same_gradients(a: FeedbackSNN, b: FeedbackSNN, x: torch.Tensor, y: torch.Tensor,
                          *, rtol: float = 1e-3, atol: float = 1e-5) -> None:
    """One training step's parameter gradients of two models agree."""
    grads = []
    for model in (a, b):
        model.train()
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for ga, gb in zip(*grads, strict=True):
        assert torch.allclose(ga, gb, rtol=rtol, atol=atol)
