"""The interface every training method implements.

A method turns a circuit (built by the model with live, differentiable weights) into the
populations' rates **with the method's gradient attached**. The rates' *value* is always what the
spiking simulation computed, so the forward pass is the dynamics the deployment target runs; only
the backward differs between methods.

Besides :meth:`Method.rates` a method may shape the network it trains:

* :meth:`Method.neuron` – per-population neuron parameters (trained thresholds, an initial
  membrane potential); they go into the circuit and into the exported spec;
* :meth:`Method.spike_value` – what one spike of a population is worth downstream (DSR's spikes
  carry the threshold); outgoing weights and the readout are scaled by it, in the circuit and in
  the exported spec alike.

Methods are :class:`torch.nn.Module` s so that their parameters (if any) are trained, saved and
restored with the model.

A method sees the model only through :class:`RateModel`, the few attributes it uses;
:class:`~fsnn.platform.model.FeedbackSNN` satisfies it structurally, so this package does not
import the model (which imports the methods).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from fsnn.platform.engine import Circuit
from fsnn.platform.ide import AdjointLog
from fsnn.platform.spec import Neuron


class RateModel(Protocol):
    """What a method uses of the model it trains (:class:`~fsnn.platform.model.FeedbackSNN`)."""

    timing: str
    """The simulation's timing convention (passed to the engine's ``simulate_circuit``)."""
    adjoint_log: AdjointLog
    """Statistics of the IDE adjoint solves."""

    def simulate(self, circuit: Circuit, T: int,
                 spike_input: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The rates of a plain (no-graph) simulation of ``circuit``."""
        ...

    def implicit(self, circuit: Circuit, rates: dict[str, torch.Tensor],
                 input_rate: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Rates with the value of ``rates`` and IDE gradients through ``circuit``."""
        ...

    def rate_maps(self, circuit: Circuit, input_rate: torch.Tensor | None) -> tuple[
            Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
        """The equilibrium map on flat states: with the parameters' graph, and detached."""
        ...

    def flatten_rates(self, rates: dict[str, torch.Tensor]) -> torch.Tensor:
        """All populations' rates as one ``[B, N]`` state (population order)."""
        ...

    def unflatten_rates(self, state: torch.Tensor) -> dict[str, torch.Tensor]:
        """The inverse of :meth:`flatten_rates`."""
        ...


class Method(nn.Module):
    """Base class: subclasses implement :meth:`rates`; the other hooks default to no-ops."""

    name: str = "method"
    external_forward: bool = False  # the backward needs only the rates: any forward may give them

    def attach(self, populations: list[str], neuron: Neuron) -> None:
        """Called once by the model with its population names and base neuron."""

    def refresh(self) -> None:
        """Called at the start of every forward pass, before the circuit is built."""

    def neuron(self, population: str, base: Neuron) -> Neuron:
        """The neuron parameters of ``population`` (default: the model's neuron)."""
        return base

    def spike_value(self, population: str) -> torch.Tensor | None:
        """The value one spike of ``population`` carries downstream (None: 1)."""
        return None

    def rates(self, model: RateModel, circuit: Circuit, T: int,
              spike_input: torch.Tensor | None,
              input_rate: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The simulated rates of every population, with this method's gradient."""
        raise NotImplementedError

    def stats(self, model: RateModel) -> dict[str, float]:
        """Metrics gathered since :meth:`reset_stats` (logged once per epoch)."""
        return {}

    def reset_stats(self, model: RateModel) -> None:
        """Forget the gathered metrics."""

    def extra_repr(self) -> str:
        return self.name
