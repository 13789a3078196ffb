"""TSBP: backpropagation through time with surrogate gradients (Yang, arXiv 2011.09964).

The spiking simulation itself is differentiated: every time step stays in the autograd graph, the
Heaviside's derivative is replaced by a surrogate, and the reset ``u <- u - V_th s`` either keeps
its dependency on the spike in the graph (``reset_grad=True``: the paper's "missing reset term"
added back) or detaches it (``reset_grad=False``: the common practice the paper analyses). The
memory of the graph grows linearly with T, unlike the implicit methods.

Surrogates (``x = v - V_th``, width ``w`` in units of V_th, so ``a = w V_th``):

* ``rectangle``: ``dS/dx = 1/a`` for ``|x| < a/2``, else 0;
* ``sigmoid``:   ``dS/dx = sigma'(x/a) / a`` (the derivative of ``sigmoid(x/a)``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from fsnn.platform.engine import Circuit, SpikeFn, simulate_circuit
from fsnn.platform.methods.base import Method, RateModel
from fsnn.platform.spec import SpecError

Surrogate = Literal["rectangle", "sigmoid"]
SURROGATES = ("rectangle", "sigmoid")


class _Spike(torch.autograd.Function):
    """Heaviside(x >= 0) forward, a surrogate derivative of scale ``a`` backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, a: float,  # type: ignore[override]
                kind: str) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.a, ctx.kind = a, kind
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        a = ctx.a
        if ctx.kind == "rectangle":
            d = (x.abs() < a / 2).to(grad.dtype) / a
        else:
            sig = torch.sigmoid(x / a)
            d = sig * (1 - sig) / a
        return grad * d, None, None


def surrogate_spike(kind: Surrogate, width: float) -> SpikeFn:
    """A spike function for :func:`~fsnn.platform.engine.simulate_circuit`."""
    if kind not in SURROGATES:
        raise SpecError(f"surrogate: unknown surrogate {kind!r}; known: {', '.join(SURROGATES)}")
    if not width > 0:
        raise SpecError(f"surrogate_width: must be > 0 (got {width})")

    def spike(x: torch.Tensor, v_th: float) -> torch.Tensor:
        return _Spike.apply(x, width * v_th, kind)

    return spike


class TSBPMethod(Method):
    name = "tsbp"

    def __init__(self, *, surrogate: Surrogate = "rectangle", width: float = 1.0,
                 reset_grad: bool = True) -> None:
        super().__init__()
        self.surrogate: Surrogate = surrogate
        self.width = width
        self.reset_grad = reset_grad
        self._spike = surrogate_spike(surrogate, width)

    def rates(self, model: RateModel, circuit: Circuit, T: int,
              spike_input: torch.Tensor | None,
              input_rate: torch.Tensor | None) -> dict[str, torch.Tensor]:
        sim = simulate_circuit(circuit, T, batch=circuit.batch_size(spike_input),
                               timing=model.timing, spike_input=spike_input,
                               spike_fn=self._spike, reset_grad=self.reset_grad)
        return sim.rates

    def extra_repr(self) -> str:
        return (f"surrogate={self.surrogate}, width={self.width}, "
                f"reset_grad={self.reset_grad}")
