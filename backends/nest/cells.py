"""How spec neurons become NEST neurons: model, parameters, and what NEST cannot express.

=====================  =======================================================================
spec                   NEST (``pyNN.nest.native_cell_type``)
=====================  =======================================================================
reset ``subtract``     ``eprop_iaf``: NEST 3.10 updates ``v <- lam*v + I``, spikes if
                       ``v >= V_th`` and subtracts ``V_th`` in the same step (our leaked subtract;
                       the model's header text describing a next-step reset is out of date)
reset ``to_value``     ``iaf_psc_delta`` (on-grid), ``V_reset = v_reset`` (NEST needs
                       ``v_reset < v_th``)
every population       ``C_m=1, E_L=0, t_ref=0, I_e=0, V_th=v_th, V_min=-2**64``
leak ``lam``           ``tau_m`` with ``exp(-1/tau_m) == lam`` bit for bit; IF: ``tau_m=1e300``
                       (propagator exactly 1.0; ``inf`` gives NaN)
=====================  =======================================================================

A leak that no double ``tau_m`` reaches exactly (about 1 in 5 doubles below 0.5; every value
tested in [0.5, 1) is reachable) is refused with the nearest exact leak in the message, rather
than run with a silent mismatch. ``V_min = -2**64`` is the floor the between-sample clamp of
:mod:`fsnn.backends.nest.backend` relies on; the reference has no floor.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from fsnn.backends.base import BackendError
from fsnn.platform.spec import INPUT_KINDS, Network, Neuron

NEST_MODELS = {"subtract": "eprop_iaf", "to_value": "iaf_psc_delta"}
IF_TAU_M = 1e300  # exp(-1/1e300) == 1.0 exactly; tau_m=inf gives NaN in NEST
V_FLOOR = 2.0**64  # V_min = -V_FLOOR: where the clamp pulse parks the membrane
MAX_PARAMETER = 2.0**60  # |v_th|, |v_reset|, |v_init| must stay far above the floor


def leak_to_tau(leak: float) -> tuple[float, float]:
    """``(tau_m, exp(-1/tau_m))`` for the double ``tau_m`` whose propagator is closest to ``leak``.

    NEST computes the propagator as ``exp(-h/tau_m)`` with ``h = 1`` ms (bitwise the same as
    ``math.exp``). ``exp(-1/tau)`` is non-decreasing in ``tau``, so a bisection over the bit
    patterns of doubles finds the smallest ``tau`` with ``exp(-1/tau) >= leak``; ``leak`` is
    exactly reachable iff that propagator equals it.
    """
    if leak == 1.0:
        return IF_TAU_M, 1.0

    def prop(bits: int) -> float:
        return math.exp(-1.0 / _from_bits(bits))

    guess = _bits(-1.0 / math.log(leak))
    lo = hi = guess
    step = 1
    while prop(lo) >= leak:
        lo, step = lo - step, step * 2
    step = 1
    while prop(hi) < leak:
        hi, step = hi + step, step * 2
    while hi - lo > 1:  # invariant: prop(lo) < leak <= prop(hi)
        mid = (lo + hi) // 2
        if prop(mid) >= leak:
            hi = mid
        else:
            lo = mid
    best = min((lo, hi), key=lambda b: abs(prop(b) - leak))
    return _from_bits(best), prop(best)


def _bits(x: float) -> int:
    return int(struct.unpack("<q", struct.pack("<d", x))[0])


def _from_bits(b: int) -> float:
    return float(struct.unpack("<d", struct.pack("<q", b))[0])


@dataclass(frozen=True)
class CellPlan:
    """How one population becomes NEST neurons."""

    model: str
    params: dict[str, float]
    leak: float
    v_init: float


def plan_cell(name: str, n: Neuron) -> CellPlan:
    """The NEST model and parameters for population ``name``; BackendError if inexpressible."""
    where = f"population {name!r}"
    if n.reset not in NEST_MODELS:
        raise BackendError(f"{where}: NEST cannot express reset rule {n.reset!r}; expressible: "
                           f"{', '.join(NEST_MODELS)}")
    if n.model not in ("IF", "LIF"):
        raise BackendError(f"{where}: NEST backend has no mapping for neuron model {n.model!r}; "
                           "expressible: IF, LIF")
    values = {"v_th": n.v_th, "v_reset": n.v_reset, "v_init": n.v_init, "leak": n.leak}
    for key, v in values.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v)):
            raise BackendError(f"{where}: {key} must be a finite number (got {v!r})")
    if not 0.0 < n.leak <= 1.0 or (n.model == "IF" and n.leak != 1.0):
        raise BackendError(f"{where}: leak {n.leak!r} is not valid for model {n.model}")
    for key in ("v_th", "v_reset", "v_init"):
        if abs(values[key]) >= MAX_PARAMETER:
            raise BackendError(f"{where}: |{key}| must be below 2**60 (NEST backend's V floor)")
    if n.v_th <= 0:
        raise BackendError(f"{where}: v_th must be > 0 (got {n.v_th})")
    if n.v_init >= n.v_th:
        raise BackendError(f"{where}: v_init {n.v_init} >= v_th {n.v_th}: NEST would fire before "
                           "the first step, the reference does not")
    if n.reset == "to_value" and n.v_reset >= n.v_th:
        raise BackendError(f"{where}: NEST's iaf_psc_delta needs v_reset < v_th "
                           f"(got {n.v_reset} >= {n.v_th})")
    tau, exact = leak_to_tau(n.leak)
    if exact != n.leak:
        raise BackendError(f"{where}: NEST cannot represent leak {n.leak!r} exactly "
                           f"(its propagator is exp(-1/tau_m)); the nearest exact leak is "
                           f"{exact!r}: use that in the spec")
    params = {"C_m": 1.0, "E_L": 0.0, "V_th": float(n.v_th), "t_ref": 0.0, "I_e": 0.0,
              "tau_m": tau, "V_min": -V_FLOOR}
    if n.reset == "to_value":
        params["V_reset"] = float(n.v_reset)
    return CellPlan(NEST_MODELS[n.reset], params, float(n.leak), float(n.v_init))


def plan_network(net: Network) -> dict[str, CellPlan]:
    """Check every population, the delays and the input kind; nothing is built."""
    plans = {p.name: plan_cell(p.name, p.neuron) for p in net.populations}
    for q in net.projections:
        if not isinstance(q.delay, int) or q.delay < 1:
            raise BackendError(f"projection {q.name!r}: delay must be an integer >= 1 step "
                               f"(got {q.delay!r})")
    if net.input.kind not in INPUT_KINDS:
        raise BackendError(f"input: NEST backend has no mapping for input kind "
                           f"{net.input.kind!r}; expressible: {', '.join(INPUT_KINDS)}")
    return plans


def native_cell_type(sim: ModuleType, model: str) -> Any:
    """``native_cell_type`` with two PyNN 0.13 / NEST 3.10 fixes.

    PyNN passes boolean defaults (``refractory_input``, ...) as ``numpy.bool_``, which NEST
    rejects once any parameter is per-neuron: drop them (NEST keeps its defaults). PyNN also
    tries to set an initial value for every recordable (``learning_signal``, ...): keep V_m.
    """
    ct = sim.native_cell_type(model)
    ct.default_parameters = {k: v for k, v in ct.default_parameters.items()
                             if not isinstance(v, (bool, np.bool_))}
    ct.default_initial_values = {"V_m": 0.0}
    return ct
