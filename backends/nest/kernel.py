"""What a network built on NEST holds: handles into the PyNN-managed NEST kernel, per
population and per group of synapses. Shared by the backend (which builds it) and the in-place
weight update (which reads it)."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from fsnn.platform.spec import Network


@dataclass
class SynapseGroup:
    """The synapses of the spike-carrying projections from one source to one target.

    Projections sharing source and target are told apart by their delay. ``index`` is, for each
    synapse of ``handle`` (NEST's order), the index of its weight in the concatenation of the
    projections' flattened weights (in ``projections`` order).
    """

    projections: list[int]  # positions in the spec's projection list
    handle: Any  # SynapseCollection
    index: np.ndarray  # int64 [len(handle)]



@dataclass
class NestPopulation:
    name: str
    shape: tuple[int, ...]
    leak: float
    ids: np.ndarray  # NEST node ids in flat (C-order) neuron order, ascending
    nodes: Any  # NodeCollection
    clock: Any | None = None  # SynapseCollection of clock synapses (None: no constant current)
    clock_order: np.ndarray | None = None  # flat neuron index of each clock synapse


@dataclass
class Kernel:
    """What a built network holds: handles into the PyNN-managed NEST kernel."""

    sim: ModuleType
    nest: ModuleType
    net: Network  # float64 copy of the spec
    populations: list[NestPopulation]
    control: Any  # generators: clamp, restore, v_init
    clock: Any  # the clock's generator
    inputs: Any | None  # input generators (spike input only)
    recorder: Any
    max_delay: int
    gid_sorted: np.ndarray  # every neuron id, sorted, and for each its population and index
    gid_pop: np.ndarray
    gid_index: np.ndarray
    # for update(): handles on the projections' synapses, taken at the first update (None: not
    # yet; []: nothing to set), and whether they can be told apart (False: build anew)
    synapses: list[SynapseGroup] | None = None
    updatable: bool = True
