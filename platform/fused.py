"""The neuron update of one population and time step as one compiled kernel (``torch.compile``).

The graph-free step (:func:`fsnn.platform.engine.simulate_circuit`) applies dropout masks, sums
the projections' outputs and the constant current, leaks, integrates, compares with the
threshold, resets and accumulates rates and counts: about ten elementwise kernels per population
and step, each a full pass over the state. Compiled (Triton on a GPU, C++ on a CPU) they become
one pass that reads the inputs and state once and writes the state and the spikes once.

The arithmetic is the same, in the same order, as the eager in-place step; a compiler may still
contract ``v * leak + I`` into a fused multiply-add (one rounding instead of two), so a spike that
sits exactly on threshold can differ: equal in distribution, not always bit for bit.

Each distinct population (shape, neuron parameters, which inputs it has) is one compiled
specialisation; :data:`MAX_SPECIALISATIONS` bounds them (beyond it the step runs uncompiled).
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from fsnn.platform.spec import Neuron

MAX_SPECIALISATIONS = 64  # populations x batch shapes x dtypes one process may compile

_kernels: dict[tuple[Any, ...], Callable[..., torch.Tensor]] = {}  # each compiled and run once


class FusedStepError(RuntimeError):
    """``torch.compile`` could not build the fused step on this machine."""


def _step(v: torch.Tensor, acc: torch.Tensor, counts: torch.Tensor | None,
          inputs: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None],
          const: torch.Tensor, leak: float, v_th: float, v_reset: float | None,
          spike_dtype: torch.dtype) -> torch.Tensor:
    """The eager in-place step's arithmetic (engine.py), written once for the compiler.

    ``v``, ``acc`` and ``counts`` are updated in place; ``v_reset`` None resets by subtraction;
    ``counts`` None: the counts are ``acc`` (IF). Returns the spikes (0/1 in ``spike_dtype``).
    """
    total = const
    for out, mask in zip(inputs, masks, strict=True):
        out = out if mask is None else out * mask
        total = out + total
    if leak != 1.0:
        v.mul_(leak)
    v.add_(total)
    spiked = v >= v_th
    s = spiked.to(spike_dtype)
    if v_reset is None:
        v.sub_(s, alpha=v_th)
    else:
        v.masked_fill_(spiked, v_reset)
    if leak != 1.0:
        acc.mul_(leak)
    acc.add_(s)
    if counts is not None:
        counts.add_(s)
    return s


def _new_kernel() -> Callable[..., torch.Tensor]:
    """:func:`_step` compiled from its own copy of the code: torch.compile keeps its cache on the
    code object, so every specialisation has one entry to check per call (fast) and none counts
    against torch's recompile limit of the others."""
    code = _step.__code__.replace(co_name=f"_fused_step_{len(_kernels)}")
    fresh = types.FunctionType(code, _step.__globals__, code.co_name, _step.__defaults__,
                               _step.__closure__)
    return torch.compile(fresh, fullgraph=True, dynamic=False)


@contextmanager
def _local_symbols() -> Iterator[None]:
    """Load compiled kernels with RTLD_LOCAL even where the process asked for RTLD_GLOBAL.

    PyNEST sets ``sys.setdlopenflags(RTLD_NOW | RTLD_GLOBAL)`` for the rest of the process. A
    compiled kernel library loaded so exports its entry point (every one is named ``kernel``)
    to all later ones, whose calls then reach the first: heap corruption, seen as a segfault
    after NEST was imported. A kernel is loaded when first compiled, or recompiled, for a call.
    """
    flags = sys.getdlopenflags()
    if not flags & os.RTLD_GLOBAL:
        yield
        return
    sys.setdlopenflags(flags & ~os.RTLD_GLOBAL)
    try:
        yield
    finally:
        sys.setdlopenflags(flags)


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else ""


def neuron_step(v: torch.Tensor, acc: torch.Tensor, counts: torch.Tensor | None,
                inputs: Sequence[torch.Tensor], masks: Sequence[torch.Tensor | None],
                const: torch.Tensor, neuron: Neuron,
                spike_dtype: torch.dtype | None = None) -> torch.Tensor:
    """One fused update (see :func:`_step`); compiles on first use for each specialisation.

    Raises :class:`FusedStepError` naming the fix when this machine cannot compile it.
    """
    v_reset = None if neuron.reset == "subtract" else float(neuron.v_reset)
    args = (v, acc, counts, inputs, masks, const, float(neuron.leak), float(neuron.v_th),
            v_reset, spike_dtype or v.dtype)
    key = (v.shape, v.dtype, v.device, args[6:], counts is None, const.shape,
           tuple(None if m is None else (m.shape, m.dtype) for m in masks))
    kernel = _kernels.get(key)
    if kernel is not None:
        with _local_symbols():
            return kernel(*args)
    if len(_kernels) >= MAX_SPECIALISATIONS:  # the same arithmetic, uncompiled
        return _step(*args)
    kernel = _new_kernel()
    try:
        with _local_symbols():
            out = kernel(*args)  # compiles
    except Exception as exc:  # the compiler's failures have many types
        raise FusedStepError(
            f"train.fused_step: torch.compile could not build the fused neuron update on "
            f"{v.device.type} ({exc.__class__.__name__}: {_first_line(exc)}); set "
            "train.fused_step: false (the eager step computes the same), or give this "
            "machine what the compiler needs (a C++ compiler for CPU, Triton for CUDA)"
        ) from exc
    _kernels[key] = kernel
    return out
