"""SPIDE: spike-based implicit differentiation (Xiao et al., Neural Networks 2023,
arXiv 2302.00232).

Like IDE, the forward is a plain spiking simulation and the gradient is the implicit one at the
rate equilibrium: ``g = J^T g + dL/da`` with ``J`` the Jacobian of the equilibrium map at the
simulated rates. SPIDE solves that linear system **with spikes**: every neuron gets a *couple* of
backward neurons, which together act as one ternary neuron (spikes -1, 0, +1). Backward step t::

    u  <- u + b + J^T s            (b = dL/da, a constant current; s = last step's spikes)
    s   = A * ([u >= V_b] - [u <= -V_b]),   u <- u - s        (A = 2 V_b)
    beta = mean of s over the backward window (backward_T steps)

The reset subtracts ``2 V_b`` (a rest potential of ``-V_b``, the paper's modified reset), so the
spike count rounds rather than floors; ``beta`` then solves the linear system up to an error of
order ``V_b / backward_T`` and approaches IDE's gradient as the window grows. ``J^T s`` is the
synaptic input the backward neurons receive: the transposed weights applied to the spikes, gated
by the derivative of the forward neurons' clamp (1 where the mean input at the simulated rates
puts a neuron inside (0, 1), else 0; the same Jacobian IDE uses, so the target is IDE's gradient).

Implementation choices:

* the incoming gradient is scaled per sample to a maximum magnitude of 1 before it drives the
  backward neurons, and ``beta`` scaled back (the system is linear, so this is exact in the limit):
  ``backward_vth`` is the threshold in those units and one setting works for any loss scale;
  ``|g|`` is representable up to ``2 backward_vth`` times the largest incoming gradient;
* ``modified_reset`` also applies the modified reset to the **forward** neurons (fire at V_th/2,
  subtract V_th: an initial membrane potential of V_th/2 in the spec, exact for IF neurons),
  halving the forward rates' quantisation error;
* two-stage average rates: ``forward_warmup`` steps of the forward are left out of the rates at
  which the backward is evaluated (the equilibrium estimate; the readout still sees the rates over
  all T steps, as the deployed network does), and ``backward_warmup`` steps of the backward are
  left out of ``beta``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from fsnn.platform.engine import Circuit, simulate_circuit
from fsnn.platform.ide import JTProduct, attach_implicit_gradient
from fsnn.platform.methods.base import Method, RateModel
from fsnn.platform.spec import Neuron, SpecError


@dataclass
class SpikeSolveStats:
    backward_rate: float  # mean |spike| per backward neuron per step
    residual: float  # ||beta - J^T beta - b|| / ||b||


@dataclass
class SpikeSolveLog:
    solves: list[SpikeSolveStats] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        if not self.solves:
            return {}
        n = len(self.solves)
        return {"spide_backward_rate": sum(s.backward_rate for s in self.solves) / n,
                "spide_residual": max(s.residual for s in self.solves)}


def spiking_adjoint(jt: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, *, steps: int,
                    vth: float, warmup: int = 0) -> tuple[torch.Tensor, SpikeSolveStats]:
    """Solve ``g = J^T g + b`` with ternary spiking neurons over ``steps`` steps.

    ``jt(s)`` is the (linear) map ``s -> J^T s`` on ``[B, N]`` tensors.
    """
    if not 0 <= warmup < steps:
        raise SpecError(f"backward_warmup: must be in [0, backward_T) (got {warmup}, {steps})")
    scale = b.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(b.dtype).tiny)
    drive = b / scale
    amp = 2.0 * vth
    u = torch.zeros_like(b)
    s = torch.zeros_like(b)
    total = torch.zeros_like(b)
    fired = torch.zeros((), dtype=b.dtype, device=b.device)
    for t in range(steps):
        u = u + drive if t == 0 else u + drive + jt(s)
        s = amp * ((u >= vth).to(b.dtype) - (u <= -vth).to(b.dtype))
        u = u - s
        if t >= warmup:
            total = total + s
        fired = fired + s.abs().sum()
    beta = total / (steps - warmup)
    residual = (beta - jt(beta) - drive).norm() / drive.norm().clamp_min(1e-30)
    rate = float(fired / (amp * b.numel() * steps))
    return beta * scale, SpikeSolveStats(rate, float(residual))


class SPIDEMethod(Method):
    name = "spide"

    def __init__(self, *, backward_T: int = 250, backward_vth: float = 1.0,
                 modified_reset: bool = True, forward_warmup: int = 0,
                 backward_warmup: int = 0) -> None:
        super().__init__()
        if backward_T < 1:
            raise SpecError(f"backward_T: must be >= 1 (got {backward_T})")
        if not backward_vth > 0:
            raise SpecError(f"backward_vth: must be > 0 (got {backward_vth})")
        if not 0 <= backward_warmup < backward_T:
            raise SpecError(f"backward_warmup: must be in [0, backward_T) (got {backward_warmup})")
        if forward_warmup < 0:
            raise SpecError(f"forward_warmup: must be >= 0 (got {forward_warmup})")
        self.backward_T, self.backward_vth = backward_T, backward_vth
        self.modified_reset = modified_reset
        self.forward_warmup, self.backward_warmup = forward_warmup, backward_warmup
        self.log = SpikeSolveLog()

    def neuron(self, population: str, base: Neuron) -> Neuron:
        return replace(base, v_init=base.v_th / 2) if self.modified_reset else base

    def rates(self, model: RateModel, circuit: Circuit, T: int,
              spike_input: torch.Tensor | None,
              input_rate: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if self.forward_warmup >= T:
            raise SpecError(f"forward_warmup: must be < T (got {self.forward_warmup}, T={T})")
        with torch.no_grad():
            sim = simulate_circuit(circuit.detached(), T, batch=circuit.batch_size(spike_input),
                                   timing=model.timing, spike_input=spike_input,
                                   window_start=self.forward_warmup or None)
        point = sim.window_rates if sim.window_rates is not None else sim.rates
        return self.attach_gradient(model, circuit, sim.rates, point, input_rate)

    def attach_gradient(self, model: RateModel, circuit: Circuit,
                        value: dict[str, torch.Tensor], point: dict[str, torch.Tensor],
                        input_rate: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Rates with the value ``value`` and the spike-based implicit gradient at ``point``."""
        live, frozen = model.rate_maps(circuit, input_rate)

        def spiking_solve(jt: JTProduct, grad: torch.Tensor) -> torch.Tensor:
            g, stats = spiking_adjoint(jt, grad, steps=self.backward_T, vth=self.backward_vth,
                                       warmup=self.backward_warmup)
            self.log.solves.append(stats)
            return g

        return model.unflatten_rates(attach_implicit_gradient(
            model.flatten_rates(point), live, frozen, spiking_solve,
            value=model.flatten_rates(value)))

    def stats(self, model: RateModel) -> dict[str, float]:
        return self.log.summary()

    def reset_stats(self, model: RateModel) -> None:
        self.log.solves.clear()

    def extra_repr(self) -> str:
        return (f"backward_T={self.backward_T}, backward_vth={self.backward_vth}, "
                f"modified_reset={self.modified_reset}, forward_warmup={self.forward_warmup}, "
                f"backward_warmup={self.backward_warmup}")
