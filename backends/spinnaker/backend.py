"""``spinnaker``: a spec on SpiNNaker through PyNN (``pyNN.spiNNaker``, sPyNNaker 1!7.4.1).

How the spec maps (neurons, fixed point, delays, currents): :mod:`fsnn.backends.spinnaker.plan`.
Which machine and which cfg: :mod:`fsnn.backends.spinnaker.cfg`. Capacity:
:mod:`fsnn.backends.spinnaker.capacity`. What the board will compute, emulated in torch:
:mod:`fsnn.backends.spinnaker.emulation` (backend ``spinnaker-emulated``).

* **Synapses**: every spiking projection becomes two ``FromListConnector`` projections (its
  positive weights onto the ``excitatory`` receptor, the magnitudes of its negative weights onto
  ``inhibitory``), the lists expanded by :func:`fsnn.backends.nest_connect.expand` and sorted by
  (source, target): sPyNNaker 1!7.4.1's ``FromListConnector`` sizes its rows by splitting the
  list at boundaries found in a *sorted copy* (``__numpy_group``), so an unsorted list gets
  wrong row lengths (F64C5 failed with "839 synapses in a row"). sPyNNaker's
  ``ConvolutionConnector`` is not used: its binaries exist only for ``IF_curr_exp`` (no
  delta-synapse model), it connects one 2-D channel to one 2-D channel (a C_in x C_out conv
  needs C_in*C_out connectors and one population per channel), it applies the kernel flipped
  (the C loop adds ``kernel[r + k//2]`` to post ``centre + r``: a true convolution, torch's
  layers correlate), and with stride > 1 each source reaches a full ``k x k`` window around
  ``floor((x - k//2 + p) / s)``, which is not torch's strided convolution.
* **Constant currents** (biases and the analog input through the input projections):
  ``i_offset`` per neuron, set before each sample. A sample is one ``sim.run(T)``, preceded by
  ``sim.reset()`` (sPyNNaker restores the initial state and reloads only neuron parameters).
* **Spike input**: a ``SpikeSourceArray``; a spike of input step t' is emitted at t' ms.
* **Virtual board** (the default here): ``build`` maps the network with sPyNNaker's own
  placer on a virtual machine of the configured size and reports the placements; sPyNNaker's
  data generation, which only matters for loading a board (and takes minutes in Python for
  F64C5's 17 M synapses), is skipped. ``run`` refuses: a virtual board simulates nothing.
* **Board**: the host (or spalloc server) is probed first (seconds); the analytic capacity check
  runs before sPyNNaker is set up; the energy report is on, parsed into ``energy/spinnaker_*_j``.

One sPyNNaker simulation per process: building a second backend ends the first one's.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from fsnn.backends.base import BackendError, BatchResult
from fsnn.backends.connections import expand
from fsnn.backends.spinnaker.capacity import (
    SOURCE_NEURONS_PER_CORE,
    CapacityReport,
    PopulationLoad,
    analytic,
)
from fsnn.backends.spinnaker.cfg import Machine, Session, probe, select_machine
from fsnn.backends.spinnaker.emulation import check_spike_input
from fsnn.backends.spinnaker.plan import DEFAULT_IF_LEAK, Plan, plan_network, spiking
from fsnn.platform.counting import synaptic_events
from fsnn.platform.engine import circuit_from_network, rate_normaliser, readout
from fsnn.platform.spec import INPUT, Network

INSTALL = "pip install 'fsnn[spinnaker]'"
log = logging.getLogger("fsnn.spinnaker")
VIRTUAL_RUN = "virtual board: spikes are not simulated; use spinnaker-emulated"
_OWNER: list[SpinnakerBackend] = []


def load_simulator() -> ModuleType:
    try:
        import pyNN.spiNNaker as sim
    except ImportError as exc:
        raise BackendError(f"the SpiNNaker backend needs sPyNNaker ({exc}); install it with: "
                           f"{INSTALL}") from exc
    return sim


class SpinnakerBackend:
    """Runs a spec on SpiNNaker (or maps it on a virtual board); see the module docstring."""

    name = "spinnaker"

    def __init__(self, *, host: str | None = None, spalloc: str | None = None,
                 virtual: bool | None = None, version: int | None = None,
                 width: int | None = None, height: int | None = None,
                 energy_report: bool | None = None, if_model: str = "IF_trunc_delta",
                 if_leak: float = DEFAULT_IF_LEAK, probe_timeout: float = 3.0,
                 virtual_precheck: bool = False, workdir: str | None = None) -> None:
        self.machine: Machine = select_machine(host=host, spalloc=spalloc, virtual=virtual,
                                               version=version, width=width, height=height,
                                               energy_report=energy_report)
        self.if_model, self.if_leak = if_model, if_leak
        self.probe_timeout = probe_timeout
        self.virtual_precheck = virtual_precheck
        self.workdir = workdir
        self.capacity: CapacityReport | None = None
        self.shifts: dict[str, tuple[int, int]] = {}
        self.net: Network | None = None
        self.plan: Plan | None = None
        self._session: Session | None = None
        self._sim: ModuleType | None = None
        self._pops: dict[str, Any] = {}
        self._reports_seen: set[Path] = set()
        self._ran = False

    # -- Backend protocol ----------------------------------------------------------------------

    def check(self, net: Network) -> None:
        """Refuse what sPyNNaker cannot express or what does not fit (analytic); no sPyNNaker."""
        plan_network(net, if_model=self.if_model, if_leak=self.if_leak)
        analytic(net, self.machine).require_fit()

    def build(self, net: Network) -> None:
        net = net.to(torch.float64)
        self.plan = plan_network(net, if_model=self.if_model, if_leak=self.if_leak)
        probe(self.machine, self.probe_timeout)
        report = analytic(net, self.machine)
        log.info("%s", report.table())
        report.require_fit()  # before sPyNNaker: a clear message with the numbers
        self.capacity = report
        if self.virtual_precheck and not self.machine.virtual:
            self.capacity = map_on_virtual(net, self.machine, self.if_model, self.if_leak)
        sim = load_simulator()
        self.close()
        for other in _OWNER:
            other.close()
        _OWNER[:] = [self]
        self.net, self._sim = net, sim
        self._session = Session(self.machine, self.workdir)
        with self._session.active():
            sim.setup(timestep=1.0, min_delay=1.0)
            per_core = {p.name: p.neurons_per_core for p in report.populations}
            self._pops = _populations(sim, net, self.plan, per_core)
            _projections(sim, net, self._pops)
            if self.machine.virtual:
                self.capacity = self._map_only(report)
                log.info("%s", self.capacity.table())

    def probe(self) -> None:
        """Raise BackendError unless sPyNNaker imports and the board (or spalloc) answers; a
        virtual board maps networks but cannot run them, so it fails here too."""
        if self.machine.virtual:
            raise BackendError(f"no SpiNNaker machine is named, and a virtual board cannot run "
                               f"a network ({VIRTUAL_RUN}); set the host (backend option host, "
                               f"or FSNN_SPINNAKER_HOST / FSNN_SPINNAKER_SPALLOC)")
        load_simulator()
        probe(self.machine, self.probe_timeout)

    def update(self, net: Network) -> bool:
        """Builds anew: sPyNNaker loads weights with the application and cannot change them
        in place (its ``Projection.set`` raises NotImplementedError in 1!7.4.1)."""
        self.build(net)
        return False

    def run(self, x: torch.Tensor) -> BatchResult:
        if self.net is None or self._sim is None or self._session is None:
            raise BackendError("build() a spec before run()")
        if self.machine.virtual:
            raise BackendError(VIRTUAL_RUN)
        net, sim = self.net, self._sim
        start = time.perf_counter()
        x = x.detach().to("cpu", torch.float64)
        spikes = net.input.kind == "spikes"
        if spikes:
            x = check_spike_input(x, net.T)
        batch = int(x.shape[0])
        circuit, _ = circuit_from_network(net, x.transpose(0, 1) if spikes else x)
        const = {p.name: circuit.const[p.name].expand(batch, *p.shape).reshape(batch, -1)
                 .numpy() for p in net.populations if p.name in circuit.const}
        counts = {p.name: torch.zeros(batch, p.size, dtype=torch.float64)
                  for p in net.populations}
        rates = {k: v.clone() for k, v in counts.items()}
        energy: dict[str, float] = {}
        with self._session.active():
            for b in range(batch):
                if self._ran:
                    sim.reset()
                for name, c in const.items():
                    self._pops[name].set(i_offset=c[b])
                if spikes:
                    self._pops[INPUT].set(spike_times=_spike_times(x[b].flatten(1).numpy()))
                sim.run(float(net.T))
                self._ran = True
                for p in net.populations:
                    data = np.asarray(self._pops[p.name].spinnaker_get_data("spikes"))
                    counts[p.name][b], rates[p.name][b] = _tally(data, p.size, net.T,
                                                                 p.neuron.leak)
                for k, v in parse_energy(self._new_reports()).items():
                    energy[k] = energy.get(k, 0.0) + v
        counts = {p.name: counts[p.name].view(batch, *p.shape) for p in net.populations}
        rates = {p.name: rates[p.name].view(batch, *p.shape) for p in net.populations}
        return BatchResult(counts=counts, rates=rates, logits=readout(net, rates),
                           synaptic_events=synaptic_events(net, counts,
                                                           x.sum(1) if spikes else None),
                           wall_time=time.perf_counter() - start, energy=energy)

    def close(self) -> None:
        if self._sim is not None and self._session is not None:
            # suppress: sPyNNaker may have ended itself after an error
            with self._session.active(), contextlib.suppress(Exception):
                self._sim.end()
            # sPyNNaker's exit hooks write into the report directory, removed just below: its
            # "errored" marker, and its log store (the global provenance database)
            from spinn_utilities.data.utils_data_writer import UtilsDataWriter
            from spinn_utilities.log import FormatAdapter

            atexit.unregister(UtilsDataWriter.write_errored_file)
            FormatAdapter.set_log_store(None)
        if self._session is not None:
            self._session.close()
        self._sim, self._session, self._pops, self.net = None, None, {}, None
        self._ran, self._reports_seen = False, set()
        if _OWNER and _OWNER[0] is self:
            _OWNER.clear()

    # -- mapping --------------------------------------------------------------------------------

    def _map_only(self, estimate: CapacityReport) -> CapacityReport:
        """sPyNNaker's mapping (partition, place, route) without data generation or loading."""
        from unittest import mock

        from spynnaker.pyNN.spinnaker import SpiNNaker

        assert self._sim is not None and self.net is not None and self.plan is not None
        try:
            with mock.patch.object(SpiNNaker, "_do_load", lambda _self: None):
                self._sim.run(float(self.net.T))
        except Exception as exc:
            raise BackendError(f"sPyNNaker could not map the network on {self.machine.target}: "
                               f"{type(exc).__name__}: {exc}\n{estimate.table()}") from None
        self._ran = True
        report, self.shifts = placements_report(self.net, self.machine, self._pops, estimate)
        for name, shift in self.shifts.items():
            if shift != self.plan.scales[name].shift:
                raise BackendError(f"population {name!r}: sPyNNaker chose ring-buffer shifts "
                                   f"{shift}, fsnn's plan {self.plan.scales[name].shift}")
        report.require_fit()
        return report

    def _new_reports(self) -> list[Path]:
        assert self._session is not None
        new = [p for p in self._session.reports("energy_report_*.rpt")
               if p not in self._reports_seen]
        self._reports_seen.update(new)
        return new


def map_on_virtual(net: Network, m: Machine, if_model: str, if_leak: float) -> CapacityReport:
    """sPyNNaker's mapping of ``net`` on a virtual machine the size of ``m``."""
    virtual = SpinnakerBackend(virtual=True, version=m.version, energy_report=m.energy,
                               if_model=if_model, if_leak=if_leak)
    try:
        virtual.build(net)
        assert virtual.capacity is not None
        return virtual.capacity
    finally:
        virtual.close()


# -- building blocks -------------------------------------------------------------------------


def _populations(sim: ModuleType, net: Network, plan: Plan,
                 per_core: dict[str, int]) -> dict[str, Any]:
    from spynnaker.pyNN.extra_models import IFTruncDelta

    models = {"IF_curr_delta": sim.IF_curr_delta, "IF_trunc_delta": IFTruncDelta}
    pops: dict[str, Any] = {}
    for p in net.populations:
        n = plan.neurons[p.name]
        extra = {"neurons_per_core": per_core[p.name], "n_synapse_cores": 0,
                 "max_expected_summed_weight": list(plan.scales[p.name].max_weight)}
        pop = sim.Population(p.size, models[n.model](**n.params), label=p.name,
                             initial_values={"v": n.v_init}, additional_parameters=extra)
        pop.record("spikes")
        pops[p.name] = pop
    if net.input.kind == "spikes":
        size = math.prod(net.input.shape)
        # spike_times=[] (not [[]] * size: sPyNNaker's density check fails on empty lists)
        pops[INPUT] = sim.Population(size, sim.SpikeSourceArray(spike_times=[]),
                                     label=INPUT, additional_parameters={
                                         "neurons_per_core": SOURCE_NEURONS_PER_CORE})
    return pops


def synapse_lists(net: Network) -> list[tuple[str, str, str, str, np.ndarray, int]]:
    """(projection, source, target, receptor, [pre, post, |w|, delay] rows, delay) per sPyNNaker
    projection, rows sorted by (pre, post)."""
    out = []
    for q in spiking(net):
        chunks = list(expand(q, net.shape_of(q.source), net.population(q.target).shape))
        pre = np.concatenate([c.pre for c in chunks]) if chunks else np.zeros(0, np.int64)
        post = np.concatenate([c.post for c in chunks]) if chunks else np.zeros(0, np.int64)
        w = np.concatenate([c.weight for c in chunks]) if chunks else np.zeros(0)
        for receptor, mask in (("excitatory", w > 0), ("inhibitory", w < 0)):
            if not mask.any():
                continue
            order = np.lexsort((post[mask], pre[mask]))
            rows = np.stack([pre[mask][order], post[mask][order], np.abs(w[mask][order]),
                             np.full(order.size, float(q.delay))], axis=1)
            out.append((q.name, q.source, q.target, receptor, rows, q.delay))
    return out


def _projections(sim: ModuleType, net: Network, pops: dict[str, Any]) -> None:
    for name, src, tgt, receptor, rows, _ in synapse_lists(net):
        sim.Projection(pops[src], pops[tgt], sim.FromListConnector(rows), sim.StaticSynapse(),
                       receptor_type=receptor, label=f"{name}-{receptor[:3]}")


def placements_report(net: Network, m: Machine, pops: dict[str, Any],
                      estimate: CapacityReport
                      ) -> tuple[CapacityReport, dict[str, tuple[int, int]]]:
    """The capacity report from sPyNNaker's placements, and each population's ring-buffer
    shifts as sPyNNaker computed them."""
    from spynnaker.pyNN.data import SpynnakerDataView

    machine = SpynnakerDataView.get_machine()
    by_label = {pop._vertex: name for name, pop in pops.items()}
    cores: dict[str, int] = {name: 0 for name in pops}
    sdram: dict[str, int] = {name: 0 for name in pops}
    app_chips: set[tuple[int, int]] = set()
    system: dict[tuple[int, int], int] = {}
    steps = net.T
    for pl in SpynnakerDataView.iterate_placemements():
        app = getattr(pl.vertex, "app_vertex", None)
        if app in by_label:
            name = by_label[app]
            cores[name] += 1
            sdram[name] = max(sdram[name], int(pl.vertex.sdram_required.get_total_sdram(steps)))
            app_chips.add((pl.x, pl.y))
        else:
            system[(pl.x, pl.y)] = system.get((pl.x, pl.y), 0) + 1
    planned = {p.name: p for p in estimate.populations}
    loads = [PopulationLoad(name, int(pop.size), planned[name].neurons_per_core, cores[name],
                            planned[name].max_row, sdram[name]) for name, pop in pops.items()]
    placable = sum(c.n_placable_processors for c in machine.chips)
    shifts = {p.name: tuple(int(s) for s in pops[p.name]._vertex.get_ring_buffer_shifts())
              for p in net.populations}
    report = CapacityReport(f"{m.target} as mapped by sPyNNaker", "sPyNNaker mapping", loads,
                            sum(cores.values()), len(app_chips),
                            placable - sum(system.values()), machine.n_chips,
                            sum(system.get(xy, 0) + 1 for xy in app_chips))
    return report, shifts  # type: ignore[return-value]


def _spike_times(x: np.ndarray) -> list[list[float]] | list[float]:
    """Per input neuron: the ms of its spikes (``x`` is [T, neurons] in {0, 1}); ``[]`` for no
    spikes at all (sPyNNaker 1!7.4.1's density check fails on a list of empty lists)."""
    t, i = np.nonzero(x)
    if t.size == 0:
        return []
    order = np.argsort(i, kind="stable")
    t, i = t[order], i[order]
    bounds = np.searchsorted(i, np.arange(x.shape[1] + 1))
    return [t[bounds[j]:bounds[j + 1]].astype(float).tolist() for j in range(x.shape[1])]


def _tally(data: np.ndarray, size: int, T: int, leak: float
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts and leak-weighted rates of one sample from ``[[neuron, ms], ...]``."""
    if data.size == 0:
        z = torch.zeros(size, dtype=torch.float64)
        return z, z.clone()
    ids = data[:, 0].astype(np.int64)
    step = np.rint(data[:, 1]).astype(np.int64)
    keep = (step >= 0) & (step < T)
    ids, step = ids[keep], step[keep]
    c = np.bincount(ids, minlength=size).astype(np.float64)
    acc = c if leak == 1.0 else np.bincount(ids, weights=leak ** (T - 1 - step), minlength=size)
    return torch.from_numpy(c), torch.from_numpy(acc / rate_normaliser(leak, T))


ENERGY_KEYS = {
    "Simulation execution energy": "exec",
    "Simulation execution energy (active chips and cores only)": "exec_active",
    "Simulation execution energy (ignoring frame power)": "exec_boards",
    "Mapping energy": "mapping",
    "Loading energy": "loading",
    "Saving energy": "saving",
    "Other energy": "other",
    "Total energy": "total",
}


def parse_energy(files: list[Path]) -> dict[str, float]:
    """Joules by component from sPyNNaker's energy reports (``EnergyReport`` in
    ``spinn_front_end_common/utilities/report_functions/energy_report.py``: lines
    ``<component> energy: <J> Joules``), summed over the reports given.

    Keys: ``energy/spinnaker_j`` (the reports' "Total energy") and
    ``energy/spinnaker_<component>_j`` for exec, exec_active, exec_boards, mapping, loading,
    saving and other.
    """
    out: dict[str, float] = {}
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            label, sep, rest = line.partition(":")
            key = ENERGY_KEYS.get(label.strip())
            if not sep or key is None or "Joules" not in rest:
                continue
            value = float(rest.split("Joules")[0].strip())
            name = "energy/spinnaker_j" if key == "total" else f"energy/spinnaker_{key}_j"
            out[name] = out.get(name, 0.0) + value
    return out
