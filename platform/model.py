"""The feedback SNN: populations on a ring, trained with a method (IDE by default), exported as a
spec.

Population ``h0`` receives the input (through ``input_layer``) and the feedback projection from
the last population; ``h0 -> h1 -> ... -> h{L-1}`` are feed-forward. The readout reads the last
population's rates (the IDE paper's "last layer" form). A single-population net (F400, F64C5) is a
ring of length one: ``h0 -> h0``.

The training method (:mod:`fsnn.platform.methods`) decides how the rates get their gradient; it
may also own parameters (DSR's thresholds) that shape the circuit and the exported spec.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import nn

from fsnn.platform.engine import Circuit, equilibrium_map, simulate_circuit
from fsnn.platform.fused import FusedStepError
from fsnn.platform.graphs import GraphedSimulator
from fsnn.platform.ide import AdjointConfig, AdjointLog, implicit_equilibrium
from fsnn.platform.layers import ProjectionLayer
from fsnn.platform.methods.base import Method
from fsnn.platform.methods.ide import IDEMethod
from fsnn.platform.spec import (
    INPUT,
    InputEncoding,
    InputKind,
    Network,
    Neuron,
    Population,
    Projection,
    Readout,
    SpecError,
)

FusedSetting = bool | Literal["auto"]
"""``train.fused_step``: on, off, or ``"auto"`` (on for the device types below)."""
AUTO_FUSED_DEVICES = ("cuda",)  # where the compiled step paid (an H200); a 2-core CPU: it did not
RateSource = Callable[[torch.Tensor], dict[str, torch.Tensor]]
"""``source(x) -> rates``: every population's rates ``[B, *shape]`` for a batch ``x``."""


def _pop(i: int) -> str:
    return f"h{i}"


INPUT_PROJECTION = "in"  # the input projection's name, also its dropout mask's key


def _ring_name(i: int, n: int) -> str:
    return "fb" if i == n - 1 else f"ff{i}"


class FeedbackSNN(nn.Module):
    def __init__(self, *, input_kind: InputKind, input_shape: tuple[int, ...],
                 input_layer: ProjectionLayer, ring: list[ProjectionLayer], neuron: Neuron,
                 num_classes: int, T: int, timing: str = "ide",
                 adjoint: AdjointConfig | None = None, labels: list[str] | None = None,
                 name: str = "custom", method: Method | None = None) -> None:
        super().__init__()
        if not ring:
            raise SpecError("ring: a feedback SNN needs at least one ring projection")
        neuron.validate("model")
        self.input_kind: InputKind = input_kind
        self.input_shape = tuple(input_shape)
        self.input_layer = input_layer
        self.ring = nn.ModuleList(ring)
        self.neuron = neuron
        self.T = T
        self.timing = timing
        self.adjoint = adjoint or AdjointConfig()
        self.adjoint_log = AdjointLog()
        self.labels = labels or [str(i) for i in range(num_classes)]
        self.name = name
        self.shapes = [input_layer.out_shape] + [layer.out_shape for layer in ring[:-1]]
        if ring[-1].out_shape != self.shapes[0]:
            raise SpecError(f"ring: the feedback projection produces {ring[-1].out_shape}, "
                            f"population h0 has {self.shapes[0]}")
        for i, layer in enumerate(ring):
            if layer.in_shape != self.shapes[i]:
                raise SpecError(f"ring[{i}]: expects input {layer.in_shape}, "
                                f"population h{i} has {self.shapes[i]}")
        readout_size = int(torch.Size(self.shapes[-1]).numel())
        self.classifier = nn.Linear(readout_size, num_classes)
        self.last_rates: dict[str, torch.Tensor] = {}  # mean rate per population (0-d)
        self.method: Method = method if method is not None else IDEMethod()
        self.method.attach([_pop(i) for i in range(len(self.shapes))], neuron)
        self.bn_frozen = False
        self.rate_source: RateSource | None = None
        self.graphs: GraphedSimulator | None = None
        self.spike_dtype: torch.dtype | None = None
        self.fused_step: FusedSetting = False
        self.channels_last = False

    # -- hardware in the loop -------------------------------------------------------------------
    def freeze_bn(self) -> FeedbackSNN:
        """Batch norm normalises with its running statistics from now on (also in training) and
        stops updating them: the circuit then is exactly the exported spec's."""
        self.bn_frozen = True
        return self.train(self.training)

    def train(self, mode: bool = True) -> FeedbackSNN:
        super().train(mode)
        if self.bn_frozen:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def set_rate_source(self, source: RateSource | None) -> None:
        """Take training's forward rates from ``source(x)`` (e.g. a simulator) instead of the
        engine; the method's backward (IDE) solves the adjoint at those rates.

        ``source`` receives the batch as given to :meth:`forward` and returns every population's
        rates ``[B, *shape]``; it is called after the circuit is prepared, so a spec exported
        inside it (:meth:`to_network`) holds the weights the backward differentiates."""
        if source is not None:
            if not self.method.external_forward:
                raise SpecError(f"method {self.method.name}: its backward needs the engine's "
                                f"simulation; only IDE takes rates from another forward")
            if not self.bn_frozen and any(layer.bn is not None
                                          for layer in [self.input_layer, *self.ring]):
                raise SpecError("a model with batch norm must freeze_bn() before taking rates "
                                "from a simulator (it runs the folded spec)")
        self.rate_source = source

    # -- structure ------------------------------------------------------------------------------
    @property
    def readout_population(self) -> str:
        return _pop(len(self.shapes) - 1)

    def populations(self) -> list[Population]:
        """Populations with the neuron parameters the method sets (e.g. trained thresholds)."""
        return [Population(_pop(i), s, self.method.neuron(_pop(i), self.neuron))
                for i, s in enumerate(self.shapes)]

    def _ring_ends(self, i: int) -> tuple[str, str]:
        n = len(self.ring)
        return _pop(i), _pop((i + 1) % n)

    def circuit(self, input_current: torch.Tensor | None,
                masks: dict[str, torch.Tensor]) -> Circuit:
        """The circuit with live (differentiable) weights; biases go into constant currents."""
        const: dict[str, torch.Tensor] = {}
        projections: list[Projection] = []

        def add(target: str, value: torch.Tensor) -> None:
            const[target] = const[target] + value if target in const else value

        if input_current is not None:
            add(_pop(0), input_current)
        else:
            inp = self.input_layer
            w, b = inp.folded()
            if INPUT_PROJECTION in masks:
                w = w * inp.dropout_scale
            projections.append(Projection(INPUT_PROJECTION, INPUT, _pop(0), inp.kind, w, None,
                                          inp.stride, inp.padding, inp.output_padding))
            if b is not None:
                add(_pop(0), inp._channel(b))
        n = len(self.ring)
        for i, layer in enumerate(self.ring):
            src, dst = self._ring_ends(i)
            w, b = layer.folded()
            value = self.method.spike_value(src)
            if value is not None:
                w = w * value
            if _ring_name(i, n) in masks:
                w = w * layer.dropout_scale
            projections.append(Projection(_ring_name(i, n), src, dst, layer.kind, w, None,
                                          layer.stride, layer.padding, layer.output_padding,
                                          feedback=i == n - 1))
            if b is not None:
                add(dst, layer._channel(b))
        return Circuit(self.populations(), projections, const, masks)

    # -- forward --------------------------------------------------------------------------------
    def flatten_rates(self, rates: dict[str, torch.Tensor]) -> torch.Tensor:
        """All populations' rates as one ``[B, N]`` state (population order)."""
        return torch.cat([rates[_pop(i)].flatten(1) for i in range(len(self.shapes))], dim=1)

    def unflatten_rates(self, state: torch.Tensor) -> dict[str, torch.Tensor]:
        out, start = {}, 0
        for i, shape in enumerate(self.shapes):
            size = int(torch.Size(shape).numel())
            out[_pop(i)] = state[:, start:start + size].view(state.shape[0], *shape)
            start += size
        return out

    def prepare(self, x: torch.Tensor, T: int) -> tuple[Circuit, torch.Tensor | None,
                                                        torch.Tensor | None]:
        """Circuit (live weights, fresh dropout masks), spike input ``[T, B, ...]`` and the
        input's mean rate for a batch."""
        batch = x.shape[0]
        for layer in [self.input_layer, *self.ring]:
            layer.refresh()
        self.method.refresh()
        masks: dict[str, torch.Tensor] = {}
        n = len(self.ring)
        for i, layer in enumerate(self.ring):
            m = layer.sample_mask(batch, x.device)
            if m is not None:
                masks[_ring_name(i, n)] = m
        m = self.input_layer.sample_mask(batch, x.device)
        if self.input_kind == "analog":
            current: torch.Tensor | None = self.input_layer.current(x)
            if m is not None:
                current = current * m * self.input_layer.dropout_scale
            return self.circuit(current, masks), None, None
        spikes = x.transpose(0, 1)
        input_rate = spikes[:T].mean(0)
        self.input_layer.update_bn(input_rate)
        if m is not None:
            masks[INPUT_PROJECTION] = m
        return self.circuit(None, masks), spikes, input_rate

    def rate_maps(self, circuit: Circuit, input_rate: torch.Tensor | None) -> tuple[
            Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
        """The equilibrium map on flat states: with the parameters' graph, and detached."""
        frozen = circuit.detached()

        def live(s: torch.Tensor) -> torch.Tensor:
            return self.flatten_rates(equilibrium_map(circuit, self.unflatten_rates(s),
                                                      input_rate))

        def fixed(s: torch.Tensor) -> torch.Tensor:
            return self.flatten_rates(equilibrium_map(frozen, self.unflatten_rates(s),
                                                      input_rate))

        return live, fixed

    def implicit(self, circuit: Circuit, rates: dict[str, torch.Tensor],
                 input_rate: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Rates with the value of ``rates`` and IDE gradients through ``circuit``."""
        live, fixed = self.rate_maps(circuit, input_rate)
        state = implicit_equilibrium(self.flatten_rates(rates), live, fixed, self.adjoint,
                                     self.adjoint_log)
        return self.unflatten_rates(state)

    def set_speed(self, *, cuda_graphs: bool = False, spike_dtype: torch.dtype | None = None,
                  fused_step: FusedSetting = False, channels_last: bool = False) -> FeedbackSNN:
        """How the graph-free simulation (IDE's forward, evaluation) runs: replayed CUDA graphs
        (on a GPU; :mod:`fsnn.platform.graphs`), the type spikes are multiplied in
        (``torch.bfloat16``: exact spikes, weights rounded; ``None``: the state's type) and
        whether each population's update is one compiled kernel (:mod:`fsnn.platform.fused`;
        ``"auto"``: on a GPU, where it pays, and off with a warning where it cannot compile);
        ``channels_last``: convolutional state and weights in NHWC (tensor-core layout)."""
        self.graphs = GraphedSimulator() if cuda_graphs else None
        self.spike_dtype = spike_dtype
        self.fused_step = fused_step
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)  # 4-D weights only; others unchanged
        return self

    def simulate(self, circuit: Circuit, T: int,
                 spike_input: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The rates of a plain (no-graph) simulation of ``circuit``."""
        with torch.no_grad():
            frozen = circuit.detached()
            # a method whose training changes the neurons every step (DSR's thresholds) would
            # need a new graph and a new compiled step per step: its training runs eagerly
            stable = not self.training or self.method.external_forward
            device = self.classifier.weight.device
            fused = self.fused_step is True or (self.fused_step == "auto"
                                                and device.type in AUTO_FUSED_DEVICES)
            options: dict[str, Any] = {"timing": self.timing, "spike_input": spike_input,
                                       "spike_dtype": self.spike_dtype,
                                       "fused": fused and stable,
                                       "channels_last": self.channels_last,
                                       "with_counts": False}
            try:
                if self.graphs is not None and stable:
                    sim = self.graphs(frozen, T, **options)
                else:
                    sim = simulate_circuit(frozen, T, batch=circuit.batch_size(spike_input),
                                           **options)
            except FusedStepError as exc:
                if self.fused_step != "auto":
                    raise
                warnings.warn(f"{exc}. train.fused_step is auto: the unfused step runs from "
                              "now on", RuntimeWarning, stacklevel=2)
                self.fused_step = False
                return self.simulate(circuit, T, spike_input)
        return sim.rates

    def readout_input(self, rates: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the classifier reads: the readout population's rates times its spike value."""
        r = rates[self.readout_population].flatten(1)
        value = self.method.spike_value(self.readout_population)
        return r if value is None else r * value

    def forward(self, x: torch.Tensor, *, T: int | None = None) -> torch.Tensor:
        """Class scores: ``x`` is ``[B, *input_shape]`` (analog) or ``[B, T, *shape]`` (spikes).

        In training (with grad enabled) the method returns the simulated rates with its gradient
        attached (with a rate source: that source's rates with IDE's gradient); otherwise the
        rates come from a plain simulation.
        """
        T = T or self.T
        circuit, spikes, input_rate = self.prepare(x, T)
        if self.training and torch.is_grad_enabled():
            if self.rate_source is not None:
                if circuit.masks:
                    raise SpecError("dropout masks are active, but the simulator forward runs "
                                    "the spec without them; build the model with dropout 0")
                ref = self.classifier.weight
                rates = self.implicit(circuit, {k: v.to(ref.device, ref.dtype) for k, v in
                                                self.rate_source(x).items()}, input_rate)
            else:
                rates = self.method.rates(self, circuit, T, spikes, input_rate)
            for i, layer in enumerate(self.ring):
                layer.update_bn(rates[_pop(i)].detach())  # a no-op when batch norm is frozen
        else:
            rates = self.simulate(circuit, T, spikes)
        self.last_rates = {k: v.detach().mean() for k, v in rates.items()}  # no host sync
        return self.classifier(self.readout_input(rates))

    def method_stats(self) -> dict[str, float]:
        """The training method's statistics since :meth:`reset_method_stats`."""
        return self.method.stats(self)

    def reset_method_stats(self) -> None:
        self.method.reset_stats(self)

    # -- export ---------------------------------------------------------------------------------
    @torch.no_grad()
    def to_network(self, *, T: int | None = None, metadata: dict | None = None) -> Network:
        """The spec of this model (eval semantics: batch norm folded with running statistics)."""
        self.method.refresh()  # e.g. thresholds back within their bounds after an optimiser step
        projections = [self.input_layer.export(INPUT_PROJECTION, INPUT, _pop(0), feedback=False)]
        n = len(self.ring)
        for i, layer in enumerate(self.ring):
            src, dst = self._ring_ends(i)
            q = layer.export(_ring_name(i, n), src, dst, feedback=i == n - 1)
            value = self.method.spike_value(src)
            projections.append(q if value is None else replace(q, weight=q.weight * value))
        readout_w = self.classifier.weight.detach().clone()
        value = self.method.spike_value(self.readout_population)
        if value is not None:
            readout_w = readout_w * value
        net = Network(
            input=InputEncoding(self.input_kind, self.input_shape),
            populations=self.populations(),
            projections=projections,
            readout=Readout(self.readout_population, readout_w,
                            self.classifier.bias.detach().clone()),
            T=T or self.T,
            labels=list(self.labels),
            metadata={"model": self.name, "timing": self.timing, "method": self.method.name,
                      **(metadata or {})},
        )
        net.validate()
        return net
