"""The NEST engine: runs a spec spike for spike like the torch engine's deployment timing.

Built through PyNN (``pyNN.nest``), in the NEST kernel PyNN sets up: ``sim.setup``, populations
of ``native_cell_type`` neurons (:mod:`fsnn.backends.nest.cells`), ``sim.run``. Some parts go to
NEST directly, still inside that kernel, each for a measured reason:

* **synapses** are created with ``nest.Connect`` on index arrays, one call per kernel offset
  (:mod:`fsnn.backends.connections`): PyNN's ``FromListConnector`` takes ~1.3 s for 160 k
  synapses (70x slower), and PyNN's ``StaticSynapse`` rescales weights (x1000 into native cells,
  and x1e-3 back into standard ones, which changes 14% of float64 weights by an ulp);
* **spike sources** are plain ``spike_generator`` nodes (PyNN's ``SpikeSourceArray`` adds a
  parrot neuron to each), their times and the clock weights are set on NEST nodes and synapses;
* after the build, **runs** call ``nest.Simulate``: PyNN's ``run`` adds five kernel-status
  queries per call, 36% of F400's time when a batch runs one sample per call;
* **spikes** are read from one ``spike_recorder`` (4x faster than ``get_data`` and neo).

How the semantics map (the neuron models are in :mod:`fsnn.backends.nest.cells`):

======================  =====================================================================
spec                    NEST
======================  =====================================================================
projection, delay d     one ``static_synapse`` per nonzero weight, delay ``d`` ms at a 1 ms
                        resolution; delta synapses add the weight to ``V`` unscaled
constant current c      biases plus the analog input through the input projections, computed
                        by the torch engine's :func:`circuit_from_network`: a "clock" parrot
                        spikes once per step into every neuron, over a synapse of weight ``c``
                        set per sample. ``I_e`` and ``DCSource`` are not exact: NEST scales them
                        by ``(1-lam)*tau``, which is 0 for IF
spike input             a generator per input value; a count k sends k spikes
time                    our step ``t`` of sample ``b`` is NEST time ``s0[b] + t``
======================  =====================================================================

Samples run back to back in one network, with no per-neuron ``SetStatus`` (that costs ~8 us
per neuron: 0.1 s per call for F64C5). Before each sample, three control generators pulse every
neuron over delay-1 synapses. For ``max_delay`` steps a pulse far below the floor clamps ``V``
to exactly ``V_min = -2**64``, so no neuron spikes and every spike still in flight is absorbed.
Then a pulse of exactly ``lam * 2**64`` brings ``V`` to exactly 0, because
``lam*(-2**64) + lam*2**64 == 0`` in floating point. Then a pulse of ``v_init`` sets the start
potential. No other input arrives in those two steps, so each sample starts from the exact state
of a fresh network. All spike times of a batch are set before it runs. A clock synapse's weight
is read when the clock's spike is delivered, so with analog input each sample is one
``nest.Simulate`` that ends with the sample's last step, and its clock weights are set before it;
otherwise the whole batch is one call. (One current generator per neuron carrying ``c`` as
``spike_weights`` would avoid the per-sample calls, but it was 15% slower on F64C5: 12544 device
events per step.)

The proof is ``tests/test_nest_parity.py``: on dense and conv nets (with a transposed-conv
feedback, a delay-2 projection, IF/LIF, subtract/to_value, v_init, biases, both weight signs,
analog and spike input) every neuron's spike count equals the torch engine's.

**Updates in place** (``in_place=True``; the default rebuilds, which is faster on NEST 3.10).
:meth:`NestBackend.update` takes a spec that differs from the built one only
in values (same populations and neurons, same projection geometry and delays, same nonzero
weights) and sets every spike-carrying synapse's new weight in the running kernel, one
``SynapseCollection.set`` per (source, target) pair and chunk; biases, the analog input and the
readout come from the new spec at the next run. Anything else is built anew. The synapse handles
are taken at the first update, not in the build: PyNEST reads them as one dict per synapse (1.1 s
for F400's 160 k, 16x its build). Setting is also a dict per synapse: ~1 us each, 0.16 s for F400.

**Self-test**: whether NEST's models update as this mapping assumes depends on the installed
NEST (``eprop_iaf``'s update order has changed between versions), so :meth:`NestBackend.probe`,
and a process's first build, run :mod:`fsnn.backends.nest.selftest` once: tiny specs through
this backend, spike steps compared with the torch engine's; a NEST that disagrees is refused.

NEST holds one network per process: building a second :class:`NestBackend` in the same process
invalidates the first. Run several in parallel as separate processes (e.g. Ray tasks). Parity
is exact with one thread (``threads=1``, the default); with more threads the order in which a
step's inputs are summed can change the last bit of ``V``, enough to flip a threshold tie.
"""

from __future__ import annotations

import ctypes
import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch

from fsnn.backends.base import BackendError, BatchResult, synaptic_events
from fsnn.backends.connections import expand
from fsnn.backends.nest.cells import (
    NEST_MODELS,
    V_FLOOR,
    CellPlan,
    native_cell_type,
    plan_network,
)
from fsnn.backends.nest.kernel import Kernel, NestPopulation
from fsnn.backends.nest.simulator import load_simulator
from fsnn.backends.nest.update import (
    find_projection_synapses,
    layout,
    same_synapses,
    set_weights,
)
from fsnn.platform.engine import circuit_from_network, rate_normaliser, readout
from fsnn.platform.spec import INPUT, Network

CLAMP_PULSE = -(2.0**66)  # any V plus this (plus in-flight input) ends below the floor
LEAD_IN = 2  # steps between "now" and a batch's first prelude step (clock: generator + parrot)
CHUNK_SPIKES = 4_000_000  # input generator spikes set at once (bounds their memory)


@contextmanager
def nest_openmp(nest: ModuleType) -> Iterator[None]:
    """Call NEST with the OpenMP thread count its kernel was set up for, then restore it.

    torch loads its libgomp into the global symbol scope, so NEST's parallel regions run on
    torch's OpenMP runtime. A torch op between two NEST calls can leave that runtime's thread
    count at torch's value; NEST, set up for fewer threads, then runs a wider parallel region
    and segfaults (seen in the parity tests, in Simulate and in ResetKernel). Every NEST call
    of this backend runs inside this guard. Without a global OpenMP runtime nothing is shared.
    """
    lib = ctypes.CDLL(None)
    try:
        get, put = lib.omp_get_max_threads, lib.omp_set_num_threads
    except AttributeError:
        yield
        return
    before = int(get())
    put(int(nest.local_num_threads))
    try:
        yield
    finally:
        put(before)


@dataclass(frozen=True)
class Timeline:
    """NEST times of one run (ms on the 1 ms grid; an *arrival* is the step input lands in).

    Sample ``b`` has a prelude of ``max_delay`` clamp steps, one restore step and one ``v_init``
    step ending at ``s0[b]``; our step ``t`` (1..T) is then NEST time ``s0[b] + t``. After the
    last sample, ``max_delay`` clamp steps absorb every spike still in flight (and let the
    recorder receive the last step's spikes). A generator spike at time ``g`` reaches its
    target at ``g + delay`` (through the clock's parrot: ``g + 1 + delay``); the spike
    ``x[b, t']`` of the input acts like a neuron spike of our step ``t' + 1`` (as in the
    engine), so its generator fires at ``s0[b] + t' + 1``.
    """

    s0: np.ndarray  # float64 [B]
    clamp: np.ndarray  # arrivals of the clamp pulse
    end: float  # kernel time when the run is done
    T: int

    @classmethod
    def plan(cls, now: float, batch: int, T: int, max_delay: int) -> Timeline:
        period = max_delay + 2 + T
        base = now + LEAD_IN + period * np.arange(batch, dtype=np.float64)
        s0 = base + max_delay + 2
        after = np.arange(1, max_delay + 1, dtype=np.float64)
        clamp = np.concatenate([(base[:, None] + after).ravel(), s0[-1] + T + after])
        return cls(s0=s0, clamp=clamp, end=float(s0[-1] + T + max_delay), T=T)

    def control_times(self) -> list[dict[str, np.ndarray]]:
        """Spike times of the clamp, restore and v_init generators (delay 1)."""
        return [{"spike_times": a - 1.0} for a in (self.clamp, self.s0 - 1.0, self.s0)]

    def clock_times(self) -> dict[str, np.ndarray]:
        """Clock generator times: the parrot fires one step later, arriving at s0+1 .. s0+T."""
        arrivals = self.s0[:, None] + np.arange(1, self.T + 1, dtype=np.float64)
        return {"spike_times": (arrivals - 2.0).ravel()}

    def input_times(self, counts: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Per input value: spike times for integer counts ``[B, T, n_in]`` (k repeats)."""
        b, t, i = np.nonzero(counts)
        reps = counts[b, t, i]
        times = np.repeat(self.s0[b] + t + 1.0, reps)
        source = np.repeat(i, reps)
        order = np.lexsort((times, source))
        times, source = times[order], source[order]
        bounds = np.searchsorted(source, np.arange(counts.shape[2] + 1))
        return [{"spike_times": times[bounds[j]:bounds[j + 1]]} for j in range(counts.shape[2])]


_OWNER: list[NestBackend] = []  # the backend whose network is in this process's NEST kernel


class NestBackend:
    """Runs a spec on NEST through PyNN; see the module docstring for the mapping."""

    name = "nest"

    def __init__(self, *, threads: int = 1, in_place: bool = False) -> None:
        if threads < 1:
            raise BackendError(f"threads must be >= 1 (got {threads})")
        self.threads = threads
        self.in_place = in_place
        self._kernel: Kernel | None = None
        self.build_time: float | None = None
        self.update_time: float | None = None
        self.synapse_count = 0

    def probe(self) -> None:
        """Raise BackendError unless PyNN and NEST import (else saying how to install them)
        and NEST reproduces the semantics this backend relies on.

        The check is :mod:`fsnn.backends.nest.selftest`: two tiny specs (IF and LIF with reset
        by subtraction on ``eprop_iaf``, reset to a value on ``iaf_psc_delta``, delays 1 and 2,
        constant currents through the clock neuron, input spike trains, the per-sample reset)
        built and run through this backend, their spike steps compared with the torch engine's.
        It runs once per process (well under a second), before any network is built; the
        error names the NEST version, the model, the expected and the produced spike steps.
        SpiNNaker has no such self-test: sPyNNaker's virtual board maps a network but simulates
        nothing (its recordings come back empty), so only a real board could be checked.
        """
        from fsnn.backends.nest.selftest import ensure_selftest

        ensure_selftest(NestBackend)

    def check(self, net: Network) -> None:
        """Refuse a spec NEST cannot express (BackendError naming the population); no NEST."""
        plan_network(net)
        net.validate()

    def build(self, net: Network) -> None:
        """Check that NEST can express ``net`` (BackendError naming the population), then build.

        A process's first build runs the self-test of :meth:`probe` first (a deployment need
        not probe); a NEST that fails it builds nothing in that process."""
        plans = plan_network(net)
        net.validate()
        sim, nest = load_simulator()
        from fsnn.backends.nest.selftest import ensure_selftest

        ensure_selftest(NestBackend)  # once per process, before the first build replaces the kernel
        start = time.perf_counter()
        with nest_openmp(nest):
            self.close()
            for other in _OWNER:
                other._kernel = None
            _OWNER[:] = [self]
            self._kernel = self._build(sim, nest, net.to(torch.float64), plans)
        self.build_time = time.perf_counter() - start

    def _build(self, sim: ModuleType, nest: ModuleType, net: Network,
               plans: dict[str, CellPlan]) -> Kernel:
        max_delay = max([1, *(q.delay for q in net.projections)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # str parameters, deprecated verbosity API
            sim.setup(timestep=1.0, min_delay=1.0, max_delay=float(max_delay),
                      spike_precision="on_grid", threads=self.threads)
            nest.verbosity = nest.VerbosityLevel.ERROR
            cell_types = {m: native_cell_type(sim, m) for m in set(NEST_MODELS.values())}
            pops = []
            for p in net.populations:
                plan = plans[p.name]
                nodes = sim.Population(p.size, cell_types[plan.model](**plan.params),
                                       initial_values={"V_m": plan.v_init},
                                       label=p.name).node_collection
                ids = np.asarray(nodes.tolist(), dtype=np.int64)
                if (np.diff(ids) <= 0).any():
                    raise BackendError(f"population {p.name!r}: NEST ids are not ascending")
                pops.append(NestPopulation(p.name, p.shape, plan.leak, ids, nodes))
        inputs = None
        if net.input.kind == "spikes":
            inputs = nest.Create("spike_generator", math.prod(net.input.shape))
        input_ids = None if inputs is None else np.asarray(inputs.tolist(), dtype=np.int64)
        self.synapse_count = _connect_projections(nest, net, {p.name: p for p in pops},
                                                  input_ids)
        control = nest.Create("spike_generator", 3)
        clock_generator, clock = nest.Create("spike_generator"), nest.Create("parrot_neuron")
        nest.Connect(clock_generator, clock, syn_spec={"delay": 1.0})
        _connect_control(nest, net, plans, pops, control, clock)
        recorder = nest.Create("spike_recorder")
        for p in pops:
            nest.Connect(p.nodes, recorder)
        all_ids = np.concatenate([p.ids for p in pops])
        owner = np.concatenate([np.full(p.ids.size, i) for i, p in enumerate(pops)])
        local = np.concatenate([np.arange(p.ids.size) for p in pops])
        order = np.argsort(all_ids)
        sim.run(1.0)  # PyNN's first run adds min_delay to the time; absorb that here
        _find_clock_synapses(nest, pops, clock)
        return Kernel(sim, nest, net, pops, control, clock_generator, inputs, recorder,
                       max_delay, all_ids[order], owner[order], local[order])

    def update(self, net: Network) -> bool:
        """Load ``net``'s values into the built network in place (True), or build it (False).

        In place needs the same spec up to values: populations and neurons, projections (names,
        ends, kinds, shapes, strides, paddings, delays, feedback, whether they have a bias),
        input encoding, ``T`` and readout shape, and the same nonzero weights of every
        spike-carrying projection (a synapse exists only for a nonzero weight); and no two
        spike-carrying projections may share source, target and delay. Then each synapse's
        weight is set in the running kernel and the float64 spec is replaced, so biases, the
        analog input and the readout follow ``net``; the next run gives the same spikes as a
        fresh build of ``net``. Otherwise, and always unless the backend was made with
        ``in_place=True``, ``net`` is built (see :meth:`build`): on NEST 3.10 a rebuild is
        faster (F400: 0.065 s against 0.16 s; see :mod:`fsnn.backends.nest.update`).
        """
        k = self._kernel
        if k is None or not k.updatable or not self.in_place:
            self.build(net)
            return False
        start = time.perf_counter()
        net.validate()
        new = net.to(torch.float64)
        if layout(k.net) != layout(new) or not same_synapses(k.net, new):
            self.build(net)
            return False
        with nest_openmp(k.nest):
            if k.synapses is None:
                found = find_projection_synapses(k)
                k.updatable = found is not None
                if found is None:
                    self.build(net)
                    return False
                k.synapses = found
            for group in k.synapses:
                set_weights(group, [new.projections[i].weight for i in group.projections])
        k.net = new
        self.update_time = time.perf_counter() - start
        return True

    def run(self, x: torch.Tensor) -> BatchResult:
        """Run a batch: ``[B, *input.shape]`` (analog) or ``[B, T', *input.shape]`` (spikes,
        ``T' >= T``, non-negative integer counts per step)."""
        start = time.perf_counter()
        k, x, chunks = self._simulate(x)
        net, spikes = k.net, k.net.input.kind == "spikes"
        parts = [_collect(k, chunk, n) for n, chunk in chunks]
        counts = {p.name: torch.cat([c[p.name] for c, _ in parts]) for p in k.populations}
        rates = {p.name: torch.cat([r[p.name] for _, r in parts]) for p in k.populations}
        logits = readout(net, rates)
        events = synaptic_events(net, counts, x.sum(1) if spikes else None)
        return BatchResult(counts=counts, rates=rates, logits=logits, synaptic_events=events,
                           wall_time=time.perf_counter() - start)

    def spike_trains(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run a batch (as :meth:`run`) and return every neuron's spikes per step: for each
        population ``[T, B, *shape]``, the layout of the torch engine's ``record_trains``."""
        k, _, chunks = self._simulate(x)
        T = k.net.T
        trains: list[dict[str, torch.Tensor]] = []
        for n, ev in chunks:
            per_pop: dict[str, torch.Tensor] = {}
            for i, p in enumerate(k.populations):
                m = ev.population == i
                flat = ((ev.step[m] - 1) * n + ev.sample[m]) * p.ids.size + ev.index[m]
                dense = np.bincount(flat, minlength=T * n * p.ids.size).astype(np.float64)
                per_pop[p.name] = torch.from_numpy(dense).view(T, n, *p.shape)
            trains.append(per_pop)
        return {p.name: torch.cat([t[p.name] for t in trains], dim=1) for p in k.populations}

    def _simulate(self, x: torch.Tensor) -> tuple[Kernel, torch.Tensor, list[tuple[int, _Spikes]]]:
        """Check ``x``, run it in chunks; the kernel, ``x`` as run and each chunk's spikes."""
        k = self._kernel
        if k is None:
            raise BackendError("build() a spec before run() (or another NestBackend in this "
                               "process rebuilt the NEST kernel)")
        net, T = k.net, k.net.T
        x = x.detach().to("cpu", torch.float64)
        spikes = net.input.kind == "spikes"
        if spikes:
            if x.dim() < 2 or x.shape[1] < T:
                raise BackendError(f"input: spike trains must be [B, >= {T}, "
                                   f"*{tuple(net.input.shape)}], got {tuple(x.shape)}")
            x = x[:, :T]
            if bool((x < 0).any()) or bool((x != x.round()).any()):
                raise BackendError("input: spike trains must hold non-negative integer spike "
                                   "counts per step (NEST sends k spikes for a count k)")
        batch = int(x.shape[0])
        if batch == 0:
            raise BackendError("input: empty batch")
        circuit, _ = circuit_from_network(net, x.transpose(0, 1) if spikes else x)
        const = {p.name: _per_neuron(circuit.const[p.name], p.shape)
                 for p in k.populations if p.clock is not None}
        n_in = math.prod(net.input.shape) if spikes else 0
        step = max(1, CHUNK_SPIKES // max(1, n_in * T))
        chunks: list[tuple[int, _Spikes]] = []
        with nest_openmp(k.nest):
            for lo in range(0, batch, step):
                hi = min(batch, lo + step)
                chunks.append((hi - lo, _run_chunk(k, {n: c if c.shape[0] == 1 else c[lo:hi]
                                                       for n, c in const.items()},
                                                   x[lo:hi] if spikes else None, hi - lo)))
        return k, x, chunks

    def close(self) -> None:
        """Release the NEST kernel (and its memory) if this backend holds it."""
        k, self._kernel = self._kernel, None
        if k is not None and _OWNER and _OWNER[0] is self:
            _OWNER.clear()
            with nest_openmp(k.nest):
                k.sim.end()
                k.nest.ResetKernel()


# ---------------------------------------------------------------------------------------------
# build helpers


def _connect_projections(nest: ModuleType, net: Network, pops: dict[str, NestPopulation],
                         input_ids: np.ndarray | None) -> int:
    """Every spike-carrying projection as static synapses; returns the synapse count."""
    total = 0
    for q in net.projections:
        if q.source == INPUT and net.input.kind == "analog":
            continue  # part of the constant current
        src_ids = input_ids if q.source == INPUT else pops[q.source].ids
        assert src_ids is not None
        tgt = pops[q.target]
        for chunk in expand(q, net.shape_of(q.source), tgt.shape):
            nest.Connect(src_ids[chunk.pre], tgt.ids[chunk.post], "one_to_one",
                         {"synapse_model": "static_synapse", "weight": chunk.weight,
                          "delay": np.full(len(chunk), float(q.delay))})
            total += len(chunk)
    return total


def _connect_control(nest: ModuleType, net: Network, plans: dict[str, CellPlan],
                     pops: list[NestPopulation], control: Any, clock: Any) -> None:
    """Clamp, restore and v_init synapses for every neuron; clock synapses where needed."""
    clamp, restore, init = np.asarray(control.tolist(), dtype=np.int64)
    clock_id = int(clock.tolist()[0])
    analog = net.input.kind == "analog"
    has_current = {q.target for q in net.projections
                   if q.bias is not None or (analog and q.source == INPUT)}

    def connect(src: int, ids: np.ndarray, weight: float) -> None:
        nest.Connect(np.full(ids.size, src, dtype=np.int64), ids, "one_to_one",
                     {"synapse_model": "static_synapse", "weight": np.full(ids.size, weight),
                      "delay": np.ones(ids.size)})

    for p in pops:
        plan = plans[p.name]
        connect(clamp, p.ids, CLAMP_PULSE)
        connect(restore, p.ids, plan.leak * V_FLOOR)  # lam * 2**64 is exact
        if plan.v_init != 0.0:
            connect(init, p.ids, plan.v_init)
        if p.name in has_current:
            connect(clock_id, p.ids, 0.0)


def _find_clock_synapses(nest: ModuleType, pops: list[NestPopulation], clock: Any) -> None:
    """Handles on each population's clock synapses, in NEST's order.

    Taken after the first run: NEST sorts synapses by source when it prepares a simulation,
    and a handle taken before that (or before later ``Connect`` calls) points at other synapses
    (seen in the parity tests: the v_init synapses moved the clock's).
    """
    for p in pops:
        syn = nest.GetConnections(source=clock, target=p.nodes)
        if len(syn):
            p.clock = syn
            p.clock_order = np.searchsorted(p.ids, np.atleast_1d(np.asarray(syn.get("target"))))


# ---------------------------------------------------------------------------------------------
# run helpers


def _per_neuron(current: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """A constant current (``[B or 1, ...]``, maybe per channel) as ``[B or 1, neurons]``."""
    lead = current.shape[0]
    return current.expand(lead, *shape).reshape(lead, -1).numpy()


def _set_clock(p: NestPopulation, values: np.ndarray) -> None:
    assert p.clock is not None and p.clock_order is not None
    p.clock.set(weight=values[p.clock_order])


@dataclass(frozen=True)
class _Spikes:
    """The spikes of one run chunk, one entry per spike (read from the recorder)."""

    sample: np.ndarray  # int64, sample within the chunk
    step: np.ndarray  # int64, our step 1..T
    population: np.ndarray  # int64, position in the kernel's populations
    index: np.ndarray  # int64, flat neuron index within its population


def _run_chunk(k: Kernel, const: dict[str, np.ndarray], x: torch.Tensor | None, batch: int
               ) -> _Spikes:
    """Set the generators for ``batch`` samples, run them, read their spikes."""
    tl = Timeline.plan(float(k.nest.biological_time), batch, k.net.T, k.max_delay)
    k.control.set(tl.control_times())
    k.clock.set(tl.clock_times())
    if x is not None and k.inputs is not None:
        k.inputs.set(tl.input_times(x.flatten(2).numpy().astype(np.int64)))
    varying = []
    for p in k.populations:
        if p.clock is None:
            continue
        if const[p.name].shape[0] == 1:
            _set_clock(p, const[p.name][0])
        else:
            varying.append(p)
    now = float(tl.s0[0]) - k.max_delay - 2 - LEAD_IN
    if varying:  # one call per sample, ending with its last step
        for b, s0 in enumerate(tl.s0):
            for p in varying:
                _set_clock(p, const[p.name][b])
            k.nest.Simulate(float(s0) + tl.T - now)
            now = float(s0) + tl.T
    k.nest.Simulate(tl.end - now)
    if float(k.nest.biological_time) != tl.end:
        raise BackendError(f"NEST clock at {k.nest.biological_time} ms, expected {tl.end} ms")
    return _read_spikes(k, tl)


def _read_spikes(k: Kernel, tl: Timeline) -> _Spikes:
    """Every spike in the recorder as (sample, step, population, neuron); then clears it."""
    ev = k.recorder.get("events")
    k.recorder.n_events = 0
    senders = np.asarray(ev["senders"], dtype=np.int64)
    times = np.asarray(ev["times"], dtype=np.float64)
    sample = np.searchsorted(tl.s0, times, side="left") - 1
    step = np.rint(times - tl.s0[np.maximum(sample, 0)]).astype(np.int64)
    if ((sample < 0) | (step < 1) | (step > tl.T)).any():
        raise BackendError("NEST produced spikes outside the sample windows: the clamp between "
                           "samples did not hold (membrane potentials near the -2**64 floor?)")
    pos = np.searchsorted(k.gid_sorted, senders)
    return _Spikes(sample, step, k.gid_pop[pos], k.gid_index[pos])


def _collect(k: Kernel, spikes: _Spikes, batch: int
             ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Counts and leak-weighted rates per population of one chunk's spikes."""
    counts: dict[str, torch.Tensor] = {}
    rates: dict[str, torch.Tensor] = {}
    T = k.net.T
    for i, p in enumerate(k.populations):
        m = spikes.population == i
        flat = spikes.sample[m] * p.ids.size + spikes.index[m]
        size = batch * p.ids.size
        c = np.bincount(flat, minlength=size).astype(np.float64)
        acc = c if p.leak == 1.0 else _leaky_sum(flat, spikes.step[m], size, p.leak, T)
        counts[p.name] = torch.from_numpy(c).view(batch, *p.shape)
        rates[p.name] = torch.from_numpy(acc / rate_normaliser(p.leak, T)).view(batch, *p.shape)
    return counts, rates


def _leaky_sum(flat: np.ndarray, step: np.ndarray, size: int, leak: float, T: int
               ) -> np.ndarray:
    """``acc = acc * leak + s_t`` over steps 1..T, the torch engine's operations in its order,
    so the rates are bit for bit the engine's (hardware-in-the-loop gradients depend on them)."""
    order = np.argsort(step, kind="stable")
    bounds = np.searchsorted(step[order], np.arange(1, T + 2))
    acc = np.zeros(size)
    for t in range(T):
        acc = acc * leak + np.bincount(flat[order[bounds[t]:bounds[t + 1]]], minlength=size)
    return acc
