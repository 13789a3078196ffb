"""``spinnaker-emulated``: a batched torch emulation of what a SpiNNaker board computes.

The numbers come from :mod:`fsnn.backends.spinnaker.plan` (the same plan the board backend
loads): per step, each population's excitatory and inhibitory ring buffers sum the 16-bit
weight words of the spikes that arrive (delay d: spikes of step t - d), saturating at 65535;
the neuron reads ``(exc << shift_e) - (inh << shift_i) + i_offset`` in s16.15 and updates its
s16.15 membrane with the sPyNNaker model's rule (``IF_trunc_delta``: ``V += I``, floored at
v_reset; ``IF_curr_delta``: the rounded closed form), fires at ``V >= v_thresh`` and resets to
v_reset. All integer arithmetic is exact (int64, or float64 holding integers below 2**53).

Two switches separate the two sources of mismatch with the spec:

* ``quantize=False``: float64 weights, currents and membrane (no fixed point);
* ``neuron="spec"``: the spec's reset rule (subtract or to_value), no floor, the spec's leak.

With both (``quantize=False, neuron="spec"``) the arithmetic is the torch engine's, operation
for operation, and the spike counts equal the reference's exactly (tested).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from fsnn.backends.base import BackendError, BatchResult
from fsnn.backends.spinnaker.plan import (
    DEFAULT_IF_LEAK,
    RB_MAX,
    NeuronPlan,
    Plan,
    accum_mul,
    plan_network,
    quantized_weight,
    spiking,
    to_s1615,
)
from fsnn.platform.counting import synaptic_events
from fsnn.platform.engine import apply_projection, circuit_from_network, rate_normaliser, readout
from fsnn.platform.spec import INPUT, Network, Population, Projection

NEURON_MODES = ("board", "spec")


@dataclass
class _Incoming:
    q: Projection
    pos: Projection  # weight words (quantized) or float weights (not quantized)
    neg: Projection | None


class SpinnakerEmulatedBackend:
    """Emulates the board (see the module docstring); options as in the docstring."""

    name = "spinnaker-emulated"

    def __init__(self, *, quantize: bool = True, neuron: str = "board",
                 if_model: str = "IF_trunc_delta", if_leak: float = DEFAULT_IF_LEAK) -> None:
        if neuron not in NEURON_MODES:
            raise BackendError(f"neuron must be one of {', '.join(NEURON_MODES)} "
                               f"(got {neuron!r})")
        self.quantize = quantize
        self.neuron = neuron
        self.if_model = if_model
        self.if_leak = if_leak
        self.net: Network | None = None
        self.plan: Plan | None = None

    def check(self, net: Network) -> None:
        plan_network(net, if_model=self.if_model, if_leak=self.if_leak)

    def build(self, net: Network) -> None:
        self.plan = plan_network(net, if_model=self.if_model, if_leak=self.if_leak)
        self.net = net.to(torch.float64)

    def update(self, net: Network) -> bool:
        """Re-plan (the fixed-point shifts follow the new weights); nothing else to rebuild."""
        self.build(net)
        return True

    def run(self, x: torch.Tensor) -> BatchResult:
        if self.net is None or self.plan is None:
            raise BackendError("build() a spec before run()")
        net = self.net
        start = time.perf_counter()
        x = x.detach().to("cpu", torch.float64)
        spikes = net.input.kind == "spikes"
        if spikes:
            x = check_spike_input(x, net.T).transpose(0, 1)
        with torch.no_grad():
            circuit, spk = circuit_from_network(net, x)
            batch = int(x.shape[1] if spikes else x.shape[0])
            counts, rates = emulate(net, self.plan, circuit.const, spk, batch,
                                    quantize=self.quantize, neuron=self.neuron)
            logits = readout(net, rates)
        events = synaptic_events(net, counts, None if spk is None else spk[:net.T].sum(0))
        return BatchResult(counts=counts, rates=rates, logits=logits, synaptic_events=events,
                           wall_time=time.perf_counter() - start)

    def close(self) -> None:
        self.net = None
        self.plan = None


def check_spike_input(x: torch.Tensor, T: int) -> torch.Tensor:
    """``[B, >=T, ...]`` spike counts in {0, 1} (a SpikeSourceArray sends one spike per step)."""
    if x.dim() < 2 or x.shape[1] < T:
        raise BackendError(f"input: spike trains must be [B, >= {T}, ...], got {tuple(x.shape)}")
    x = x[:, :T]
    if bool(((x != 0) & (x != 1)).any()):
        raise BackendError("input: SpiNNaker's spike sources send at most one spike per step; "
                           "spike counts must be 0 or 1")
    return x


def _incoming(net: Network, plan: Plan, quantize: bool) -> dict[str, list[_Incoming]]:
    out: dict[str, list[_Incoming]] = {p.name: [] for p in net.populations}
    for q in spiking(net):
        if quantize:
            s = plan.scales[q.target]
            pos = _with_weight(q, quantized_weight(q, s, 1))
            neg = _with_weight(q, quantized_weight(q, s, -1))
            out[q.target].append(_Incoming(q, pos, neg))
        else:
            out[q.target].append(_Incoming(q, q, None))
    return out


def _with_weight(q: Projection, w: torch.Tensor) -> Projection:
    return Projection(q.name, q.source, q.target, q.kind, w, None, q.stride, q.padding,
                      q.output_padding, q.delay, q.feedback)


def emulate(net: Network, plan: Plan, const: dict[str, torch.Tensor],
            spike_input: torch.Tensor | None, batch: int, *, quantize: bool, neuron: str
            ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Simulate T steps; returns spike counts and (leak-weighted, spec leak) rates."""
    T = net.T
    incoming = _incoming(net, plan, quantize)
    pops = net.populations
    f64 = torch.float64
    zeros = {p.name: torch.zeros(batch, *p.shape, dtype=f64) for p in pops}
    trains: dict[str, list[torch.Tensor]] = {p.name: [] for p in pops}
    if spike_input is not None:
        trains[INPUT] = [spike_input[t].to(f64) for t in range(T)]
    state = {p.name: _initial(p, plan.neurons[p.name], zeros[p.name], quantize) for p in pops}
    offset = {p.name: to_s1615(zeros[p.name] + const[p.name]) for p in pops
              if quantize and p.name in const}
    acc = {p.name: torch.zeros_like(zeros[p.name]) for p in pops}
    counts = {p.name: torch.zeros_like(zeros[p.name]) for p in pops}
    for t in range(T):
        step: dict[str, torch.Tensor] = {}
        for p in pops:
            arriving = [(inc, trains[inc.q.source][t - inc.q.delay]) for inc in incoming[p.name]
                        if t - inc.q.delay >= 0]
            if quantize:
                s, state[p.name] = _fixed_step(p, plan.neurons[p.name], plan.scales[p.name]
                                               .shift, state[p.name], offset.get(p.name),
                                               arriving, neuron)
            else:
                s, state[p.name] = _float_step(p, plan.neurons[p.name], state[p.name],
                                               zeros[p.name], const.get(p.name), arriving,
                                               neuron)
            step[p.name] = s
        for p in pops:
            s, lam = step[p.name], p.neuron.leak
            trains[p.name].append(s)
            acc[p.name] = acc[p.name] * lam + s if lam != 1.0 else acc[p.name] + s
            counts[p.name] = counts[p.name] + s
    rates = {p.name: acc[p.name] / rate_normaliser(p.neuron.leak, T) for p in pops}
    return counts, rates


def _initial(p: Population, n: NeuronPlan, zeros: torch.Tensor, quantize: bool) -> torch.Tensor:
    if quantize:
        return torch.full(zeros.shape, n.init_raw, dtype=torch.int64)
    return torch.full_like(zeros, p.neuron.v_init)


def _float_step(p: Population, n: NeuronPlan, u: torch.Tensor, zeros: torch.Tensor,
                current: torch.Tensor | None, arriving: list[tuple[_Incoming, torch.Tensor]],
                neuron: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch engine's arithmetic (same operations, same order); board or spec neuron."""
    total = zeros if current is None else zeros + current
    for inc, src in arriving:
        total = total + apply_projection(inc.q, src, p.shape)
    spec = p.neuron
    lam = spec.leak if neuron == "spec" else n.leak
    v = u * lam + total if lam != 1.0 else u + total
    if neuron == "board" and n.floor:
        v = torch.clamp(v, min=n.v_reset)
    s = (v >= spec.v_th).to(v.dtype)
    if neuron == "spec" and spec.reset == "subtract":
        v = v - spec.v_th * s
    else:
        v = torch.where(s.bool(), torch.full_like(v, spec.v_reset), v)
    return s, v


def _fixed_step(p: Population, n: NeuronPlan, shift: tuple[int, int], v: torch.Tensor,
                offset: torch.Tensor | None, arriving: list[tuple[_Incoming, torch.Tensor]],
                neuron: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One s16.15 update: ring buffers, input current, the sPyNNaker model's rule."""
    exc = torch.zeros(v.shape, dtype=torch.float64)
    inh = torch.zeros(v.shape, dtype=torch.float64)
    for inc, src in arriving:
        exc = exc + apply_projection(inc.pos, src, p.shape)
        assert inc.neg is not None
        inh = inh + apply_projection(inc.neg, src, p.shape)
    current = (torch.clamp(exc, max=RB_MAX).to(torch.int64) << shift[0]) \
        - (torch.clamp(inh, max=RB_MAX).to(torch.int64) << shift[1])
    if offset is not None:
        current = current + offset
    if neuron == "spec" and p.neuron.leak == 1.0:
        v = v + current  # the spec's IF: exact integration
    elif n.model == "IF_trunc_delta":
        v = v + accum_mul(current, n.r_raw)
    else:
        alpha = accum_mul(current, n.r_raw)
        v = alpha - accum_mul(alpha - v, n.exp_raw)
    if neuron == "board" and n.floor:
        v = torch.clamp(v, min=n.reset_raw)
    s = v >= n.th_raw
    if neuron == "spec" and p.neuron.reset == "subtract":
        v = v - n.th_raw * s.to(torch.int64)
    else:
        v = torch.where(s, torch.full_like(v, n.reset_raw), v)
    return s.to(torch.float64), v
