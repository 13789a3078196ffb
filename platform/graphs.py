"""CUDA graphs for the graph-free simulation: the T-step loop captured once, replayed per batch.

The simulation launches a dozen small kernels per population and time step; on a GPU the launch
overhead, not the arithmetic, then bounds small nets (F64C5 at T=30: ~300 launches a batch).
:class:`GraphedSimulator` captures :func:`~fsnn.platform.engine.simulate_circuit` into a CUDA graph
for one structure (populations, projections, shapes, T, timing) and replays it with the batch's
inputs copied into the graph's static buffers. Weights change after every optimiser step: they are
copied too (a few MB at most), so one graph serves a whole run.

Each new graph is checked once against an eager run on the same inputs; if the spike counts (the
rates, when the simulation keeps no counts) disagree beyond ``tolerance`` (a changed convolution
algorithm can flip a spike that sits exactly on threshold, nothing more), graphs are switched off
with a warning and the eager path is used.
Off CUDA, or while a capture is impossible, the eager path runs unchanged.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from fsnn.platform.engine import Circuit, SimResult, simulate_circuit
from fsnn.platform.fused import FusedStepError

Key = tuple[Any, ...]


def _shape(t: torch.Tensor | None) -> Any:
    return None if t is None else (tuple(t.shape), t.dtype, str(t.device))


def structure_key(circuit: Circuit, T: int, batch: int, timing: str,
                  spike_input: torch.Tensor | None, spike_dtype: torch.dtype | None,
                  **options: Any) -> Key:
    """Everything a captured graph bakes in: shapes, neuron parameters, wiring, T, timing and
    the simulation's other keyword ``options`` (fused, channels_last, with_counts, ...)."""
    pops = tuple((p.name, tuple(p.shape), p.neuron) for p in circuit.populations)
    projs = tuple((q.name, q.source, q.target, q.kind, _shape(q.weight), q.stride, q.padding,
                   q.output_padding, q.delay, q.feedback) for q in circuit.projections)
    const = tuple(sorted((k, _shape(v)) for k, v in circuit.const.items()))
    masks = tuple(sorted((k, _shape(v)) for k, v in circuit.masks.items()))
    return (pops, projs, const, masks, T, batch, timing, _shape(spike_input), spike_dtype,
            tuple(sorted(options.items())))


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    circuit: Circuit  # static input buffers
    spike_input: torch.Tensor | None
    result: SimResult  # static outputs

    def load(self, circuit: Circuit, spike_input: torch.Tensor | None) -> None:
        for mine, theirs in zip(self.circuit.projections, circuit.projections, strict=True):
            mine.weight.copy_(theirs.weight)
        for k, v in circuit.const.items():
            self.circuit.const[k].copy_(v)
        for k, v in circuit.masks.items():
            self.circuit.masks[k].copy_(v)
        if spike_input is not None:
            assert self.spike_input is not None
            self.spike_input.copy_(spike_input)


@dataclass
class GraphStats:
    captures: int = 0
    replays: int = 0
    eager: int = 0
    disabled: str | None = None  # why graphs were switched off, if they were


@dataclass
class GraphedSimulator:
    """``sim(circuit, T, ...)`` -> :class:`SimResult`, through CUDA graphs where it can.

    ``max_graphs`` graphs are kept (least recently used dropped): training batch, its last
    smaller batch, evaluation batch and its last batch.
    """

    max_graphs: int = 4
    max_captures: int = 16  # beyond this, captures must be rare: 1 per `min_replays` replays
    min_replays: int = 4
    tolerance: float = 1e-3  # fraction of neurons whose spike count may differ in the check
    verify: bool = True
    stats: GraphStats = field(default_factory=GraphStats)
    _graphs: OrderedDict[Key, _Graph] = field(default_factory=OrderedDict)

    def __call__(self, circuit: Circuit, T: int, *, timing: str = "ide",
                 spike_input: torch.Tensor | None = None,
                 spike_dtype: torch.dtype | None = None, **options: Any) -> SimResult:
        """``options``: further keyword options of :func:`simulate_circuit` (fused,
        channels_last, with_counts); each is part of the graph's key."""
        batch = circuit.batch_size(spike_input)
        ref = next(iter(circuit.const.values()), None)
        if ref is None and circuit.projections:
            ref = circuit.projections[0].weight
        device = ref.device if ref is not None else torch.device("cpu")

        def eager() -> SimResult:
            return simulate_circuit(circuit, T, batch=batch, timing=timing,
                                    spike_input=spike_input, spike_dtype=spike_dtype, **options)

        if device.type != "cuda" or self.stats.disabled is not None \
                or torch.cuda.is_current_stream_capturing():
            self.stats.eager += 1
            return eager()
        key = structure_key(circuit, T, batch, timing, spike_input, spike_dtype, **options)
        entry = self._graphs.get(key)
        if entry is None and self.stats.captures >= self.max_captures \
                and self.stats.replays < self.min_replays * self.stats.captures:
            self._disable(f"{self.stats.captures} captures: the circuit's structure changes "
                          "from call to call (e.g. trained thresholds), a graph cannot be reused")
            self.stats.eager += 1
            return eager()
        if entry is None:
            try:
                entry = self._capture(circuit, T, batch, timing, spike_input, spike_dtype,
                                      options)
            except FusedStepError:  # not the graph's fault: the eager run would fail the same way
                raise
            except RuntimeError as exc:  # e.g. an op that cannot be captured on this build
                self._disable(f"capture failed ({exc.__class__.__name__}: {exc})")
                self.stats.eager += 1
                return eager()
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
            entry.load(circuit, spike_input)
            entry.graph.replay()
            out = _copy(entry.result)
            if self.verify:
                reference = eager()
                bad = _count_mismatch(out, reference)
                if bad > self.tolerance:
                    self._disable(f"a replay differed from the eager simulation in {bad:.2%} of "
                                  f"spike counts (tolerance {self.tolerance:.2%})")
                    return reference
            return out
        self._graphs.move_to_end(key)
        entry.load(circuit, spike_input)
        entry.graph.replay()
        self.stats.replays += 1
        return _copy(entry.result)

    def __deepcopy__(self, memo: dict[int, Any]) -> GraphedSimulator:
        """A copy with the same settings and no graphs (they hold device memory and streams)."""
        return GraphedSimulator(self.max_graphs, self.max_captures, self.min_replays,
                                self.tolerance, self.verify)

    def _disable(self, why: str) -> None:
        self.stats.disabled = why
        self._graphs.clear()
        warnings.warn(f"CUDA graphs for the simulation are off: {why}; running eagerly",
                      RuntimeWarning, stacklevel=3)

    def _capture(self, circuit: Circuit, T: int, batch: int, timing: str,
                 spike_input: torch.Tensor | None, spike_dtype: torch.dtype | None,
                 options: dict[str, Any]) -> _Graph:
        static = Circuit(circuit.populations,
                         [replace(q, weight=q.weight.detach().clone(),
                                  bias=None if q.bias is None else q.bias.detach().clone())
                          for q in circuit.projections],
                         {k: v.detach().clone() for k, v in circuit.const.items()},
                         {k: v.detach().clone() for k, v in circuit.masks.items()})
        spikes = None if spike_input is None else spike_input.detach().clone()

        def run() -> SimResult:
            return simulate_circuit(static, T, batch=batch, timing=timing, spike_input=spikes,
                                    spike_dtype=spike_dtype, **options)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        # warm-up outside the capture (library handles, autotune, torch.compile's kernels)
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # its own memory pool (graphs never share buffers); other threads (data loading, Ray's)
        # may use CUDA meanwhile
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            result = run()
        self.stats.captures += 1
        return _Graph(graph, static, spikes, result)


def _copy(r: SimResult) -> SimResult:
    return SimResult(rates={k: v.clone() for k, v in r.rates.items()},
                     counts={k: v.clone() for k, v in r.counts.items()},
                     input_counts=None if r.input_counts is None else r.input_counts.clone())


def _count_mismatch(a: SimResult, b: SimResult) -> float:
    """The fraction of neurons whose spike count (without counts: rate) differs."""
    x, y = (a.counts, b.counts) if b.counts else (a.rates, b.rates)
    differ = sum(int((x[k] != y[k]).sum()) for k in y)
    total = sum(y[k].numel() for k in y)
    return differ / max(total, 1)
