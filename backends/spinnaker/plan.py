"""How a spec becomes sPyNNaker neurons and fixed-point synapses (shared by the board backend and
its torch emulation, so both use the same numbers).

Neurons (sPyNNaker 1!7.4.1; C sources in ``SpiNNakerManchester/sPyNNaker``,
``neural_modelling/src/neuron/``):

======================  ======================================================================
spec                    sPyNNaker
======================  ======================================================================
IF (leak 1)             ``IF_trunc_delta`` (``models/neuron_model_if_trunc.h``): ``V += R*I``
                        with ``tau_m = cm = 1`` so ``R = 1.0`` exactly; **V never below
                        v_reset** (the model truncates). Option ``if_model="IF_curr_delta"``:
                        a LIF with leak ``if_leak`` just below 1 instead (no exact IF exists in
                        ``IF_curr_delta``: with ``exp_TC == 1`` its closed form ignores input)
LIF (leak lam)          ``IF_curr_delta`` (``models/neuron_model_lif_impl.h``): closed form
                        ``V = a - exp_TC*(a - V)``, ``a = R*I + V_rest``. ``tau_m = -1/ln lam``
                        and ``cm = tau_m*(1-lam)`` give ``exp_TC = lam`` and ``R = 1/(1-lam)``,
                        so ``V = lam*V + I`` as in the spec
reset                   **to v_reset** in every sPyNNaker model (``neuron_model_has_spiked``);
                        the spec's ``subtract`` rule has no counterpart: the residual
                        ``V - v_th`` is lost at each spike. ``tau_refrac = 0``
threshold               ``V >= v_thresh`` (``threshold_type_static.h``), as the spec
constant current        biases and the analog input through the input projections:
                        ``i_offset`` per neuron (added to ``I`` every step), set per sample
delay d                 ``d`` ms at a 1 ms time step: a spike of step t is added to ring-buffer
                        slot ``t + d`` (``synapses.c``), as the spec's deployment timing
======================  ======================================================================

Fixed point. Membrane, currents and parameters are s16.15 (``REAL``/``accum``; parameters are
encoded with round-half-even, ``spinn_front_end_common/interface/ds/data_type.py``). A
synaptic weight is a 16-bit unsigned word ``rint(|w| * scale)``
(``synapse_dynamics_static.py: get_static_synaptic_data``); positive and negative weights go to
the excitatory and inhibitory receptor (sPyNNaker needs one sign per projection). Each target
population has one scale per receptor, ``2**(15 - shift)``, where ``shift`` is the smallest power
of two above the population's ``max_expected_summed_weight``
(``population_vertex.py: get_ring_buffer_shifts, get_weight_scales``); the ring buffer
(saturating at 65535) sums the words of one step and the neuron reads ``rb << shift`` as s16.15
(``synapses.h: synapses_convert_weight_to_input``). fsnn passes
``max_expected_summed_weight`` itself: the largest sum of one sign's incoming weights over any
neuron, so a ring buffer can never saturate (sPyNNaker's own default, ``w_max * fan_in`` summed
over projections, is looser and so coarser). ``accum * accum`` rounds to nearest
(libgcc ``fixed-bit.c``, ``FIXED_MULHELPER``); ``kdivk``/``expk`` (used once, for ``R`` and
``exp_TC`` of ``IF_curr_delta``) are emulated in double precision and rounded, which may differ
from the board's by one least significant bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fsnn.backends.base import BackendError
from fsnn.platform.engine import apply_projection
from fsnn.platform.spec import INPUT, Network, Population, Projection

ONE = 1 << 15  # 1.0 in s16.15
RB_MAX = 0xFFFF  # a ring-buffer entry saturates here
ACCUM_LIMIT = float(1 << 15)  # |parameter| bound fsnn accepts (s16.15 overflows at 2**16)
IF_MODELS = ("IF_trunc_delta", "IF_curr_delta")
DEFAULT_IF_LEAK = 1.0 - 2.0**-8  # IF through IF_curr_delta: R = 256, |I| < 256 fits s16.15


def to_s1615(x: torch.Tensor | float) -> torch.Tensor:
    """Raw s16.15 integers (int64), rounded half to even like sPyNNaker's encoder."""
    t = torch.as_tensor(x, dtype=torch.float64)
    return torch.round(t * ONE).to(torch.int64)


def accum_mul(a: torch.Tensor, b: torch.Tensor | int) -> torch.Tensor:
    """s16.15 ``a * b`` on raw int64 values, rounded to nearest (ties up), as libgcc does."""
    return torch.div(a * b + (1 << 14), ONE, rounding_mode="floor")


@dataclass(frozen=True)
class NeuronPlan:
    """One population as an sPyNNaker neuron model, in float and in s16.15."""

    population: str
    model: str  # "IF_trunc_delta" | "IF_curr_delta"
    params: dict[str, float]  # PyNN cell parameters (i_offset is set per sample)
    v_init: float
    v_th: float
    v_reset: float
    leak: float  # the board's leak in exact arithmetic (1.0 for IF_trunc_delta)
    floor: bool  # IF_trunc_delta: V is never below v_reset
    th_raw: int
    reset_raw: int
    init_raw: int
    r_raw: int  # R (s16.15) as the board computes it
    exp_raw: int  # exp_TC (s16.15); ONE for IF_trunc_delta (unused)


def plan_neuron(p: Population, if_model: str = "IF_trunc_delta",
                if_leak: float = DEFAULT_IF_LEAK) -> NeuronPlan:
    n = p.neuron
    where = f"population {p.name!r}"
    if n.model not in ("IF", "LIF"):
        raise BackendError(f"{where}: SpiNNaker backend has no mapping for neuron model "
                           f"{n.model!r}; expressible: IF, LIF")
    if if_model not in IF_MODELS:
        raise BackendError(f"if_model must be one of {', '.join(IF_MODELS)} (got {if_model!r})")
    for key in ("v_th", "v_reset", "v_init"):
        if not abs(getattr(n, key)) < ACCUM_LIMIT:
            raise BackendError(f"{where}: |{key}| must be below 2**15 for s16.15 fixed point")
    common = {"v_thresh": n.v_th, "v_reset": n.v_reset, "tau_refrac": 0.0}
    if n.model == "IF" and if_model == "IF_trunc_delta":
        params = {"tau_m": 1.0, "cm": 1.0, **common}
        r_raw = _kdivk(to_s1615(1.0), to_s1615(1.0))
        return NeuronPlan(p.name, "IF_trunc_delta", params, n.v_init, n.v_th, n.v_reset, 1.0,
                          True, int(to_s1615(n.v_th)), int(to_s1615(n.v_reset)),
                          int(to_s1615(n.v_init)), r_raw, ONE)
    leak = n.leak if n.model == "LIF" else if_leak
    if not 0.0 < leak < 1.0:
        raise BackendError(f"{where}: IF_curr_delta needs a leak in (0, 1) (got {leak})")
    tau_m = -1.0 / math.log(leak)
    cm = tau_m * (1.0 - leak)
    if tau_m >= ACCUM_LIMIT or cm < 2.0**-10:
        raise BackendError(f"{where}: leak {leak} needs tau_m = {tau_m:.4g} ms, cm = {cm:.3g} "
                           "nF, outside what s16.15 holds accurately")
    params = {"tau_m": tau_m, "cm": cm, "v_rest": 0.0, **common}
    tau_raw, cm_raw = to_s1615(tau_m), to_s1615(cm)
    r_raw = _kdivk(tau_raw, cm_raw)
    exp_raw = round(math.exp(-_kdivk(to_s1615(1.0), tau_raw) / ONE) * ONE)
    return NeuronPlan(p.name, "IF_curr_delta", params, n.v_init, n.v_th, n.v_reset, leak,
                      False, int(to_s1615(n.v_th)), int(to_s1615(n.v_reset)),
                      int(to_s1615(n.v_init)), r_raw, exp_raw)


def _kdivk(a: torch.Tensor, b: torch.Tensor) -> int:
    """s16.15 division ``a / b`` on raw values (rounded to nearest)."""
    return round(int(a) * ONE / int(b))


def ring_buffer_shift(max_weight: float) -> int:
    """sPyNNaker's left shift for a receptor whose summed input stays below ``max_weight``."""
    if max_weight <= 0:
        return 0
    p = math.ceil(max(0.0, math.log2(max_weight)))
    return p + 1 if 2.0**p <= max_weight else p


@dataclass(frozen=True)
class Scales:
    """A population's weight scaling per receptor (excitatory, inhibitory)."""

    max_weight: tuple[float, float]  # passed to sPyNNaker as max_expected_summed_weight
    shift: tuple[int, int]

    @property
    def scale(self) -> tuple[float, float]:
        return (2.0 ** (15 - self.shift[0]), 2.0 ** (15 - self.shift[1]))


def spiking(net: Network) -> list[Projection]:
    """The projections that carry spikes (the analog input's projections are currents)."""
    return [q for q in net.projections if not (q.source == INPUT and net.input.kind == "analog")]


def signed_part(q: Projection, sign: int) -> Projection:
    """``q`` with only its weights of one sign, as magnitudes (no bias)."""
    w = q.weight.detach().to(torch.float64)
    part = torch.clamp(w * sign, min=0.0)
    return Projection(q.name, q.source, q.target, q.kind, part, None, q.stride, q.padding,
                      q.output_padding, q.delay, q.feedback)


def summed_weight(q: Projection, net: Network) -> torch.Tensor:
    """Per target neuron: the summed magnitude of ``q``'s incoming weights (``q`` one-signed)."""
    ones = torch.ones(1, *net.shape_of(q.source), dtype=torch.float64)
    return apply_projection(q, ones, net.population(q.target).shape)[0]


def plan_scales(net: Network) -> dict[str, Scales]:
    """Per population: the largest one-step input per receptor (every source spiking once)."""
    out: dict[str, Scales] = {}
    for p in net.populations:
        bounds = []
        for sign in (1, -1):
            total = torch.zeros(p.shape, dtype=torch.float64)
            for q in spiking(net):
                if q.target == p.name:
                    total = total + summed_weight(signed_part(q, sign), net)
            bounds.append(float(total.max()) if total.numel() else 0.0)
        exc, inh = bounds
        if max(exc, inh) >= ACCUM_LIMIT:
            raise BackendError(f"population {p.name!r}: summed input weights reach "
                               f"{max(exc, inh):.4g}, beyond s16.15 (2**15)")
        out[p.name] = Scales((exc, inh), (ring_buffer_shift(exc), ring_buffer_shift(inh)))
    return out


def quantized_weight(q: Projection, scales: Scales, sign: int) -> torch.Tensor:
    """The 16-bit words of ``q``'s weights of one sign (float64 holding integers)."""
    part = signed_part(q, sign).weight
    return torch.round(part * scales.scale[0 if sign > 0 else 1])


@dataclass(frozen=True)
class Plan:
    neurons: dict[str, NeuronPlan]
    scales: dict[str, Scales]


def plan_network(net: Network, *, if_model: str = "IF_trunc_delta",
                 if_leak: float = DEFAULT_IF_LEAK) -> Plan:
    """Check every population and projection; BackendError naming what cannot be expressed."""
    net.validate()
    for q in net.projections:
        if q.delay < 1:
            raise BackendError(f"projection {q.name!r}: delay must be >= 1 step")
    neurons = {p.name: plan_neuron(p, if_model, if_leak) for p in net.populations}
    return Plan(neurons, plan_scales(net))
