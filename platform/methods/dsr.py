"""DSR: differentiation on spike representation (Meng et al., CVPR 2022, arXiv 2205.00459).

**Representation.** A population's spike trains are represented by their (leak-weighted) firing
rate ``a`` (for LIF the weights are ``lambda^(T-1-t)``, the engine's rates). DSR lets a spike carry
the threshold, so the representation is ``r = V_th a``, and the spiking dynamics (subtraction
reset) approximate the sub-differentiable mapping

    r = clamp(W r_src + c, 0, V_th)        i.e.  a = clamp((W r_src + c) / V_th, 0, 1),

with an error that shrinks like 1/T. The backward differentiates this mapping, evaluated at the
simulated representation of each source, layer by layer (no backpropagation through time).

**Trainable thresholds.** Each population has a threshold ``V`` (a parameter, kept >= ``vth_bound``
as the paper does). A spike is worth ``V / V0`` downstream (``V0`` the initial threshold: a
constant rescaling of the weights, so the initial network is the same as the other methods');
hence ``dr/dV > 0`` on the saturated side and ``< 0`` through the division on the linear side, as
in the paper. In the spec the thresholds become each population's ``v_th`` and the spike values
are folded into the outgoing weights and the readout.

**The extra hyperparameter alpha.** The paper fires at ``alpha V`` while still subtracting ``V``,
which turns the rate's floor into rounding and halves the representation error for
``alpha = 0.5``. In the spec that is an initial membrane potential ``(1 - alpha) V``: exactly the
same spikes for IF neurons; for LIF the offset decays with the leak (an approximation of the
paper's LIF variant).

**Feed-forward and feedback nets.** In a feed-forward circuit one sweep over the populations (in
list order, each from its sources' straight-through representations) is exactly the paper's
gradient. A feedback projection's source has no "earlier layer" to differentiate through; with
``unroll = K`` the sweep is repeated K times, the feedback sources of sweep k being the
representations of sweep k-1 (the first reads the simulated rates as constants). Every Jacobian is
evaluated at the simulated rates, so K sweeps give the first K terms of the Neumann series of the
implicit (IDE) gradient: ``unroll = 1`` ignores the feedback loop in the backward, and the gradient
tends to IDE's (with trainable thresholds) as K grows when the loop is contractive.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from fsnn.platform.engine import Circuit, population_input
from fsnn.platform.methods.base import Method, RateModel
from fsnn.platform.spec import Neuron, SpecError


class DSRMethod(Method):
    name = "dsr"

    def __init__(self, *, alpha: float = 0.5, vth_bound: float = 1e-3, train_vth: bool = True,
                 unroll: int = 1) -> None:
        super().__init__()
        if not 0.0 < alpha <= 1.0:
            raise SpecError(f"alpha: must be in (0, 1] (got {alpha})")
        if not vth_bound > 0:
            raise SpecError(f"vth_bound: must be > 0 (got {vth_bound})")
        if unroll < 1:
            raise SpecError(f"unroll: must be >= 1 (got {unroll})")
        self.alpha, self.vth_bound = alpha, vth_bound
        self.train_vth, self.unroll = train_vth, unroll
        self.v_th = nn.ParameterDict()
        self.v0: dict[str, float] = {}

    def attach(self, populations: list[str], neuron: Neuron) -> None:
        for name in populations:
            self.v0[name] = neuron.v_th
            self.v_th[name] = nn.Parameter(torch.tensor(float(neuron.v_th)),
                                           requires_grad=self.train_vth)

    @torch.no_grad()
    def refresh(self) -> None:
        for v in self.v_th.values():
            if float(v) < self.vth_bound:
                v.fill_(self.vth_bound)

    def threshold(self, population: str) -> float:
        return float(self.v_th[population].detach())

    def neuron(self, population: str, base: Neuron) -> Neuron:
        v = self.threshold(population)
        return replace(base, v_th=v, v_init=(1.0 - self.alpha) * v)

    def spike_value(self, population: str) -> torch.Tensor:
        return self.v_th[population] / self.v0[population]

    def rates(self, model: RateModel, circuit: Circuit, T: int,
              spike_input: torch.Tensor | None,
              input_rate: torch.Tensor | None) -> dict[str, torch.Tensor]:
        simulated = model.simulate(circuit, T, spike_input)
        return self.representation_sweeps(circuit, simulated, input_rate)

    def representation_sweeps(self, circuit: Circuit, simulated: dict[str, torch.Tensor],
                              input_rate: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``unroll`` sweeps of the representation mapping; values stay the simulated rates."""
        order = {p.name: i for i, p in enumerate(circuit.populations)}
        previous = {k: v.detach() for k, v in simulated.items()}
        for _ in range(self.unroll):
            current: dict[str, torch.Tensor] = {}
            for p in circuit.populations:
                sources = {name: (current[name] if name in current and order[name] < order[p.name]
                                  else previous[name]) for name in order}
                z = torch.clamp(population_input(circuit, p, sources, input_rate)
                                / self.v_th[p.name], 0.0, 1.0)
                current[p.name] = z + (simulated[p.name] - z).detach()
            previous = current
        return previous

    def stats(self, model: RateModel) -> dict[str, float]:
        return {f"dsr_vth_{k}": float(v.detach()) for k, v in self.v_th.items()}

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, vth_bound={self.vth_bound}, train_vth={self.train_vth}, "
                f"unroll={self.unroll}")
