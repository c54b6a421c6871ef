"""Solvers side by side at equal NFE: the code behind ``sdediff bench`` and ``benchmarks/``.

Every solver starts from the same prior draw (``PerSampleNoise(seed)``) on the
same kind of grid, with the step count that spends the NFE budget.  Quality is
measured two ways:

- ``error``: endpoint RMS per dimension against a tight DOP853 solution of the
  same PF-ODE from the same ``x_T`` (solvers whose configured instance draws no
  noise; by default only where the score is exact, i.e. analytic problems);
- ``quality``: the problem's metric (sliced W2 to fresh data, digits-FID).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import bootstrap
from torch import Tensor

from ..errors import ArgumentError
from ..noise import PerSampleNoise
from ..sampling import sample, solve
from ..solvers.base import Solver
from ..solvers.registry import get_solver, list_solvers, solver_class
from ..timesteps import timesteps
from .problems import Problem

__all__ = [
    "compare_solvers",
    "convergence_slope",
    "ends_at_zero",
    "fixed_grid",
    "fixed_grid_solvers",
    "median_time",
    "reference_endpoints",
    "rms_ratio",
    "steps_for_nfe",
]


def ends_at_zero(problem: Problem) -> bool:
    """Grids end at t = 0 where the SDE allows it (sigma(0) = 0), as EDM's do."""
    return float(problem.sde.sigma(0.0)) == 0.0


def fixed_grid(solver: Solver) -> bool:
    """Whether ``solver`` spends a known NFE on a given grid (adaptive ones choose their own)."""
    return not solver.adaptive


def fixed_grid_solvers(guided: bool = False) -> list[str]:
    """Registered solvers that are fixed-grid with their default options; the CFG++ ones
    (which ask for a guided model, and without one are their base samplers) only with
    ``guided=True``."""
    solvers = [get_solver(i.name) for i in list_solvers()]
    return [s.name for s in solvers if fixed_grid(s) and (guided or "guided" not in s.uses)]


def steps_for_nfe(solver: str | Solver, nfe: int, to_zero: bool = True) -> int | None:
    """The most steps whose NFE (the configured solver's own ``expected_nfe``) fits ``nfe``.

    ``solver`` is an instance (its options count) or a name (default options).
    ``None`` when even the shortest grid (2 steps to zero, else 1) costs more,
    or when the solver chooses its own steps.
    """
    instance = get_solver(solver) if isinstance(solver, str) else solver
    return instance.steps_for(nfe, to_zero=to_zero)


def _prior_draw(problem: Problem, n: int, seed: int, device, dtype) -> Tensor:
    z = PerSampleNoise(seed).normal((n, *problem.event_shape), device, dtype)
    return z * problem.sde.prior_std


def reference_endpoints(
    problem: Problem, n: int, seed: int, to_zero: bool, device, tol: float = 1e-10
) -> Tensor:
    """DOP853 at ``rtol = atol = tol`` in float64 from the benchmark's ``x_T``."""
    x_T = _prior_draw(problem, n, seed, device, torch.float64)
    ts = timesteps(problem.sde, 2, "uniform", to_zero=to_zero, device=device)
    with torch.inference_mode():
        return solve(problem.model, problem.sde, x_T, ts, "dop853", rtol=tol, atol=tol).x


def compare_solvers(
    problem: Problem,
    solvers: Sequence[str],
    nfes: Sequence[int],
    *,
    num_samples: int = 2048,
    seed: int = 0,
    schedule: str = "karras",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    endpoint_error: bool | None = None,
    solver_options: dict[str, dict[str, Any]] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    reference: Tensor | None = None,
) -> list[dict[str, Any]]:
    """One row per (solver, NFE budget): steps, counted NFE, error, quality, speed.

    Each solver is built once with its ``solver_options``, and that instance's
    metadata decides its step count per budget and whether it is judged by
    endpoint error.  Adaptive solvers (no fixed NFE) and budgets below a
    solver's cheapest grid are skipped.  ``endpoint_error`` defaults to
    ``True`` for analytic problems, whose exact score makes the DOP853 endpoint
    the ground truth of each solver's own path.  Pass ``reference``
    (``reference_endpoints`` with the same ``num_samples`` and ``seed``) to reuse one.
    """
    to_zero = ends_at_zero(problem)
    if endpoint_error is None:
        endpoint_error = problem.mixture is not None
    if not endpoint_error:
        reference = None
    elif reference is None:
        reference = reference_endpoints(problem, num_samples, seed, to_zero, device)
    rows = []
    for name in solvers:
        canonical = solver_class(name).info.name  # options are keyed by canonical name
        solver = get_solver(name, **(solver_options or {}).get(canonical, {}))
        for budget in nfes:
            steps = steps_for_nfe(solver, budget, to_zero)
            if steps is None:
                continue
            with torch.inference_mode():
                res = sample(
                    problem.model,
                    problem.sde,
                    (num_samples, *problem.event_shape),
                    solver,
                    steps,
                    schedule,
                    noise=PerSampleNoise(seed),
                    device=device,
                    dtype=dtype,
                    to_zero=to_zero,
                )
            error = float("nan")
            if reference is not None and not solver.stochastic:
                diff = res.x.double() - reference
                error = float(diff.pow(2).mean().sqrt())
            row = {
                "solver": solver.name,
                "kind": solver.kind,
                "nfe_budget": budget,
                "steps": steps,
                "nfe": res.nfe,
                "error": error,
                "metric": problem.metric_name,
                "quality": problem.quality(res.x, seed),
                "wall_time": res.wall_time,
                "samples_per_s": num_samples / res.wall_time,
            }
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def convergence_slope(nfe: Sequence[float], error: Sequence[float]) -> float:
    """Least-squares slope of ``log error`` against ``log NFE`` (minus the order)."""
    pts = np.array([(n, e) for n, e in zip(nfe, error, strict=True) if e > 0], dtype=float)
    if len(pts) < 2:
        return float("nan")
    return float(np.polyfit(np.log(pts[:, 0]), np.log(pts[:, 1]), 1)[0])


def rms_ratio(
    errors: Tensor,
    baseline: Tensor,
    confidence: float = 0.95,
    seed: int = 0,
    resamples: int = 9999,
) -> tuple[float, float, float]:
    """``sqrt(mean errors / mean baseline)``, the ratio of two endpoint RMS errors from
    per-draw squared errors of the same draws, with its paired bootstrap interval (BCa,
    scipy): ``(ratio, low, high)``.  Where a few draws hold most of the error the ratio
    rests on them, and the interval says how far it could move on other draws."""
    a, b = (np.asarray(e.detach().cpu().double()) for e in (errors, baseline))
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ArgumentError(
            f"need two equal 1-D sets of at least 2 errors, got {a.shape}, {b.shape}"
        )
    if not b.sum() > 0:
        raise ArgumentError("the baseline has no error: the ratio is undefined")

    def ratio(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.sqrt(x.mean(axis) / y.mean(axis))

    value = float(ratio(a, b))
    if np.allclose(a * b.sum(), b * a.sum(), rtol=1e-12, atol=0.0):
        return value, value, value  # proportional errors: every resample gives the ratio
    result = bootstrap(  # 256 resamples at a time: memory bounded for many draws
        (a, b), ratio, paired=True, vectorized=True, confidence_level=confidence,
        n_resamples=resamples, method="BCa", batch=256, random_state=np.random.default_rng(seed),
    )  # fmt: skip
    interval = result.confidence_interval
    return value, float(interval.low), float(interval.high)


def median_time(fn: Callable[[], Any], repeats: int = 5) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
