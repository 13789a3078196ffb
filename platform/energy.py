"""Estimated energy of spike-based inference: operation counts x per-operation energies.

Counts come from any engine or backend: synaptic events (spikes x fan-out), neuron updates
(neurons x T) and, for the analog first projection, multiply-accumulates (computed once per
sample: the input current is constant over the T steps). Each hardware model names the source
of its constants; an operation a model has no constant for is left out of that model's sum and
listed in ``omitted`` (never counted as zero energy silently).

Measured energy (GPU counters, RAPL, SpiNNaker reports) lives in ``fsnn.pipelines.energy_meter``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fsnn.platform.counting import projection_fan_out
from fsnn.platform.spec import INPUT, Network

PJ = 1e-12
NJ = 1e-9


@dataclass(frozen=True)
class HardwareModel:
    name: str
    source: str
    synaptic_event_j: float | None = None  # one synaptic operation triggered by a spike (AC)
    neuron_update_j: float | None = None  # one neuron state update per time step
    mac_j: float | None = None  # one multiply-accumulate (analog input current)


HARDWARE: dict[str, HardwareModel] = {
    # M. Horowitz, "Computing's energy problem", ISSCC 2014: 32-bit float add 0.9 pJ,
    # multiply 3.7 pJ in 45 nm CMOS; an accumulate (AC) is an add, a MAC an add plus a multiply.
    "cmos45nm": HardwareModel("cmos45nm", "Horowitz, ISSCC 2014 (45 nm, fp32)",
                              synaptic_event_j=0.9 * PJ, mac_j=4.6 * PJ),
    # M. Davies et al., "Loihi: a neuromorphic manycore processor with on-chip learning",
    # IEEE Micro 38(1), 2018, Table 1: synaptic spike op 23.6 pJ, neuron update (active) 81 pJ.
    "loihi": HardwareModel("loihi", "Davies et al., IEEE Micro 2018, Table 1",
                           synaptic_event_j=23.6 * PJ, neuron_update_j=81 * PJ),
    # E. Stromatias et al., "Power analysis of large-scale, real-time neural networks on
    # SpiNNaker", IJCNN 2013: about 8 nJ per synaptic event (board level, dynamic part).
    "spinnaker": HardwareModel("spinnaker", "Stromatias et al., IJCNN 2013",
                               synaptic_event_j=8 * NJ),
}


@dataclass
class OpCounts:
    """Operations of one inference (per sample, averaged over the evaluated samples)."""

    synaptic_events: float
    neuron_updates: float
    macs: float


@dataclass
class Estimate:
    model: str
    joules: float
    omitted: list[str] = field(default_factory=list)


def input_macs(net: Network) -> float:
    """MACs of the analog input projections (nonzero weights, each used once per sample)."""
    if net.input.kind != "analog":
        return 0.0
    total = 0.0
    for q in net.projections:
        if q.source != INPUT:
            continue
        total += float(projection_fan_out(q, net).sum())
    return total


def op_counts(net: Network, synaptic_events_per_sample: float, T: int | None = None) -> OpCounts:
    neurons = sum(math.prod(p.shape) for p in net.populations)
    return OpCounts(synaptic_events_per_sample, float(neurons * (T or net.T)), input_macs(net))


def estimate(counts: OpCounts, model: str) -> Estimate:
    hw = HARDWARE[model]
    joules, omitted = 0.0, []
    for n, per_op, label in ((counts.synaptic_events, hw.synaptic_event_j, "synaptic_events"),
                             (counts.neuron_updates, hw.neuron_update_j, "neuron_updates"),
                             (counts.macs, hw.mac_j, "macs")):
        if per_op is None:
            if n > 0:
                omitted.append(label)
            continue
        joules += n * per_op
    return Estimate(model, joules, omitted)


def estimates(counts: OpCounts) -> dict[str, Estimate]:
    return {name: estimate(counts, name) for name in HARDWARE}


def estimate_metrics(net: Network, synaptic_events_per_sample: float) -> dict[str, float]:
    """``energy_est/<model>_j`` (per inference) plus the operation counts behind them."""
    counts = op_counts(net, synaptic_events_per_sample)
    out = {"ops/synaptic_events": counts.synaptic_events,
           "ops/neuron_updates": counts.neuron_updates, "ops/input_macs": counts.macs}
    for name, e in estimates(counts).items():
        out[f"energy_est/{name}_j"] = e.joules
    return out


__all__ = ["HARDWARE", "Estimate", "HardwareModel", "OpCounts", "estimate", "estimate_metrics",
           "estimates", "input_macs", "op_counts"]
