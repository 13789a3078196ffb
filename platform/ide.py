"""Implicit differentiation on the equilibrium state (IDE).

The forward pass is any simulation that produces the equilibrium rates ``a*`` (no graph through
time). The backward pass uses the equilibrium equation ``a* = f(a*; theta)``: for a loss L,

    dL/dtheta = (df/dtheta)^T g,   where   g = J_f(a*)^T g + dL/da*

is solved with Broyden or fixed-point iterations on vector-Jacobian products of ``f``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fsnn.platform.solvers import SolveStats, solve


@dataclass
class AdjointConfig:
    method: str = "anderson"
    max_iter: int = 30
    tol: float = 1e-4
    memory: int | None = None  # Broyden: update pairs kept (None: all); Anderson: window (3)
    check_every: int = 1  # host reads of the residual: every k iterations (solvers.py)


@dataclass
class AdjointLog:
    """Statistics of the adjoint solves since the last :meth:`reset` (read by the trainer)."""

    solves: list[SolveStats] = field(default_factory=list)

    def reset(self) -> None:
        self.solves.clear()

    def summary(self) -> dict[str, float]:
        if not self.solves:
            return {}
        n = len(self.solves)
        return {
            "adjoint_iterations": sum(s.iterations for s in self.solves) / n,
            "adjoint_residual": max(s.residual for s in self.solves),
            "adjoint_unconverged": float(sum(not s.converged for s in self.solves)),
        }


JTProduct = Callable[[torch.Tensor], torch.Tensor]
AdjointSolve = Callable[[JTProduct, torch.Tensor], torch.Tensor]
"""``solve(jt, dL/da) -> g`` with ``g = J^T g + dL/da``; ``jt(v)`` is the product ``J^T v``."""


class _Adjoint(torch.autograd.Function):
    """Identity forward; the backward replaces the incoming gradient by the adjoint solution."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, state: torch.Tensor,  # type: ignore[override]
                frozen_map: Callable[[torch.Tensor], torch.Tensor],
                adjoint_solve: AdjointSolve) -> torch.Tensor:
        ctx.save_for_backward(state)
        ctx.frozen_map, ctx.adjoint_solve = frozen_map, adjoint_solve
        return z.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (state,) = ctx.saved_tensors
        with torch.enable_grad():
            a = state.detach().requires_grad_(True)
            y = ctx.frozen_map(a)

        def jt(v: torch.Tensor) -> torch.Tensor:
            (out,) = torch.autograd.grad(y, a, v, retain_graph=True)
            return out

        return ctx.adjoint_solve(jt, grad).detach(), None, None, None


def adjoint_solver(cfg: AdjointConfig, log: AdjointLog) -> AdjointSolve:
    """Broyden or fixed-point iterations on g = J^T g + dL/da, each solve recorded in ``log``."""
    def run(jt: JTProduct, grad: torch.Tensor) -> torch.Tensor:
        # G(0) = J^T 0 + dL/da = dL/da: its norm is the residual's scale, no extra product
        g, stats = solve(cfg.method, lambda v: jt(v) + grad, grad, max_iter=cfg.max_iter,
                         tol=cfg.tol, memory=cfg.memory, scale=grad.norm(),
                         check_every=cfg.check_every)
        log.solves.append(stats)
        return g
    return run


def attach_implicit_gradient(point: torch.Tensor,
                             live_map: Callable[[torch.Tensor], torch.Tensor],
                             frozen_map: Callable[[torch.Tensor], torch.Tensor],
                             adjoint_solve: AdjointSolve,
                             value: torch.Tensor | None = None) -> torch.Tensor:
    """A tensor with the value ``value`` (default ``point``) whose gradient is the implicit one
    at ``point``: through ``live_map`` (the equilibrium map with the parameters' graph) after
    ``adjoint_solve``, which uses vector-Jacobian products of ``frozen_map`` (parameters
    detached) w.r.t. the state."""
    point = point.detach()
    z = live_map(point)
    target = point if value is None else value.detach()
    z = z + (target - z).detach()
    return _Adjoint.apply(z, point, frozen_map, adjoint_solve)


def implicit_equilibrium(state: torch.Tensor, live_map: Callable[[torch.Tensor], torch.Tensor],
                         frozen_map: Callable[[torch.Tensor], torch.Tensor],
                         cfg: AdjointConfig, log: AdjointLog) -> torch.Tensor:
    """Attach the implicit gradient to equilibrium rates computed without a graph.

    ``state``: ``[B, N]`` rates from the forward simulation; the returned tensor has exactly
    that value (the forward is what the simulation computed) and IDE gradients.
    """
    return attach_implicit_gradient(state, live_map, frozen_map, adjoint_solver(cfg, log))
