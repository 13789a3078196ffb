"""Root finders for the adjoint system of implicit differentiation.

All solve ``g = G(g)`` for a map ``G`` on a batch of vectors ``[B, N]`` and report the relative
residual ``||G(g) - g|| / ||G(0)||`` and the number of iterations. They never raise on
non-convergence: they return the best iterate and say so in :class:`SolveStats`. ``scale`` is
``||G(0)||`` when the caller knows it (the adjoint's G(0) is dL/da): it saves one evaluation of G.

``check_every`` is how often the host reads the residual: 1 (the default) reads it after every
iteration, a device-to-host copy that makes the CPU wait for the GPU's queue to drain. With
``k > 1`` the best iterate and its residual are kept on the device (a ``torch.where`` per
iteration) and read every k iterations: the solve may run up to k - 1 iterations past
convergence, which only lowers the residual; ``k >= max_iter`` is a fixed iteration budget with
one read at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fsnn.platform.errors import FsnnError

SOLVERS = ("anderson", "broyden", "fixed_point")
# 3, not 5: the same iterations and accuracy on F400 and F64C5 (README, 'Speed on a GPU') with
# 40% less of the solver's memory (two [B, window, state] buffers: 456 MiB for AlexNet-F at 128)
ANDERSON_MEMORY = 3


class DivergenceError(FsnnError, FloatingPointError):
    """Training met non-finite numbers (a loss, weights or rates that are NaN or infinite):
    deterministic, so a retry would meet them again."""


@dataclass
class SolveStats:
    iterations: int
    residual: float
    converged: bool


class _Progress:
    """The best iterate so far and whether it converged, read on the host every ``every`` calls.

    ``every == 1`` compares on the host after each iterate (exactly the iterate whose residual is
    lowest is kept); otherwise the comparison stays on the device until a read is due.
    """

    def __init__(self, scale: torch.Tensor, tol: float, every: int) -> None:
        if every < 1:
            raise ValueError(f"check_every: must be a positive integer (got {every})")
        self.scale, self.tol, self.every = scale.clamp_min(1e-30), tol, every
        self.best: torch.Tensor | None = None
        self.best_res = float("inf")
        self._best_res_t: torch.Tensor | None = None
        self.seen = 0

    def see(self, x: torch.Tensor, residual: torch.Tensor, *, read: bool = False) -> bool:
        """Record iterate ``x`` with residual vector ``residual``; True once converged (known
        only on the calls that read: every ``every``-th, or with ``read``)."""
        rel = residual.norm() / self.scale
        self.seen += 1
        if self.every == 1:
            r = float(rel)
            if r < self.best_res:
                self.best, self.best_res = x, r
            return r < self.tol
        if self.best is None or self._best_res_t is None:
            self.best, self._best_res_t = x, rel
        else:  # NaN never counts as better
            self.best = torch.where(rel < self._best_res_t, x, self.best)
            self._best_res_t = torch.fmin(rel, self._best_res_t)  # a NaN never replaces it
        if read or self.seen % self.every == 0:
            self.best_res = float(self._best_res_t)  # the one host read
            return self.best_res < self.tol
        return False

    def result(self, iterations: int, shape: torch.Size) -> tuple[torch.Tensor, SolveStats]:
        if self.every > 1 and self._best_res_t is not None:
            self.best_res = float(self._best_res_t)
        if self.best is None or not math.isfinite(self.best_res):
            raise DivergenceError("the adjoint solve met non-finite values (the weights or "
                                  "the rates are NaN or infinite)")
        return self.best.view(shape), SolveStats(iterations, self.best_res,
                                                 self.best_res < self.tol)


def _scale(G: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor,
           scale: torch.Tensor | None) -> torch.Tensor:
    return G(torch.zeros_like(x0)).norm() if scale is None else scale


def fixed_point(G: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, *, max_iter: int,
                tol: float, damping: float = 1.0, scale: torch.Tensor | None = None,
                check_every: int = 1) -> tuple[torch.Tensor, SolveStats]:
    """Plain (optionally damped) fixed-point iteration x <- (1-d) x + d G(x)."""
    x = x0
    progress = _Progress(_scale(G, x0, scale), tol, check_every)
    for k in range(1, max_iter + 1):
        gx = G(x)
        if progress.see(x, gx - x):
            return progress.result(k, x0.shape)
        x = x + damping * (gx - x)
    progress.see(x, G(x) - x, read=True)
    return progress.result(max_iter, x0.shape)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample dot products of ``[B, N]`` tensors, as ``[B, 1]`` (one batched product)."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).squeeze(2)


def broyden(G: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, *, max_iter: int,
            tol: float, memory: int | None = None, scale: torch.Tensor | None = None,
            check_every: int = 1) -> tuple[torch.Tensor, SolveStats]:
    """Limited-memory "good" Broyden on F(x) = G(x) - x, one inverse-Jacobian estimate per sample.

    The estimate is H = -I + sum_i u_i v_i^T (so the first step is a fixed-point step); after a
    step s with change y in F it is updated so that H y = s, with the smallest change in H^T s
    direction. Keeps the iterate with the lowest residual. ``memory`` caps the stored pairs
    (u_i, v_i), two state-sized tensors each: the oldest is dropped first.
    """
    B = x0.shape[0]
    x = x0.reshape(B, -1)
    shape = x0.shape

    def F(z: torch.Tensor) -> torch.Tensor:
        return (G(z.view(shape)) - z.view(shape)).reshape(B, -1)

    fx = F(x)
    progress = _Progress(_scale(G, x0, scale), tol, check_every)
    us: list[torch.Tensor] = []
    vs: list[torch.Tensor] = []

    # each pair costs two passes over state-sized tensors (a batched dot product, a fused
    # multiply-add into `out`): on a GPU these products are bound by memory bandwidth
    def H(z: torch.Tensor) -> torch.Tensor:  # H z
        out = -z
        for u, v in zip(us, vs, strict=True):
            out.addcmul_(u, _dot(v, z))
        return out

    def Ht(z: torch.Tensor) -> torch.Tensor:  # H^T z
        out = -z
        for u, v in zip(us, vs, strict=True):
            out.addcmul_(v, _dot(u, z))
        return out

    if progress.see(x, fx):
        return progress.result(0, shape)
    for k in range(1, max_iter + 1):
        step = -H(fx)
        x_new = x + step
        f_new = F(x_new)
        if progress.see(x_new, f_new):
            return progress.result(k, shape)
        y = f_new - fx
        hy = H(y)
        denom = _dot(step, hy)
        denom = torch.where(denom.abs() < 1e-30, torch.full_like(denom, 1e-30), denom)
        u = (step - hy) / denom
        v = Ht(step)
        us.append(torch.nan_to_num(u))
        vs.append(torch.nan_to_num(v))
        if memory is not None and len(us) > memory:
            del us[0], vs[0]
        x, fx = x_new, f_new
    return progress.result(max_iter, shape)


def anderson(G: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, *, max_iter: int,
             tol: float, memory: int | None = None, scale: torch.Tensor | None = None,
             check_every: int = 1) -> tuple[torch.Tensor, SolveStats]:
    """Anderson acceleration (type II, no damping), one mixing per sample.

    The next iterate mixes the last ``memory`` (default 3) values G(x_i) with the weights (summing
    to 1) that minimise the norm of the same mix of residuals G(x_i) - x_i. Storage: two
    ``[B, memory, N]`` buffers; bookkeeping: two batched products over them per iteration.
    """
    m = memory or ANDERSON_MEMORY
    B, shape = x0.shape[0], x0.shape
    x = x0.reshape(B, -1)
    progress = _Progress(_scale(G, x0, scale), tol, check_every)
    gs = x.new_zeros(B, m, x.shape[1])  # G(x_i), newest at slot k % m
    fs = x.new_zeros(B, m, x.shape[1])  # residuals G(x_i) - x_i
    for k in range(max_iter):
        gx = G(x.view(shape)).reshape(B, -1)
        f = torch.sub(gx, x, out=fs[:, k % m])  # the residual goes straight into its slot
        if progress.see(x, f):
            return progress.result(k + 1, shape)
        gs[:, k % m] = gx
        del gx, f  # two state-sized tensors fewer alive during the next evaluation of G
        n = min(k + 1, m)
        h = torch.bmm(fs[:, :n], fs[:, :n].transpose(1, 2))  # [B, n, n] Gram matrix
        ridge = 1e-10 * h.diagonal(dim1=1, dim2=2).amax(1).clamp_min(1e-30)
        h = h + ridge.view(B, 1, 1) * torch.eye(n, dtype=h.dtype, device=h.device)
        w = torch.linalg.solve_ex(h, h.new_ones(B, n, 1))[0]  # no error check: no device sync
        w = w / w.sum(1, keepdim=True)
        x = torch.bmm(w.transpose(1, 2), gs[:, :n]).squeeze(1)
    progress.see(x, G(x.view(shape)).reshape(B, -1) - x, read=True)
    return progress.result(max_iter, shape)


def solve(method: str, G: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, *,
          max_iter: int, tol: float, memory: int | None = None,
          scale: torch.Tensor | None = None,
          check_every: int = 1) -> tuple[torch.Tensor, SolveStats]:
    if method == "broyden":
        return broyden(G, x0, max_iter=max_iter, tol=tol, memory=memory, scale=scale,
                       check_every=check_every)
    if method == "fixed_point":
        return fixed_point(G, x0, max_iter=max_iter, tol=tol, scale=scale,
                           check_every=check_every)
    if method == "anderson":
        return anderson(G, x0, max_iter=max_iter, tol=tol, memory=memory, scale=scale,
                        check_every=check_every)
    raise ValueError(f"solver: unknown method {method!r}; known: {', '.join(SOLVERS)}")
