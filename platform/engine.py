"""The torch spiking engine: simulates a network for T steps on a batch, on CPU or GPU.

Two timing modes reach the same rate equilibrium:

* ``"ide"`` – the IDE paper's: feed-forward projections act within the step (populations update
  in list order), feedback projections after one step;
* ``"deploy"`` – as PyNN/NEST run it: every projection acts ``delay`` steps after the spike.

Everything is batched tensor code; the only Python loop is over time steps and populations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fsnn.platform.spec import INPUT, TIMINGS, Network, Population, Projection, SpecError


@dataclass
class Circuit:
    """What the engine runs: populations, spike-carrying projections and constant currents.

    ``const`` holds each population's constant input current (biases plus the analog input
    through the first projection), shaped ``[B, *shape]`` or broadcastable to it. ``masks``
    optionally scales a projection's output (fixed dropout masks during training).
    """

    populations: list[Population]
    projections: list[Projection]
    const: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor] = field(default_factory=dict)

    def incoming(self, target: str) -> list[Projection]:
        return [q for q in self.projections if q.target == target]


@dataclass
class SimResult:
    rates: dict[str, torch.Tensor]
    counts: dict[str, torch.Tensor]
    trains: dict[str, torch.Tensor] | None = None
    input_counts: torch.Tensor | None = None


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


def simulate_circuit(circuit: Circuit, T: int, *, batch: int, timing: str = "ide",
                     spike_input: torch.Tensor | None = None,
                     record_trains: bool = False,
                     dtype: torch.dtype | None = None,
                     device: torch.device | None = None) -> SimResult:
    """Run the spiking dynamics for T steps; return (leak-weighted) rates and spike counts."""
    if T <= 0:
        raise SpecError(f"T: must be a positive integer (got {T})")
    delays = _delays(circuit, timing)
    incoming = {p.name: circuit.incoming(p.name) for p in circuit.populations}
    ref = next(iter(circuit.const.values()), None)
    if ref is None and circuit.projections:
        ref = circuit.projections[0].weight
    dtype = dtype or (ref.dtype if ref is not None else torch.get_default_dtype())
    device = device or (ref.device if ref is not None else torch.device("cpu"))
    # history[name][k] are the spikes of `name` k steps before the current one (k=0: this step)
    depth: dict[str, int] = {}
    for q in circuit.projections:
        depth[q.source] = max(depth.get(q.source, 0), delays[q.name])
    zeros = {p.name: torch.zeros(batch, *p.shape, dtype=dtype, device=device)
             for p in circuit.populations}
    history: dict[str, list[torch.Tensor]] = {}
    u = {p.name: torch.full_like(zeros[p.name], p.neuron.v_init) for p in circuit.populations}
    acc = {p.name: torch.zeros_like(zeros[p.name]) for p in circuit.populations}
    counts = {p.name: torch.zeros_like(zeros[p.name]) for p in circuit.populations}
    trains: dict[str, list[torch.Tensor]] = {p.name: [] for p in circuit.populations}
    input_counts = None
    if spike_input is not None:
        if spike_input.shape[0] < T:
            raise SpecError(f"input: spike trains have {spike_input.shape[0]} steps, T is {T}")
        input_counts = spike_input[:T].sum(0)
    for t in range(T):
        if spike_input is not None:
            history.setdefault(INPUT, []).insert(0, spike_input[t].to(dtype))
        for p in circuit.populations:
            current = circuit.const.get(p.name)
            total = zeros[p.name] if current is None else zeros[p.name] + current
            for q in incoming[p.name]:
                d = delays[q.name]
                if d == 0:
                    src = history[q.source][0]
                elif t - d >= 0:
                    # the source's list already holds this step's spikes only if it updated first
                    offset = d - 1 if _not_yet_updated(q.source, p.name, circuit) else d
                    src = history[q.source][offset]
                else:
                    continue
                out = apply_projection(q, src, p.shape)
                mask = circuit.masks.get(q.name)
                total = total + (out if mask is None else out * mask)
            n = p.neuron
            v = u[p.name] * n.leak + total if n.leak != 1.0 else u[p.name] + total
            s = (v >= n.v_th).to(dtype)
            if n.reset == "subtract":
                v = v - n.v_th * s
            else:
                v = torch.where(s.bool(), torch.full_like(v, n.v_reset), v)
            u[p.name] = v
            hist = history.setdefault(p.name, [])
            hist.insert(0, s)
            del hist[depth.get(p.name, 0) + 1:]
            acc[p.name] = acc[p.name] * n.leak + s if n.leak != 1.0 else acc[p.name] + s
            counts[p.name] = counts[p.name] + s
            if record_trains:
                trains[p.name].append(s)
        if INPUT in history:
            del history[INPUT][depth.get(INPUT, 0) + 1:]
    rates = {p.name: acc[p.name] / rate_normaliser(p.neuron.leak, T) for p in circuit.populations}
    return SimResult(rates=rates, counts=counts,
                     trains={k: torch.stack(v) for k, v in trains.items()} if record_trains
                     else None,
                     input_counts=input_counts)


def _not_yet_updated(source: str, target: str, circuit: Circuit) -> bool:
    """True when ``source`` updates after ``target`` within a step (list order)."""
    if source == INPUT:
        return False
    names = [p.name for p in circuit.populations]
    return names.index(source) >= names.index(target)


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


def equilibrium_map(circuit: Circuit, rates: dict[str, torch.Tensor],
                    input_rate: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One application of a -> clamp((W a + c) / V_th, 0, 1) for every population."""
    out: dict[str, torch.Tensor] = {}
    for p in circuit.populations:
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
        out[p.name] = torch.clamp(total / p.neuron.v_th, 0.0, 1.0).expand_as(rates[p.name])
    return out
