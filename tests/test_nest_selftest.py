"""The NEST backend's self-test: it passes on the installed NEST, and it refuses wrong semantics.

Wrong semantics are produced two ways, NEST itself never mocked: by comparing real NEST spikes
with a deliberately altered expectation (the spec's semantics with a threshold subtracted one
step later, reset to 0 instead of subtraction, or delays one step longer), and by building the
self-test with a wrong NEST model for reset by subtraction, so that NEST really runs other
dynamics.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch

from fsnn.backends.base import BackendError
from fsnn.backends.nest import selftest as nest_selftest
from fsnn.backends.nest.backend import NestBackend, Timeline
from fsnn.backends.nest.cells import NEST_MODELS
from fsnn.backends.nest.selftest import (
    PIN,
    Trains,
    analog_case,
    engine_trains,
    ensure_selftest,
    run_selftest,
    spike_case,
)
from fsnn.platform.spec import Network, Neuron, Projection

os.environ.setdefault("PYNEST_QUIET", "1")
nest = pytest.importorskip("nest")
pytest.importorskip("pyNN.nest")


@pytest.fixture
def fresh_outcome(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's kept self-test outcome, emptied for one test and restored after it."""
    monkeypatch.setattr(nest_selftest, "_OUTCOME", [])
    yield


def subtract_later(net: Network) -> Network:
    """The spec as a NEST whose reset subtracts ``v_th`` one step later, after the leak
    (``v <- lam*v + I - v_th*s[t-1]`` instead of ``v <- lam*(v - v_th*s[t-1]) + I``): the
    spec plus a delay-1 autapse of weight ``-(1-lam)*v_th`` on every LIF population with reset
    by subtraction (for IF the two orders agree)."""
    extra = [Projection(f"late_{p.name}", p.name, p.name, "dense",
                        torch.eye(p.size, dtype=torch.float64) * -(1 - p.neuron.leak)
                        * p.neuron.v_th, None, feedback=True)
             for p in net.populations if p.neuron.reset == "subtract" and p.neuron.leak != 1.0]
    return replace(net, projections=[*net.projections, *extra])


def reset_to_zero(net: Network) -> Network:
    """The spec with every reset by subtraction replaced by a reset to 0."""
    def swap(n: Neuron) -> Neuron:
        return replace(n, reset="to_value", v_reset=0.0) if n.reset == "subtract" else n

    return replace(net, populations=[replace(p, neuron=swap(p.neuron))
                                     for p in net.populations])


def longer_delays(net: Network) -> Network:
    return replace(net, projections=[replace(q, delay=q.delay + 1) for q in net.projections])


def altered(change: Callable[[Network], Network]) -> Callable[[Network, torch.Tensor], Trains]:
    def reference(net: Network, x: torch.Tensor) -> Trains:
        return engine_trains(change(net), x)

    return reference


def test_selftest_passes_on_the_installed_nest() -> None:
    result = run_selftest(NestBackend)
    assert result.version == nest.__version__
    assert result.spikes > 250  # busy enough that a wrong update order shows


def test_cases_are_busy_and_discriminating() -> None:
    """Every population spikes, and each variant changes the expectation where it should."""
    for case in (analog_case(), spike_case()):
        want = engine_trains(case.net, case.x)
        for p in case.net.populations:
            assert float(want[p.name].sum()) >= 4 * case.x.shape[0], p.name
        analog = case.name == "analog"
        for change, differs in ((subtract_later, {"lif_subtract", "delay_subtract"}),
                                (reset_to_zero, {"if_subtract", "lif_subtract", "delay_subtract",
                                                 "input_subtract"}),
                                (longer_delays, {"delay_subtract", "delay_to_value",
                                                 "input_subtract", "input_to_value"})):
            other = engine_trains(change(case.net), case.x)
            changed = {p.name for p in case.net.populations
                       if not torch.equal(want[p.name], other[p.name])}
            assert changed == {n for n in differs if n in want}, (case.name, change, analog)


def test_probe_runs_it_once_per_process(fresh_outcome: None) -> None:
    first = ensure_selftest(NestBackend)
    backend = NestBackend()
    backend.probe()
    assert first is not None and ensure_selftest(NestBackend) is first
    assert len(nest_selftest._OUTCOME) == 1 and nest_selftest._OUTCOME[0] is first


@pytest.mark.parametrize("change, model, population", [
    (subtract_later, "eprop_iaf", "lif_subtract"),
    (reset_to_zero, "eprop_iaf", "if_subtract"),
    (longer_delays, "iaf_psc_delta", "delay_to_value"),
], ids=["subtract_later", "reset_to_zero", "longer_delays"])
def test_refuses_a_different_semantics(change: Callable[[Network], Network], model: str,
                                       population: str) -> None:
    with pytest.raises(BackendError) as err:
        run_selftest(NestBackend, altered(change))
    msg = str(err.value)
    assert f"NEST {nest.__version__} does not reproduce" in msg
    assert f"{model}, population {population!r}" in msg
    assert "expected spikes at steps [" in msg and ", got [" in msg
    assert PIN in msg and "report this NEST version" in msg
    if change is subtract_later:  # IF: subtracting before or after a leak of 1 is the same
        assert "'if_subtract'" not in msg


def test_refuses_nest_running_other_dynamics(monkeypatch: pytest.MonkeyPatch,
                                             fresh_outcome: None) -> None:
    """Reset by subtraction built on iaf_psc_delta (NEST's reset to V_reset): refused, the
    refusal is kept for the process, and no network is built while it stands."""
    monkeypatch.setitem(NEST_MODELS, "subtract", "iaf_psc_delta")
    with pytest.raises(BackendError, match=r"iaf_psc_delta, population 'if_subtract'") as err:
        NestBackend().probe()
    assert f"NEST {nest.__version__}" in str(err.value)
    backend = NestBackend()
    with pytest.raises(BackendError, match="does not reproduce"):
        backend.build(analog_case().net)
    assert backend._kernel is None
    assert isinstance(nest_selftest._OUTCOME[0], BackendError)


def test_spike_trains_agree_with_run() -> None:
    case = spike_case()
    backend = NestBackend()
    backend.build(case.net)
    trains = backend.spike_trains(case.x)
    counts = backend.run(case.x).counts
    backend.close()
    for name, c in counts.items():
        assert trains[name].shape == (case.net.T, *c.shape)
        assert torch.equal(trains[name].sum(0), c), name


def test_refuses_a_broken_reset_between_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the clamp and restore pulses each sample starts where the last one ended."""
    def no_reset(self: Timeline) -> list[dict[str, np.ndarray]]:
        none = {"spike_times": np.zeros(0)}
        return [none, none, {"spike_times": self.s0 - 1.0}]

    monkeypatch.setattr(Timeline, "control_times", no_reset)
    with pytest.raises(BackendError, match=f"NEST {nest.__version__}.*'analog' case"):
        run_selftest(NestBackend)
