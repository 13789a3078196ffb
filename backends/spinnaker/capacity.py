"""Does a spec fit a SpiNNaker machine? Cores, chips and synapse rows, before anything loads.

Two sources of numbers, reported the same way (:class:`CapacityReport`):

* **analytic** (no sPyNNaker): each population is split into cores of ``neurons_per_core``
  neurons, the largest count <= 256 (sPyNNaker's default for its neuron models) for which no
  synaptic row (one source neuron's synapses of one projection and sign onto one core) exceeds
  256 synapses, sPyNNaker's limit (``MasterPopTableAsBinarySearch``); the chips are filled
  core by core;
* **sPyNNaker's own mapping** on a virtual machine of the configured size
  (:mod:`fsnn.backends.spinnaker.backend` reads the placements).

Per chip, as placed on sPyNNaker's virtual SpiNN-5 and SpiNN-3 machines (measured): core 0
runs the monitor, one core an extra monitor, the Ethernet chip also a packet gatherer, and with
the energy report every chip a power monitor. SpiNN-5: 48 chips, 40 with 18 and 8 with 17
cores (856); SpiNN-3: 4 chips of 18 cores. The ``tests/test_spinnaker.py`` checks the analytic
numbers against sPyNNaker's mapping for F400 and F64C5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from fsnn.backends.base import BackendError
from fsnn.backends.spinnaker.cfg import Machine
from fsnn.backends.spinnaker.plan import signed_part, spiking
from fsnn.platform.engine import apply_projection
from fsnn.platform.spec import INPUT, Network, Projection

MAX_NEURONS_PER_CORE = 256  # sPyNNaker's DEFAULT_MAX_ATOMS_PER_CORE
MAX_ROW = 256  # synapses per row (POP_TABLE_MAX_ROW_LENGTH)
SOURCE_NEURONS_PER_CORE = 256  # fsnn's setting for the spike-input SpikeSourceArray
CHIP_SDRAM = 123_469_792  # bytes per chip on the virtual machines (spinn_machine)
ROW_HEADER_WORDS = 3  # synaptic row header (synapse_io._N_HEADER_WORDS)
CORES = {5: [18] * 40 + [17] * 8, 3: [18] * 4}  # cores per chip
CANDIDATES = (256, 224, 196, 192, 160, 128, 112, 98, 96, 64, 49, 48, 32, 16, 8, 4, 2, 1)


@dataclass(frozen=True)
class PopulationLoad:
    name: str
    neurons: int
    neurons_per_core: int
    cores: int
    max_row: int  # longest synaptic row (synapses) onto one core
    sdram_per_core: int  # bytes per core: synaptic matrices (analytic), all (sPyNNaker)


@dataclass
class CapacityReport:
    machine: str
    source: str  # "analytic" or "sPyNNaker mapping (virtual ...)"
    populations: list[PopulationLoad]
    app_cores: int  # cores running neurons and spike sources
    chips: int  # chips holding them
    app_cores_available: int
    chips_available: int
    system_cores: int = 0  # monitors, gatherers, power monitors on the used chips
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.app_cores <= self.app_cores_available and self.chips <= self.chips_available

    def table(self) -> str:
        rows = [f"SpiNNaker capacity ({self.source}) on {self.machine}:"]
        for p in self.populations:
            rows.append(f"  {p.name:>12}: {p.neurons:>7} neurons, {p.neurons_per_core:>3}/core "
                        f"-> {p.cores:>4} cores, longest row {p.max_row:>3} synapses, "
                        f"~{p.sdram_per_core / 2**20:.1f} MiB SDRAM/core")
        rows.append(f"  total: {self.app_cores} application cores on {self.chips} chips "
                    f"(+{self.system_cores} system cores); machine has "
                    f"{self.app_cores_available} application cores on "
                    f"{self.chips_available} chips -> {'fits' if self.fits else 'DOES NOT FIT'}")
        rows += [f"  note: {n}" for n in self.notes]
        return "\n".join(rows)

    def metrics(self) -> dict[str, float]:
        return {"spinnaker/app_cores": float(self.app_cores),
                "spinnaker/chips": float(self.chips),
                "spinnaker/system_cores": float(self.system_cores)}

    def require_fit(self) -> None:
        if not self.fits:
            raise BackendError("the network does not fit the machine: needs "
                               f"{self.app_cores} application cores on {self.chips} chips, "
                               f"{self.machine} has {self.app_cores_available} on "
                               f"{self.chips_available} chips\n{self.table()}")


def machine_cores(m: Machine) -> list[int]:
    """Cores per chip of the machine (virtual: as sPyNNaker's virtual machine generator)."""
    if m.virtual and m.width and m.height:
        return [18] * (m.width * m.height)
    return list(CORES[m.version])


def app_cores_per_chip(m: Machine) -> list[int]:
    """Cores left for applications on each chip, Ethernet chip first."""
    per = [c - 2 - (1 if m.energy else 0) for c in machine_cores(m)]
    per[0] -= 1  # the packet gatherer
    return per


def chips_for(cores: int, per_chip: list[int]) -> int:
    """Chips filled in order until ``cores`` application cores are placed."""
    used = 0
    for i, n in enumerate(per_chip):
        used += n
        if used >= cores:
            return i + 1
    return len(per_chip) + math.ceil((cores - used) / max(1, per_chip[-1]))


def longest_row(q: Projection, net: Network, sign: int, per_core: int) -> int:
    """Longest row: synapses of ``q`` of one sign from one source neuron onto one core of
    ``per_core`` target neurons (each core's block of targets through the transposed map)."""
    part = signed_part(q, sign)
    mask = Projection(q.name, q.source, q.target, q.kind, (part.weight != 0).to(torch.float64),
                      None, q.stride, q.padding, q.output_padding)
    tgt = net.population(q.target)
    n_cores = math.ceil(tgt.size / per_core)
    blocks = torch.zeros(n_cores, tgt.size, dtype=torch.float64)
    idx = torch.arange(tgt.size)
    blocks[idx // per_core, idx] = 1.0
    x = torch.zeros(n_cores, *net.shape_of(q.source), dtype=torch.float64, requires_grad=True)
    y = apply_projection(mask, x, tgt.shape)
    (g,) = torch.autograd.grad(y, x, blocks.view(n_cores, *tgt.shape))
    return int(g.max().round())


def plan_cores(net: Network) -> dict[str, tuple[int, int, int]]:
    """Per population: (neurons per core, longest row, synaptic SDRAM bytes per core)."""
    out: dict[str, tuple[int, int, int]] = {}
    for p in net.populations:
        incoming = [q for q in spiking(net) if q.target == p.name]
        best = None
        for n in CANDIDATES:
            if n > MAX_NEURONS_PER_CORE:
                continue
            rows = [(q, longest_row(q, net, s, min(n, p.size))) for q in incoming
                    for s in (1, -1)]
            longest = max((r for _, r in rows), default=0)
            if longest <= MAX_ROW:
                # each source neuron has a row of the longest length per projection and sign
                words = sum(math.prod(net.shape_of(q.source)) * (r + ROW_HEADER_WORDS)
                            for q, r in rows if r > 0)
                best = (min(n, p.size), longest, 4 * words)
                break
        if best is None:
            raise BackendError(f"population {p.name!r}: even one neuron per core receives "
                               f"rows longer than {MAX_ROW} synapses")
        out[p.name] = best
    return out


def analytic(net: Network, m: Machine) -> CapacityReport:
    """The capacity report without sPyNNaker."""
    loads = []
    for name, (per_core, longest, sdram) in plan_cores(net).items():
        size = net.population(name).size
        loads.append(PopulationLoad(name, size, per_core, math.ceil(size / per_core), longest,
                                    sdram))
    if net.input.kind == "spikes":
        size = math.prod(net.input.shape)
        loads.append(PopulationLoad(INPUT, size, SOURCE_NEURONS_PER_CORE,
                                    math.ceil(size / SOURCE_NEURONS_PER_CORE), 0, 0))
    per_chip = app_cores_per_chip(m)
    cores = sum(p.cores for p in loads)
    by_cores = chips_for(cores, per_chip)
    by_sdram = math.ceil(sum(p.sdram_per_core * p.cores for p in loads) / CHIP_SDRAM)
    chips = max(by_cores, by_sdram)
    notes = [] if by_sdram <= by_cores else \
        [f"synaptic matrices (~{by_sdram} chips of SDRAM) decide the chip count"]
    system = chips * (2 + (1 if m.energy else 0)) + 1  # monitor, extra monitor, [power], gatherer
    return CapacityReport(m.target, "analytic", loads, cores, chips, sum(per_chip),
                          len(per_chip), system, notes)
