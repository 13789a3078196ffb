"""The torch spiking engine: simulates a network for T steps on a batch, on CPU or GPU.

Two timing modes reach the same rate equilibrium:

* ``"ide"`` – the IDE paper's: feed-forward projections act within the step (populations update
  in list order), feedback projections after one step;
* ``"deploy"`` – as PyNN/NEST run it: every projection acts ``delay`` steps after the spike.

Everything is batched tensor code; the only Python loop is over time steps and populations.

The simulation runs without a graph for IDE-style methods. Given a ``spike_fn`` (a Heaviside with
a surrogate derivative) the same loop is differentiable end to end, for backpropagation through
time; ``reset_grad`` then says whether the reset's dependency on the spike stays in the graph.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from fsnn.platform.fused import neuron_step as fused_neuron_step
from fsnn.platform.spec import (
    INPUT,
    TIMINGS,
    Network,
    Neuron,
    Population,
    Projection,
    SpecError,
)


@dataclass
class Circuit:
    """What the engine runs: populations, spike-carrying projections and constant currents.

    ``const`` holds each population's constant input current (biases plus the analog input
    through the first projection), shaped ``[B, *shape]`` or broadcastable to it. ``masks``
    multiplies a projection's output (fixed dropout masks during training: boolean, their
    1/keep scale already in the weight; any tensor broadcastable to the output works).
    """

    populations: list[Population]
    projections: list[Projection]
    const: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor] = field(default_factory=dict)

    def incoming(self, target: str) -> list[Projection]:
        return [q for q in self.projections if q.target == target]

    def detached(self) -> Circuit:
        """The same circuit with every tensor detached (weights, biases, constant currents)."""
        projections = [Projection(q.name, q.source, q.target, q.kind, q.weight.detach(),
                                  None if q.bias is None else q.bias.detach(), q.stride,
                                  q.padding, q.output_padding, q.delay, q.feedback)
                       for q in self.projections]
        return Circuit(self.populations, projections,
                       {k: v.detach() for k, v in self.const.items()}, self.masks)

    def batch_size(self, spike_input: torch.Tensor | None = None) -> int:
        """The batch this circuit was built for (spike input ``[T, B, ...]`` if given)."""
        if spike_input is not None:
            return int(spike_input.shape[1])
        sizes = [int(t.shape[0]) for t in [*self.const.values(), *self.masks.values()]
                 if t.dim() > 0]
        return max(sizes, default=1)


@dataclass
class SimResult:
    """Rates (leak-weighted, over all T steps), spike counts and optional spike trains.

    ``window_rates`` are the rates over steps ``window_start .. T-1`` only (the "second stage"
    of a two-stage average), when asked for.
    """

    rates: dict[str, torch.Tensor]
    counts: dict[str, torch.Tensor]
    trains: dict[str, torch.Tensor] | None = None
    input_counts: torch.Tensor | None = None
    window_rates: dict[str, torch.Tensor] | None = None


SpikeFn = Callable[[torch.Tensor, float], torch.Tensor]
"""``spike_fn(v - v_th, v_th)``: 1.0 where the argument is >= 0, else 0.0, with a surrogate
derivative (``v_th`` scales the surrogate's width)."""


def apply_projection(q: Projection, x: torch.Tensor, target_shape: tuple[int, ...]) -> torch.Tensor:
    """The projection's linear map (no bias) on a batch of source values."""
    w = q.weight
    if q.kind == "dense":
        return F.linear(x.flatten(1), w).view(x.shape[0], *target_shape)
    if q.kind == "conv":
        return F.conv2d(x, w, stride=q.stride, padding=q.padding)
    return F.conv_transpose2d(x, w, stride=q.stride, padding=q.padding,
                              output_padding=q.output_padding)


def bias_current(q: Projection, target_shape: tuple[int, ...]) -> torch.Tensor | None:
    if q.bias is None:
        return None
    if q.kind == "dense":
        return q.bias.view(1, *target_shape)
    return q.bias.view(1, -1, *([1] * (len(target_shape) - 1)))


def circuit_from_network(net: Network, x: torch.Tensor) -> tuple[Circuit, torch.Tensor | None]:
    """Compile a spec for input ``x``; returns the circuit and the spike input (or None).

    ``x`` is ``[B, *input.shape]`` for analog input and ``[T, B, *input.shape]`` for spikes.
    """
    shapes = {p.name: p.shape for p in net.populations}
    const: dict[str, torch.Tensor] = {}
    spiking: list[Projection] = []
    analog = net.input.kind == "analog"
    expect = tuple(net.input.shape)
    got = tuple(x.shape[1:]) if analog else tuple(x.shape[2:])
    if got != expect:
        raise SpecError(f"input: the network expects samples of shape {expect}, got {got} "
                        f"(full batch shape {tuple(x.shape)})")
    for q in net.projections:
        shape = shapes[q.target]
        parts = []
        if analog and q.source == INPUT:
            parts.append(apply_projection(q, x, shape))
        else:
            spiking.append(q)
        b = bias_current(q, shape)
        if b is not None:
            parts.append(b)
        for part in parts:
            const[q.target] = const[q.target] + part if q.target in const else part
    return Circuit(list(net.populations), spiking, const), (None if analog else x)


def _delays(circuit: Circuit, timing: str) -> dict[str, int]:
    if timing not in TIMINGS:
        raise SpecError(f"timing: unknown timing mode {timing!r}; known: {', '.join(TIMINGS)}")
    if timing == "deploy":
        return {q.name: q.delay for q in circuit.projections}
    return {q.name: (1 if q.feedback else 0) for q in circuit.projections}


def rate_normaliser(leak: float, T: int) -> float:
    """Sum of the leak weights lambda^k for k < T (T for an IF neuron)."""
    return float(T) if leak == 1.0 else (1.0 - leak**T) / (1.0 - leak)


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
           channels_last: bool) -> torch.Tensor:
    if channels_last and len(shape) == 4:
        return torch.zeros(shape, dtype=dtype, device=device).contiguous(
            memory_format=torch.channels_last)
    return torch.zeros(shape, dtype=dtype, device=device)


def _neuron_step_inplace(v: torch.Tensor, current: torch.Tensor, n: Neuron,
                         spike_dtype: torch.dtype | None = None) -> torch.Tensor:
    """One update of membrane ``v`` (in place) with input ``current``; returns the spikes.

    The same floating-point operations, in the same order, as the graph-keeping step of
    :func:`simulate_circuit`: ``v*leak + I``, spike where ``v >= V_th``, then ``v - V_th*s``
    (exact product: ``s`` is 0 or 1) or ``V_reset`` where it spiked.
    """
    if n.leak != 1.0:
        v.mul_(n.leak)
    v.add_(current)
    s = torch.ge(v, n.v_th, out=torch.empty_like(v, dtype=spike_dtype))
    if n.reset == "subtract":
        v.sub_(s, alpha=n.v_th)
    else:
        v.masked_fill_(s.bool(), n.v_reset)
    return s


def simulate_circuit(circuit: Circuit, T: int, *, batch: int, timing: str = "ide",
                     spike_input: torch.Tensor | None = None,
                     record_trains: bool = False,
                     dtype: torch.dtype | None = None,
                     device: torch.device | None = None,
                     spike_fn: SpikeFn | None = None,
                     reset_grad: bool = True,
                     window_start: int | None = None,
                     spike_dtype: torch.dtype | None = None,
                     fused: bool = False, channels_last: bool = False,
                     with_counts: bool = True) -> SimResult:
    """Run the spiking dynamics for T steps; return (leak-weighted) rates and spike counts.

    Without ``spike_fn`` the spikes are a plain comparison (no graph: call it under
    ``torch.no_grad()`` with detached weights). With ``spike_fn`` every step stays in the autograd
    graph (BPTT); ``reset_grad=False`` detaches the spike where it resets the membrane, dropping
    the reset's temporal term from the gradient (the values are identical either way).
    ``window_start`` also returns the rates over steps ``window_start .. T-1``.
    ``spike_dtype`` (no-graph runs only, e.g. ``torch.bfloat16``): spikes are kept in that type
    (exact: they are 0 or 1) and the spike-carrying projections multiply in it, weights rounded
    to it; the products come back in the state's type, where membranes and rates stay.
    ``fused`` (no-graph runs only): each population's update is one compiled kernel
    (:mod:`fsnn.platform.fused`). ``channels_last``: the state of convolutional populations
    (membranes, spikes, rates) is laid out channels-last (NHWC), the layout tensor-core
    convolutions read without transposing; the rates come back in it. ``with_counts=False``
    skips the spike counts (``counts`` comes back empty): LIF populations then keep no count
    tensor and update one fewer per step — for callers that need only the rates.
    """
    if T <= 0:
        raise SpecError(f"T: must be a positive integer (got {T})")
    if window_start is not None and not 0 <= window_start < T:
        raise SpecError(f"window_start: must be in [0, T) (got {window_start} with T={T})")
    ref = next(iter(circuit.const.values()), None)
    if ref is None and circuit.projections:
        ref = circuit.projections[0].weight
    dtype = dtype or (ref.dtype if ref is not None else torch.get_default_dtype())
    device = device or (ref.device if ref is not None else torch.device("cpu"))
    if spike_dtype is not None:
        if spike_fn is not None:
            raise SpecError("spike_dtype: only for simulations without a graph (no spike_fn)")
        cast = [replace(q, weight=q.weight.to(spike_dtype)) for q in circuit.projections]
        circuit = Circuit(circuit.populations, cast, circuit.const, circuit.masks)
    delays = _delays(circuit, timing)
    incoming = {p.name: circuit.incoming(p.name) for p in circuit.populations}
    # history[name][k] are the spikes of `name` k steps before the current one (k=0: this step)
    depth: dict[str, int] = {}
    for q in circuit.projections:
        depth[q.source] = max(depth.get(q.source, 0), delays[q.name])
    no_current = torch.zeros((), dtype=dtype, device=device)  # for a population without input
    history: dict[str, list[torch.Tensor]] = {}
    acc = {p.name: _zeros((batch, *p.shape), dtype, device, channels_last)
           for p in circuit.populations}
    u = {p.name: torch.full_like(acc[p.name], p.neuron.v_init) for p in circuit.populations}
    inplace = spike_fn is None  # no graph: update state tensors in place (fewer kernels)
    # in place, an IF population's counts are its rate sums (copied after the loop)
    counts = {p.name: torch.zeros_like(acc[p.name]) for p in circuit.populations
              if with_counts and (p.neuron.leak != 1.0 or not inplace)}
    trains: dict[str, list[torch.Tensor]] = {p.name: [] for p in circuit.populations}
    input_counts = None
    if spike_input is not None:
        if spike_input.shape[0] < T:
            raise SpecError(f"input: spike trains have {spike_input.shape[0]} steps, T is {T}")
        input_counts = spike_input[:T].sum(0)
    # where in a source's history (newest first) the spikes of d steps ago are: the list already
    # holds this step's spikes only if the source updates before the target (list order)
    order = {p.name: i for i, p in enumerate(circuit.populations)}
    offsets = {q.name: delays[q.name] - 1 if q.source != INPUT
               and order[q.source] >= order[q.target] else delays[q.name]
               for q in circuit.projections}
    start_acc: dict[str, torch.Tensor] = {}
    if fused and not inplace:
        raise SpecError("fused: only for simulations without a graph (no spike_fn)")
    for t in range(T):
        if t == window_start:
            start_acc = {k: v.clone() for k, v in acc.items()}
        if spike_input is not None:
            history.setdefault(INPUT, []).insert(0, spike_input[t].to(spike_dtype or dtype))
        for p in circuit.populations:
            const = circuit.const.get(p.name)
            outs: list[torch.Tensor] = []
            masks: list[torch.Tensor | None] = []
            for q in incoming[p.name]:
                d = delays[q.name]
                if d == 0:
                    src = history[q.source][0]
                elif t - d >= 0:
                    src = history[q.source][offsets[q.name]]
                else:
                    continue
                out = apply_projection(q, src, p.shape)
                outs.append(out if spike_dtype is None else out.to(dtype))
                masks.append(circuit.masks.get(q.name))
            n = p.neuron
            if fused:
                s = fused_neuron_step(u[p.name], acc[p.name], counts.get(p.name), outs, masks,
                                      no_current if const is None else const, n, spike_dtype)
            elif inplace:
                total = const  # the same sums as below (a + b == b + a), into the fresh outputs
                for out, mask in zip(outs, masks, strict=True):
                    out = out if mask is None else out.mul_(mask)
                    total = out if total is None else out.add_(total)
                s = _neuron_step_inplace(u[p.name], no_current if total is None else total,
                                         n, spike_dtype)
            else:
                assert spike_fn is not None
                total = const
                for out, mask in zip(outs, masks, strict=True):
                    out = out if mask is None else out * mask
                    total = out if total is None else total + out
                if total is None:
                    total = no_current
                v = u[p.name] * n.leak + total if n.leak != 1.0 else u[p.name] + total
                s = spike_fn(v - n.v_th, n.v_th)
                r = s if reset_grad else s.detach()
                # the same values as the in-place step (s is exactly 0.0 or 1.0)
                u[p.name] = v - n.v_th * r if n.reset == "subtract" \
                    else v * (1.0 - r) + n.v_reset * r
            hist = history.setdefault(p.name, [])
            hist.insert(0, s)
            del hist[depth.get(p.name, 0) + 1:]
            if not inplace:
                acc[p.name] = acc[p.name] * n.leak + s if n.leak != 1.0 else acc[p.name] + s
                if with_counts:
                    counts[p.name] = counts[p.name] + s
            elif not fused:  # (the fused step has updated them already)
                if n.leak != 1.0:
                    acc[p.name].mul_(n.leak)
                acc[p.name].add_(s)
                if p.name in counts:
                    counts[p.name].add_(s)
            if record_trains:
                trains[p.name].append(s)
        if INPUT in history:
            del history[INPUT][depth.get(INPUT, 0) + 1:]
    if inplace and with_counts:
        for p in circuit.populations:
            if p.neuron.leak == 1.0:
                counts[p.name] = acc[p.name].clone()
    rates = {p.name: acc[p.name] / rate_normaliser(p.neuron.leak, T) for p in circuit.populations}
    window = None
    if window_start is not None:
        window = {}
        for p in circuit.populations:
            lam, n_steps = p.neuron.leak, T - window_start
            late = acc[p.name] - start_acc[p.name] * lam**n_steps if window_start else acc[p.name]
            window[p.name] = late / rate_normaliser(lam, n_steps)
    return SimResult(rates=rates, counts=counts,
                     trains={k: torch.stack(v) for k, v in trains.items()} if record_trains
                     else None,
                     input_counts=input_counts, window_rates=window)



def simulate(net: Network, x: torch.Tensor, *, T: int | None = None, timing: str = "ide",
             record_trains: bool = False) -> SimResult:
    """Simulate a spec on a batch ``x`` (see :func:`circuit_from_network` for its shape)."""
    circuit, spikes = circuit_from_network(net, x)
    batch = x.shape[0] if spikes is None else x.shape[1]
    return simulate_circuit(circuit, T or net.T, batch=batch, timing=timing, spike_input=spikes,
                            record_trains=record_trains, dtype=x.dtype, device=x.device)


def readout(net: Network, rates: dict[str, torch.Tensor]) -> torch.Tensor:
    r = rates[net.readout.source].flatten(1)
    return F.linear(r, net.readout.weight, net.readout.bias)


def population_input(circuit: Circuit, p: Population, rates: Mapping[str, torch.Tensor],
                     input_rate: torch.Tensor | None = None) -> torch.Tensor:
    """The mean input current W a + c of population ``p`` given its sources' rates."""
    total = circuit.const.get(p.name)
    for q in circuit.incoming(p.name):
        src = input_rate if q.source == INPUT else rates[q.source]
        if src is None:
            raise SpecError(f"projections.{q.name}: needs the input's rate")
        part = apply_projection(q, src, p.shape)
        mask = circuit.masks.get(q.name)
        part = part if mask is None else part * mask
        total = part if total is None else total + part
    if total is None:
        total = torch.zeros_like(rates[p.name])
    return total.expand_as(rates[p.name])


class _UnitRate(torch.autograd.Function):
    """``clamp(x / v_th, 0, 1)`` keeping a 1-byte mask for the backward where autograd's clamp
    keeps its 4-byte input (the IDE maps hold one per population: 57 MiB of AlexNet-F's 76 MiB
    state at batch 128, twice during the adjoint solve). Values and gradients are the same bit
    for bit: clamp's gradient passes where ``0 <= x / v_th <= 1``, then divides by ``v_th``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, v_th: float) -> torch.Tensor:  # type: ignore[override]
        y = x / v_th
        ctx.save_for_backward((y >= 0.0) & (y <= 1.0))
        ctx.v_th = v_th
        return y.clamp_(0.0, 1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (inside,) = ctx.saved_tensors
        return torch.where(inside, grad, grad.new_zeros(())) / ctx.v_th, None


def unit_rate(x: torch.Tensor, v_th: float) -> torch.Tensor:
    """``clamp(x / v_th, 0, 1)``, the rate a constant current ``x`` gives at equilibrium."""
    return _UnitRate.apply(x, v_th) if torch.is_grad_enabled() and x.requires_grad \
        else torch.clamp(x / v_th, 0.0, 1.0)


def equilibrium_map(circuit: Circuit, rates: dict[str, torch.Tensor],
                    input_rate: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One application of a -> clamp((W a + c) / V_th, 0, 1) for every population."""
    return {p.name: unit_rate(population_input(circuit, p, rates, input_rate), p.neuron.v_th)
            for p in circuit.populations}
