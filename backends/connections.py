"""Expand spec projections into explicit synapse lists (pre index, post index, weight, index).

Simulators such as NEST have no convolution connection rule, so a ``conv`` or ``conv_transpose``
projection becomes one synapse per (output position, input channel, kernel offset). Indices are
the C-order flat indices of the source and target shapes (``tensor.flatten()``), the same order
the torch engine uses. Zero weights make no synapse, as in :func:`fsnn.backends.base.fan_out`.
Each synapse also carries the flat index of its weight in ``q.weight.flatten()``, so a new weight
tensor with the same nonzero pattern maps onto the synapses already built
(``weight == q.weight.flatten()[index]``).

Everything is vectorised numpy: the only Python loop is over kernel offsets (one chunk each), so
a 64x64x5x5 feedback conv on 14x14 (20 M synapses) expands in well under a second, chunk by chunk,
without ever holding the whole list in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from fsnn.platform.spec import Projection, SpecError


@dataclass(frozen=True)
class Synapses:
    """One chunk of a projection's synapses: parallel arrays, flat indices into source/target."""

    pre: np.ndarray  # int64, flat source index
    post: np.ndarray  # int64, flat target index
    weight: np.ndarray  # float64
    index: np.ndarray  # int64, flat index into q.weight (C order, q.weight's own layout)

    def __len__(self) -> int:
        return int(self.pre.size)


def expand(q: Projection, src_shape: tuple[int, ...],
           tgt_shape: tuple[int, ...]) -> Iterator[Synapses]:
    """Yield the synapses of ``q`` (from ``src_shape`` to ``tgt_shape``) in chunks."""
    w = q.weight.detach().to("cpu").double().numpy()
    if q.kind == "dense":
        yield from _dense(w)
    elif q.kind == "conv":
        yield from _conv(w, src_shape, tgt_shape, q.stride, q.padding)
    elif q.kind == "conv_transpose":
        yield from _conv_transpose(w, src_shape, tgt_shape, q.stride, q.padding)
    else:
        raise SpecError(f"projections.{q.name}.kind: cannot expand kind {q.kind!r}")


def count(q: Projection, src_shape: tuple[int, ...], tgt_shape: tuple[int, ...]) -> int:
    """Number of synapses :func:`expand` yields (without building them)."""
    return sum(len(s) for s in expand(q, src_shape, tgt_shape))


def _dense(w: np.ndarray, rows_per_chunk: int = 4096) -> Iterator[Synapses]:
    """Dense ``[out, in]``: synapse pre=i -> post=o with weight w[o, i]."""
    for start in range(0, w.shape[0], rows_per_chunk):
        block = w[start:start + rows_per_chunk]
        post, pre = np.nonzero(block)
        if post.size:
            row = (post + start).astype(np.int64)
            pre = pre.astype(np.int64)
            yield Synapses(pre, row, block[post, pre], row * w.shape[1] + pre)


def _axis(n_out: int, n_in: int, stride: int, padding: int, offset: int,
          transpose: bool) -> tuple[np.ndarray, np.ndarray]:
    """Valid (output, input) coordinate pairs along one spatial axis for one kernel offset.

    conv: ``in = out * stride - padding + offset``; transposed conv: ``out = in * stride -
    padding + offset`` (torch's definitions, dilation 1).
    """
    if transpose:
        inp = np.arange(n_in)
        out = inp * stride - padding + offset
    else:
        out = np.arange(n_out)
        inp = out * stride - padding + offset
    keep = (out >= 0) & (out < n_out) & (inp >= 0) & (inp < n_in)
    return out[keep], inp[keep]


def _kernel_chunks(w_oi: np.ndarray, src_shape: tuple[int, ...], tgt_shape: tuple[int, ...],
                   stride: int, padding: int, transpose: bool) -> Iterator[Synapses]:
    """Shared conv / transposed-conv expansion; ``w_oi`` is ``[out_ch, in_ch, kh, kw]``.

    Weight indices point into the projection's own layout: ``[out, in, kh, kw]`` for a conv,
    ``[in, out, kh, kw]`` for a transposed conv (``w_oi`` is then its transpose).
    """
    c_in, h_in, w_in = src_shape
    c_out, h_out, w_out = tgt_shape
    if w_oi.shape[:2] != (c_out, c_in):
        raise SpecError(f"conv weight {w_oi.shape} does not fit {src_shape} -> {tgt_shape}")
    k_h, k_w = w_oi.shape[2], w_oi.shape[3]
    for a in range(k_h):
        oy, iy = _axis(h_out, h_in, stride, padding, a, transpose)
        if not oy.size:
            continue
        for b in range(k_w):
            ox, ix = _axis(w_out, w_in, stride, padding, b, transpose)
            if not ox.size:
                continue
            co, ci = np.nonzero(w_oi[:, :, a, b])
            if not co.size:
                continue
            pre_xy = (iy[:, None] * w_in + ix[None, :]).ravel()
            post_xy = (oy[:, None] * w_out + ox[None, :]).ravel()
            pre = (ci[:, None] * (h_in * w_in) + pre_xy[None, :]).ravel()
            post = (co[:, None] * (h_out * w_out) + post_xy[None, :]).ravel()
            weight = np.repeat(w_oi[co, ci, a, b], pre_xy.size)
            co, ci = co.astype(np.int64), ci.astype(np.int64)
            channel = ci * c_out + co if transpose else co * c_in + ci
            index = np.repeat((channel * k_h + a) * k_w + b, pre_xy.size)
            yield Synapses(pre.astype(np.int64), post.astype(np.int64), weight, index)


def _conv(w: np.ndarray, src_shape: tuple[int, ...], tgt_shape: tuple[int, ...], stride: int,
          padding: int) -> Iterator[Synapses]:
    """conv weight ``[out, in, kh, kw]``: out[co, y, x] += w[co, ci, a, b] in[ci, y*s-p+a, ...]."""
    yield from _kernel_chunks(w, src_shape, tgt_shape, stride, padding, transpose=False)


def _conv_transpose(w: np.ndarray, src_shape: tuple[int, ...], tgt_shape: tuple[int, ...],
                    stride: int, padding: int) -> Iterator[Synapses]:
    """conv_transpose weight ``[in, out, kh, kw]``: out[co, y*s-p+a, ...] += w[ci, co, a, b] in.

    ``output_padding`` only enlarges the target, which ``tgt_shape`` already carries.
    """
    yield from _kernel_chunks(np.ascontiguousarray(w.transpose(1, 0, 2, 3)), src_shape,
                              tgt_shape, stride, padding, transpose=True)
