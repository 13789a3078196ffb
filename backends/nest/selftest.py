"""A self-test of the NEST semantics the NEST backend relies on, run through the backend itself.

The backend maps the spec's discrete-time neurons onto NEST's native models
(:mod:`fsnn.backends.nest.cells`) and its timing onto NEST's delays, clock neuron and control
pulses (:mod:`fsnn.backends.nest.backend`). Whether NEST's models update in the order the
mapping assumes is a property of the installed NEST, not of fsnn: ``eprop_iaf``'s update order
has differed between public NEST versions (a variant that subtracts the threshold one step later
matched 0 of 200 samples of a trained LIF net). So a version number proves nothing; this module
runs two tiny specs, built in code, through :class:`~fsnn.backends.nest.backend.NestBackend`
(the same build and run code as real networks) and compares every neuron's spike steps with the
torch engine's in deployment timing (the spec's semantics):

==================  ==========================================================================
population          what it checks
==================  ==========================================================================
``if_subtract``     ``eprop_iaf``, IF, reset by subtraction; constant currents (the analog
                    input and biases) through the clock neuron, set per sample
``lif_subtract``    ``eprop_iaf``, LIF (leak 0.9), reset by subtraction (leak after subtract)
``if_to_value``     ``iaf_psc_delta``, IF, reset to ``v_reset = -0.2``, ``v_init = 0.3``
``lif_to_value``    ``iaf_psc_delta``, LIF (leak 0.9), reset to 0.1, ``v_init = -0.25``
``delay_*``         a spike arrives exactly 1 (or 2) steps later, into either model
``input_*``         input spike trains (counts of 2 included) through ``spike_generator``
                    nodes, delays 1 and 2, with a bias through the clock neuron (set once)
==================  ==========================================================================

Both specs run several samples back to back (busy, quiet, busy), so the per-sample reset by
``V_min`` pulses is checked too: every sample must match a fresh network's spikes. The whole
test costs well under a second after NEST is imported (two builds, ~130 steps in all); it
runs once per process (:func:`ensure_selftest`, called by ``NestBackend.probe`` and before a
process's first build) and its outcome, a pass or the error, is kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from fsnn.backends.base import BackendError
from fsnn.backends.nest.cells import NEST_MODELS
from fsnn.backends.nest.simulator import INSTALL, load_simulator
from fsnn.platform.engine import simulate
from fsnn.platform.spec import (
    INPUT,
    InputEncoding,
    Network,
    Neuron,
    Population,
    Projection,
    Readout,
)

PIN = "nest-simulator==3.10.0"  # the NEST the backend is verified with (pyproject's nest extra)
FIX = (f"install {PIN}, the NEST this backend is verified with ({INSTALL}), or report this "
       f"NEST version together with this message")

Trains = dict[str, torch.Tensor]  # per population: spikes per step, [T, B, *shape]
Reference = Callable[[Network, torch.Tensor], Trains]


@dataclass(frozen=True)
class Case:
    """A tiny spec, its input batch (the backend's layout) and what each population checks."""

    name: str
    net: Network
    x: torch.Tensor
    checks: dict[str, str]


@dataclass(frozen=True)
class SelfTest:
    """A passed self-test: the NEST it ran on, its cost, and how many spikes matched."""

    version: str
    seconds: float
    spikes: int


def nest_version(nest: ModuleType) -> str:
    """The NEST version as NEST reports it."""
    version = getattr(nest, "__version__", None)
    if version is None and hasattr(nest, "version"):
        version = nest.version()
    return str(version or "(unknown version)")


def engine_trains(net: Network, x: torch.Tensor) -> Trains:
    """The spec's semantics: the torch engine's spikes per step in deployment timing."""
    spikes = net.input.kind == "spikes"
    result = simulate(net, x.transpose(0, 1) if spikes else x, timing="deploy",
                      record_trains=True)
    assert result.trains is not None
    return result.trains


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def _v(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _single(rows: int, cols: int, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """A ``[rows, cols]`` weight of 1.0 at each (post, pre) pair, 0 elsewhere (no synapse)."""
    w = torch.zeros(rows, cols, dtype=torch.float64)
    for post, pre in pairs:
        w[post, pre] = 1.0
    return w


IF_SUB = Neuron("IF", v_th=1.0)
LIF_SUB = Neuron("LIF", v_th=1.0, leak=0.9)
IF_VALUE = Neuron("IF", v_th=1.0, reset="to_value", v_reset=-0.2, v_init=0.3)
LIF_VALUE = Neuron("LIF", v_th=1.0, leak=0.9, reset="to_value", v_reset=0.1, v_init=-0.25)


def analog_case() -> Case:
    """Constant currents on both models, IF and LIF, and delays 1 and 2 into both models."""
    pops = [Population("if_subtract", (3,), IF_SUB), Population("lif_subtract", (3,), LIF_SUB),
            Population("if_to_value", (3,), IF_VALUE),
            Population("lif_to_value", (3,), LIF_VALUE),
            Population("delay_subtract", (2,), IF_SUB),
            Population("delay_to_value", (2,), Neuron("IF", reset="to_value"))]
    projs = [
        Projection("in_if_subtract", INPUT, "if_subtract", "dense",
                   _t([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]), _v(0.0, 0.05, -0.1)),
        Projection("in_lif_subtract", INPUT, "lif_subtract", "dense",
                   _t([[0.5, 0.0], [0.0, 0.5], [0.3, 0.3]]), _v(0.0, 0.0, 0.02)),
        Projection("in_if_to_value", INPUT, "if_to_value", "dense",
                   _t([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]), _v(0.0, 0.05, -0.1)),
        Projection("in_lif_to_value", INPUT, "lif_to_value", "dense",
                   _t([[0.5, 0.0], [0.0, 0.5], [0.3, 0.3]]), _v(0.0, 0.0, 0.02)),
        Projection("d1_subtract", "if_subtract", "delay_subtract", "dense",
                   _single(2, 3, [(0, 0)]), None, delay=1),
        Projection("d2_subtract", "lif_subtract", "delay_subtract", "dense",
                   _single(2, 3, [(1, 0)]), None, delay=2),
        Projection("d1_to_value", "if_to_value", "delay_to_value", "dense",
                   _single(2, 3, [(0, 0)]), None, delay=1),
        Projection("d2_to_value", "lif_to_value", "delay_to_value", "dense",
                   _single(2, 3, [(1, 0)]), None, delay=2),
    ]
    net = Network(InputEncoding("analog", (2,)), pops, projs,
                  Readout("delay_to_value", torch.zeros(1, 2, dtype=torch.float64)), T=24)
    x = _t([[0.55, 0.3], [0.13, 0.71], [0.55, 0.3]])  # busy, quiet, busy: samples must not leak
    current = "constant current through the clock neuron"
    checks = {"if_subtract": f"IF, reset by subtraction, {current}",
              "lif_subtract": f"LIF (leak 0.9), reset by subtraction, {current}",
              "if_to_value": f"IF, reset to v_reset=-0.2, v_init=0.3, {current}",
              "lif_to_value": f"LIF (leak 0.9), reset to v_reset=0.1, v_init=-0.25, {current}",
              "delay_subtract": "a spike 1 step (neuron 0) or 2 steps (neuron 1) after its source",
              "delay_to_value": "a spike 1 step (neuron 0) or 2 steps (neuron 1) after its source"}
    return Case("analog", net, x, checks)


def spike_case() -> Case:
    """Known input spike trains (and a bias) into both models, delays 1 and 2."""
    pops = [Population("input_subtract", (3,), IF_SUB),
            Population("input_to_value", (3,), Neuron("LIF", leak=0.9, reset="to_value"))]
    diag = _t([[1.0, 0.0, 0.0], [0.0, 0.6, 0.0], [0.0, 0.0, 0.6]])
    projs = [Projection("in_subtract", INPUT, "input_subtract", "dense", diag,
                        _v(0.0, 0.1, 0.0), delay=1),
             Projection("in_to_value", INPUT, "input_to_value", "dense", diag,
                        _v(0.05, 0.0, 0.0), delay=2)]
    T = 16
    net = Network(InputEncoding("spikes", (3,)), pops, projs,
                  Readout("input_to_value", torch.zeros(1, 3, dtype=torch.float64)), T=T)
    g = torch.Generator().manual_seed(7)
    x = (torch.rand(2, T, 3, generator=g, dtype=torch.float64) < 0.35).double()
    x[0, 5, 1] = 2.0  # two spikes in one step
    x[1, 3:6] = 0.0
    how = "input spikes (spike_generator), static synapses, delay"
    checks = {"input_subtract": f"IF, reset by subtraction, {how} 1, a bias via the clock neuron",
              "input_to_value": f"LIF (leak 0.9), reset to 0, {how} 2, a bias via the clock"}
    return Case("spikes", net, x, checks)


def _steps(train: torch.Tensor) -> list[int]:
    """Our step numbers (1..T) of one neuron's spikes (a count k lists the step k times)."""
    counts = train.round().to(torch.int64)
    return [t + 1 for t in range(counts.numel()) for _ in range(int(counts[t]))]


def mismatches(case: Case, got: Trains, want: Trains) -> list[str]:
    """One line per population whose spikes differ: its NEST model, what it checks, and the
    first differing sample and neuron with the expected and the produced spike steps."""
    lines = []
    for p in case.net.populations:
        a, b = got[p.name].flatten(2), want[p.name].flatten(2)
        if a.shape == b.shape and torch.equal(a, b):
            continue
        if a.shape != b.shape:
            lines.append(f"{NEST_MODELS[p.neuron.reset]}, population {p.name!r} "
                         f"({case.checks[p.name]}): spike trains of shape {tuple(a.shape)}, "
                         f"expected {tuple(b.shape)}")
            continue
        sample, neuron = (int(i) for i in torch.nonzero((a != b).any(0))[0])
        lines.append(f"{NEST_MODELS[p.neuron.reset]}, population {p.name!r} "
                     f"({case.checks[p.name]}), {case.name} input sample {sample}, neuron "
                     f"{neuron}: expected spikes at steps {_steps(b[:, sample, neuron])}, "
                     f"got {_steps(a[:, sample, neuron])}")
    return lines


_RUNNING: list[bool] = []  # non-empty while the self-test builds (its builds skip the check)
_OUTCOME: list[SelfTest | BackendError] = []  # this process's self-test: a pass or the error


def run_selftest(backend_class: Callable[..., Any], reference: Reference = engine_trains
                 ) -> SelfTest:
    """Run every case on NEST through ``backend_class`` (the NEST backend, which passes itself:
    this module does not import it) and compare with ``reference`` (default: the spec's
    semantics).

    Raises BackendError naming the NEST version, each disagreeing model with the expected and
    the produced spike steps, and the fix. Replaces this process's NEST network (as every
    build does): call it before building, not between a build and its runs.
    """
    _, nest = load_simulator()
    version = nest_version(nest)
    start = time.perf_counter()
    backend = backend_class(threads=1)
    _RUNNING.append(True)
    lines, spikes = [], 0
    try:
        for case in (analog_case(), spike_case()):
            try:
                backend.build(case.net)
                got = backend.spike_trains(case.x)
            except Exception as exc:  # a missing model, a NEST error, a refused parameter
                raise BackendError(f"NEST {version}: the backend's self-test could not run its "
                                   f"{case.name!r} case ({exc}); {FIX}") from exc
            want = reference(case.net, case.x)
            lines += mismatches(case, got, want)
            spikes += int(sum(float(t.sum()) for t in want.values()))
    finally:
        _RUNNING.pop()
        backend.close()
    if lines:
        raise BackendError(f"NEST {version} does not reproduce the spike semantics fsnn's NEST "
                           f"backend relies on (its self-test, fsnn.backends.nest.selftest):\n"
                           + "\n".join(f"  - {line}" for line in lines) + f"\nFix: {FIX}.")
    return SelfTest(version, time.perf_counter() - start, spikes)


def ensure_selftest(backend_class: Callable[..., Any]) -> SelfTest | None:
    """Run the self-test once per process (through ``backend_class``, the NEST backend); raise
    its error again on every later call.

    Returns the pass (None while the self-test itself is building).
    """
    if _RUNNING:
        return None
    load_simulator()  # a missing NEST is not an outcome to keep (it says how to install it)
    if not _OUTCOME:
        try:
            _OUTCOME.append(run_selftest(backend_class))
        except BackendError as exc:
            _OUTCOME.append(exc)
    outcome = _OUTCOME[0]
    if isinstance(outcome, BackendError):
        raise BackendError(str(outcome))
    return outcome
