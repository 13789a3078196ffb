"""IDE (Xiao et al., NeurIPS 2021, arXiv 2109.14247): implicit differentiation at the rate
equilibrium.

The forward simulates without a graph; the backward solves the adjoint linear system of the
equilibrium map ``a = clamp((W a + c) / V_th, 0, 1)`` at the simulated rates (see
:mod:`fsnn.platform.ide`). The solver settings and statistics live on the model
(``model.adjoint``, ``model.adjoint_log``) so that :meth:`FeedbackSNN.implicit` serves any caller.
"""

from __future__ import annotations

import torch

from fsnn.platform.engine import Circuit
from fsnn.platform.methods.base import Method, RateModel


class IDEMethod(Method):
    name = "ide"
    external_forward = True

    def rates(self, model: RateModel, circuit: Circuit, T: int,
              spike_input: torch.Tensor | None,
              input_rate: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return model.implicit(circuit, model.simulate(circuit, T, spike_input), input_rate)

    def stats(self, model: RateModel) -> dict[str, float]:
        return model.adjoint_log.summary()

    def reset_stats(self, model: RateModel) -> None:
        model.adjoint_log.reset()
