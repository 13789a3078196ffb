"""The adjoint root finders on linear systems with a known solution."""

from __future__ import annotations

import pytest
import torch

from fsnn.platform.config import load_config
from fsnn.platform.solvers import SOLVERS, anderson, broyden, fixed_point, solve
from fsnn.platform.trainer import model_from_config


def _system(seed: int = 0, batch: int = 3, n: int = 40, radius: float = 0.9):
    """G(g) = A_b g + c_b per sample, with spectral radius of A_b below ``radius``."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, n, n, generator=g, dtype=torch.float64)
    a = a / torch.linalg.matrix_norm(a, ord=2).view(-1, 1, 1) * radius
    c = torch.randn(batch, n, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - a, c)
    return (lambda x: torch.einsum("bij,bj->bi", a, x) + c), c, exact


@pytest.mark.parametrize("memory", [None, 1, 3, 10])
def test_broyden_finds_the_solution_with_any_memory(memory: int | None) -> None:
    G, c, exact = _system()
    x, stats = broyden(G, c, max_iter=200, tol=1e-10, memory=memory)
    assert stats.converged, stats
    assert float((x - exact).norm() / exact.norm()) < 1e-8


def test_a_memory_larger_than_the_iterations_changes_nothing() -> None:
    G, c, _ = _system(seed=1)
    full, s_full = broyden(G, c, max_iter=25, tol=1e-9)
    capped, s_capped = broyden(G, c, max_iter=25, tol=1e-9, memory=s_full.iterations + 1)
    assert torch.equal(full, capped) and s_full == s_capped
    short, s_short = broyden(G, c, max_iter=25, tol=1e-9, memory=2)
    assert not torch.equal(full, short)  # the cap does act once the history is longer
    assert s_short.iterations >= s_full.iterations


@pytest.mark.parametrize("method", SOLVERS)
@pytest.mark.parametrize("memory", [None, 2])
def test_every_solver_finds_the_solution(method: str, memory: int | None) -> None:
    G, c, exact = _system(seed=4, radius=0.8)
    x, stats = solve(method, G, c, max_iter=400, tol=1e-10, memory=memory)
    assert stats.converged, stats
    assert float((x - exact).norm() / exact.norm()) < 1e-8


@pytest.mark.parametrize("method", SOLVERS)
def test_a_known_scale_saves_one_evaluation_and_changes_nothing(method: str) -> None:
    G, c, _ = _system(seed=5)
    calls = []

    def counted(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return G(x)

    x1, s1 = solve(method, counted, c, max_iter=50, tol=1e-9)
    n1 = len(calls)
    calls.clear()
    x2, s2 = solve(method, counted, c, max_iter=50, tol=1e-9, scale=G(torch.zeros_like(c)).norm())
    assert torch.equal(x1, x2) and s1 == s2
    assert len(calls) == n1 - 1


def test_broyden_needs_fewer_iterations_than_fixed_point() -> None:
    """Eigenvalues spread up to 0.95: fixed-point steps shrink the slowest error by 0.95."""
    g = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(2, 40, 40, generator=g, dtype=torch.float64))
    lam = torch.linspace(0.0, 0.95, 40, dtype=torch.float64)
    a = q @ torch.diag(lam) @ q.transpose(1, 2)
    c = torch.randn(2, 40, generator=g, dtype=torch.float64)
    exact = torch.linalg.solve(torch.eye(40, dtype=torch.float64) - a, c)

    def G(x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bij,bj->bi", a, x) + c

    _, sb = solve("broyden", G, c, max_iter=500, tol=1e-8)
    xa, sa = anderson(G, c, max_iter=500, tol=1e-8)
    xf, sf = fixed_point(G, c, max_iter=500, tol=1e-8)
    assert sb.converged and sf.converged and sa.converged
    assert sb.iterations < sf.iterations / 3
    assert sa.iterations < sf.iterations / 3
    assert float((xa - exact).norm() / exact.norm()) < 1e-6
    assert float((xf - exact).norm() / exact.norm()) < 1e-6


def test_config_passes_the_memory_and_check_interval_to_the_model() -> None:
    cfg = load_config(None, ["method.memory=4", "method.check_every=3"])
    adjoint = model_from_config(cfg, num_classes=10).adjoint
    assert (adjoint.memory, adjoint.check_every) == (4, 3)
    default = model_from_config(load_config(None), num_classes=10).adjoint
    assert (default.memory, default.check_every) == (None, 1)


def _recorded(G):
    """G that records every iterate it is applied to."""
    seen: list[torch.Tensor] = []

    def wrapped(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.detach().clone())
        return G(x)
    return wrapped, seen


@pytest.mark.parametrize("method", SOLVERS)
@pytest.mark.parametrize("every", [2, 5])
def test_reading_the_residual_every_k_iterations(method: str, every: int) -> None:
    """The same iterates as reading every time, at most k - 1 of them more, and the one kept
    is the one with the lowest residual among all that were evaluated."""
    G, c, exact = _system(seed=6, radius=0.9)
    G1, seen1 = _recorded(G)
    _, s1 = solve(method, G1, c, max_iter=200, tol=1e-8)
    Gk, seenk = _recorded(G)
    xk, sk = solve(method, Gk, c, max_iter=200, tol=1e-8, check_every=every)
    assert s1.converged and sk.converged
    assert s1.iterations <= sk.iterations <= s1.iterations + every - 1
    for a, b in zip(seen1, seenk, strict=False):  # the iteration itself is unchanged
        assert torch.equal(a, b)
    residuals = [float((G(x) - x).norm() / c.norm()) for x in seenk]
    best = min(range(len(seenk)), key=residuals.__getitem__)
    assert torch.equal(xk, seenk[best])
    assert sk.residual == pytest.approx(residuals[best], rel=1e-9) and sk.residual <= s1.residual
    assert float((xk - exact).norm() / exact.norm()) < 1e-6


@pytest.mark.parametrize("method", SOLVERS)
def test_a_check_interval_beyond_max_iter_is_a_fixed_budget(method: str) -> None:
    G, c, _ = _system(seed=7, radius=0.9)
    Gk, seen = _recorded(G)
    x, stats = solve(method, Gk, c, max_iter=12, tol=1e-30, check_every=100,
                     scale=c.norm())
    assert stats.iterations == 12 and not stats.converged
    residuals = [float((G(z) - z).norm() / c.norm()) for z in seen]
    assert torch.equal(x, seen[min(range(len(seen)), key=residuals.__getitem__)])
    assert stats.residual == pytest.approx(min(residuals), rel=1e-9)


def test_a_check_interval_below_one_is_refused() -> None:
    G, c, _ = _system()
    with pytest.raises(ValueError, match="check_every: must be a positive integer"):
        solve("anderson", G, c, max_iter=5, tol=1e-6, check_every=0)
