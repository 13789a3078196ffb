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
    method: str = "broyden"
    max_iter: int = 30
    tol: float = 1e-4


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


class _Adjoint(torch.autograd.Function):
    """Identity forward; the backward replaces the incoming gradient by the adjoint solution."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, state: torch.Tensor,  # type: ignore[override]
                frozen_map: Callable[[torch.Tensor], torch.Tensor], cfg: AdjointConfig,
                log: AdjointLog) -> torch.Tensor:
        ctx.save_for_backward(state)
        ctx.frozen_map, ctx.cfg, ctx.log = frozen_map, cfg, log
        return z.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (state,) = ctx.saved_tensors
        cfg: AdjointConfig = ctx.cfg
        with torch.enable_grad():
            a = state.detach().requires_grad_(True)
            y = ctx.frozen_map(a)

        def G(g: torch.Tensor) -> torch.Tensor:
            (jt,) = torch.autograd.grad(y, a, g, retain_graph=True)
            return jt + grad

        g, stats = solve(cfg.method, G, grad, max_iter=cfg.max_iter, tol=cfg.tol)
        ctx.log.solves.append(stats)
        return g.detach(), None, None, None, None


def implicit_equilibrium(state: torch.Tensor, live_map: Callable[[torch.Tensor], torch.Tensor],
                         frozen_map: Callable[[torch.Tensor], torch.Tensor],
                         cfg: AdjointConfig, log: AdjointLog) -> torch.Tensor:
    """Attach the implicit gradient to equilibrium rates computed without a graph.

    ``state``: ``[B, N]`` rates from the forward simulation. ``live_map``: the equilibrium map with
    the parameters' graph; ``frozen_map``: the same map with parameters detached (used only for
    vector-Jacobian products w.r.t. the state). The returned tensor has the value of ``state``
    (so the forward is exactly what the simulation computed) and IDE gradients.
    """
    state = state.detach()
    z = live_map(state)
    z = z + (state - z).detach()
    return _Adjoint.apply(z, state, frozen_map, cfg, log)
