"""Time grids fitted to a model: the grid that minimises a solver's error at a fixed NFE.

At 5–10 model evaluations the choice of the few times a solver visits sets most of
its error, and the best choice depends on the model.  ``tune_timesteps`` fits the
grid of one solver at one NFE to one model, using nothing but the model: prior draws
``x_T`` (seeded), their endpoints under a fine solve (``fine_solve``), and the endpoint
RMS error per dimension of the solver on a candidate grid,

    E(grid) = sqrt( mean_i |solve(x_T^i; grid) − solve_fine(x_T^i)|² / d ).

Three fitting methods (``method``; ``"search"`` by default, the one that takes any
fixed-grid solver; see docs/benchmarks.md for how they compare):

- ``"dp"``: dynamic programming over a fine candidate grid uniform in log-SNR
  (after GITS, Chen et al. 2024).  The fine solve's states ``x_k`` and denoised
  values at the candidates give the error of one DDIM step between any two of them
  at no further model cost; the path of ``steps`` steps with the least summed local
  error is the grid.  It needs ``candidates`` model calls in all.
- ``"search"``: Powell's derivative-free search (scipy) over the log-SNR increments
  of the grid, minimising ``log E`` of the solver itself (any fixed-grid solver,
  multistep history included), started from the best of the standard grids (and of
  the ``dp`` grid, with ``"dp+search"``).  ``freedom`` limits the search to a
  polynomial warp of that many coefficients (fewer parameters, less fitting to the
  draws).  The search keeps every step at least 1/20 of the longest in log-SNR.  The
  result is judged against its start on as many fresh draws (another seed) and the
  better of the two is returned: never worse than the start on the fit or the check.
- ``"gradient"`` (``deis`` and ``ipndm``): Adam on the same log-SNR increments, with
  the gradient of ``log E`` taken through the solver itself (its weights are
  differentiable functions of the grid, ``quadrature_weights``).  With
  ``fit_weights=True`` it then fits the solver's step weights with the grid: one
  correction per step and history term (the solver's ``corrections``), the idea of
  learned multistep solvers (Shaul et al. 2024, Frankel et al. 2025) at the cost of a
  grid tuning.  Judged against its start on fresh draws like the search, and, with
  weights, against the fitted grid alone (the weights, having more to fit, can overfit):
  the one with the least error there is returned (``record["kept"]``).

The result (:class:`TunedGrid`) saves and loads as JSON beside a checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..devices import checked_device, checked_dtype
from ..errors import ArgumentError
from ..models import Cond
from ..reverse import ReverseProcess, ScoreFn
from ..sdes import SDE
from ..solvers.base import Solver
from ..solvers.registry import get_solver
from ..solvers.scaled_multistep import ScaledMultistep
from ..timesteps import SCHEDULES, schedule_name, timesteps
from .grid_file import TunedGrid, load_grid
from .objective import (
    FINE_STEPS,
    draw_errors,
    endpoint_error,
    fine_solve,
    prior_draws,
    worst_share,
)
from .optimisers import dp_lams, gradient_fit, search

START_SCHEDULES = ("uniform", "quadratic", "karras", "logsnr")
"""The standard grids ``tune_timesteps`` scores first unless told others."""

__all__ = [
    "METHODS",
    "TunedGrid",
    "check_request",
    "draw_errors",
    "endpoint_error",
    "fine_solve",
    "load_grid",
    "prior_draws",
    "tune_timesteps",
    "worst_share",
]

METHODS = ("dp", "search", "dp+search", "gradient")
MAX_NFE = 10_000  # a tuned grid beyond this is a mistake: the fine reference has fewer steps


def check_request(
    solver: str | Solver, nfe: int, method: str, fit_weights: bool, to_zero: bool = True
) -> Solver:  # to_zero: whether the grid ends at t = 0
    """The solver of a tuning request, or an ``ArgumentError`` saying why it cannot be
    tuned so (what ``tune_timesteps`` checks before it starts; callers may check early)."""
    solver = solver if isinstance(solver, Solver) else get_solver(solver)
    if isinstance(nfe, bool) or not isinstance(nfe, int) or not 1 <= nfe <= MAX_NFE:
        raise ArgumentError(f"nfe must be an integer from 1 to {MAX_NFE}, got {nfe!r}")
    if method not in METHODS:
        raise ArgumentError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "gradient" and not isinstance(solver, ScaledMultistep):
        raise ArgumentError(
            f"method 'gradient' differentiates deis and ipndm; tune {solver.name} with 'search'"
        )
    if fit_weights and method != "gradient":
        raise ArgumentError("fit_weights needs method='gradient'")
    if solver.steps_for(nfe, to_zero=to_zero) is None:
        raise ArgumentError(
            f"{solver.name} cannot run on {nfe} evaluations (adaptive, or the shortest grid "
            "costs more)"
        )
    return solver


def tune_timesteps(
    model: ScoreFn,
    sde: SDE,
    *,
    nfe: int,
    solver: str | Solver = "dpmpp_3m",
    shape: tuple[int, ...],
    samples: int = 256,
    seed: int = 0,
    cond: Cond = None,
    method: str = "search",
    to_zero: bool | None = None,
    candidates: int = 80,
    max_evaluations: int = 300,
    freedom: int | None = None,
    fit_weights: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
    on_evaluation: Callable[[int], None] | None = None,
    starts: Sequence[str] = START_SCHEDULES,
) -> TunedGrid:
    """The grid of ``solver`` at ``nfe`` evaluations fitted to ``model`` (see the module).

    ``shape`` is one sample's shape; ``samples`` quasi-random prior draws come from
    ``seed`` (``prior_draws``; fit on these, judge on others).  ``cond`` gives one row
    per draw.  ``to_zero`` ends the grid at t = 0 (the last step returns x̂_0), as the
    standard grids do with it.
    ``max_evaluations`` bounds the search's solves (with ``"gradient"``: the iterations of
    each stage, a solve and its gradient each); ``candidates`` is the size of the ``dp``
    candidate grid.  ``fit_weights`` (``"gradient"`` only) fits the solver's step weights
    with the grid: the result's ``solver_options`` then carry its ``corrections``.
    ``to_zero`` (``None``: wherever ``sigma(0) = 0``, so VE grids end at ``t_min``).
    ``on_evaluation(n)`` follows the n-th solve of a candidate grid (a progress bar).
    ``starts`` names the standard grids scored first (any of ``SCHEDULES``; the best one
    starts the fit): by default the four classic families.
    """
    device, dtype = checked_device(device), checked_dtype(dtype)
    to_zero = float(sde.sigma(0.0)) == 0.0 if to_zero is None else to_zero
    solver = start_solver = check_request(solver, nfe, method, fit_weights, to_zero)
    steps = solver.steps_for(nfe, to_zero=to_zero)
    if not 2 <= candidates <= FINE_STEPS + 1 or not 1 <= max_evaluations <= 100_000:
        raise ArgumentError(
            f"need 2 <= candidates <= {FINE_STEPS + 1} and 1 <= max_evaluations <= 100000, got "
            f"{candidates} and {max_evaluations}"
        )
    if samples < 1:
        raise ArgumentError(f"samples must be >= 1, got {samples}")
    start_time = time.perf_counter()
    x_T = prior_draws(sde, samples, shape, seed).to(device=device, dtype=dtype)
    t_max, t_min = float(sde.T), float(sde.t_min)
    lam_start, lam_end = float(sde.log_snr(t_max)), float(sde.log_snr(t_min))
    inner = steps - 1 if to_zero else steps  # intervals between T and t_min
    tail = [0.0] if to_zero else []

    def grid_of(lams: np.ndarray) -> list[float]:
        middle = sde.t_from_log_snr(torch.tensor(lams[1:-1], dtype=torch.float64)).tolist()
        return [t_max, *middle, t_min, *tail]

    reference, states = fine_solve(model, sde, x_T, cond, to_zero)
    every = np.linspace(0, FINE_STEPS, candidates).round().astype(int)  # on the fine grid
    cand_lams = np.linspace(lam_start, lam_end, FINE_STEPS + 1)[every]
    evaluations = [0]

    def error(grid: list[float]) -> float:
        evaluations[0] += 1
        if on_evaluation is not None:
            on_evaluation(evaluations[0])
        return endpoint_error(model, sde, x_T, grid, solver, reference, cond)

    names = list(dict.fromkeys(schedule_name(name) for name in starts))
    if not names:
        raise ArgumentError(f"starts needs at least one schedule of {', '.join(SCHEDULES)}")
    starts = {name: timesteps(sde, steps, name, to_zero=to_zero).tolist() for name in names}
    if "dp" in method:
        starts["dp"] = grid_of(dp_lams(model, sde, states[every], cand_lams, inner, cond))
    scored = {name: error(grid) for name, grid in starts.items()}
    best = min(scored, key=scored.get)
    grid = starts[best]
    if "search" in method and inner > 1:
        grid = search(grid, sde, grid_of, lam_start, lam_end, error, max_evaluations, freedom)
    contenders = {}  # name -> (grid, solver), judged on fresh draws below
    if method == "gradient" and inner > 1:
        fits = gradient_fit(
            ReverseProcess(model, sde, x_T, cond=cond), solver, x_T, reference, grid,
            (lam_start, lam_end), max_evaluations, fit_weights, to_zero, evaluations,
            on_evaluation,
        )  # fmt: skip
        grid, corrections = fits[-1]
        if corrections is not None:
            solver = get_solver(solver.name, **{**solver.options(), "corrections": corrections})
            contenders["tuned grid"] = (fits[0][0], start_solver)  # the weights may overfit
    final = error(grid)
    if final > scored[best]:  # the fit never leaves its start worse off
        grid, final, solver = starts[best], scored[best], start_solver
    contenders = {"tuned": (grid, solver), **contenders, best: (starts[best], start_solver)}
    # Judge the contenders on draws the fit never saw; keep the best there.
    x_check = prior_draws(sde, samples, shape, seed + 7919).to(device=device, dtype=dtype)
    check_reference, _ = fine_solve(model, sde, x_check, cond, to_zero)
    checked = {
        name: draw_errors(model, sde, x_check, g, method_, check_reference, cond)
        for name, (g, method_) in contenders.items()
    }
    validation = {name: float(errors.mean().sqrt()) for name, errors in checked.items()}
    kept = min(validation, key=validation.get)  # the first of equals: the fit
    if kept != "tuned":
        grid, solver = contenders[kept]
        final = scored[best] if kept == best else error(grid)
    return TunedGrid(
        times=[float(t) for t in grid],
        solver=solver.name,
        solver_options=solver.options(),
        nfe=int(solver.expected_nfe(grid)),
        sde=repr(sde),
        record={
            "method": method + (" with weights" if fit_weights else ""),
            "samples": samples,
            "seed": seed,
            "start": best,
            "standard": min(names, key=scored.get),  # the best grid without a fit
            "to_zero": to_zero,
            "start_errors": scored,
            "error": final,
            "validation": validation,
            "kept": kept,
            "check_worst_share": worst_share(checked[kept]),
            "evaluations": evaluations[0],
            "seconds": round(time.perf_counter() - start_time, 2),
        },
    )
