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

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import ndtri
from scipy.stats import qmc
from torch import Tensor

from .atomic import atomic_path
from .benchmark import steps_for_nfe
from .errors import ArgumentError
from .models import Cond
from .reverse import ReverseProcess, ScoreFn
from .sampling import solve
from .sdes import SDE
from .solvers.base import Solver
from .solvers.registry import get_solver
from .solvers.scaled_multistep import ScaledMultistep, quadrature_weights
from .timesteps import SCHEDULES, timesteps

__all__ = [
    "TunedGrid",
    "draw_errors",
    "endpoint_error",
    "load_grid",
    "prior_draws",
    "tune_timesteps",
    "worst_share",
]

FORMAT, VERSION = "sde-diffusion tuned grid", 1
METHODS = ("dp", "search", "dp+search", "gradient")


@dataclass
class TunedGrid:
    """A fitted time grid: ``times`` (decreasing, ending at ``t_min`` or 0) for ``solver``
    with ``solver_options`` at ``nfe`` evaluations, the ``sde`` it belongs to, and
    ``record``: how it was fitted (draws, seed, method, start and final error, seconds)."""

    times: list[float]
    solver: str
    solver_options: dict[str, Any]
    nfe: int
    sde: str
    record: dict[str, Any] = field(default_factory=dict)

    def tensor(self) -> Tensor:
        """The grid as a float64 tensor (what ``sd.solve`` and ``sd.sample(grid=...)`` take)."""
        return torch.tensor(self.times, dtype=torch.float64)

    def save(self, path: str | Path) -> Path:
        """Write the grid as JSON, atomically."""
        with atomic_path(path) as tmp:
            tmp.write_text(
                json.dumps({"format": FORMAT, "version": VERSION, **asdict(self)}, indent=1)
            )
        return Path(path)


def load_grid(path: str | Path) -> TunedGrid:
    """A grid written by :meth:`TunedGrid.save`; anything else is a clear ``ValueError``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArgumentError(f"cannot read a tuned grid from {path}: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArgumentError(f"{path} is not a tuned grid (sdediff tune writes them)")
    if data.get("version") != VERSION:
        raise ArgumentError(
            f"{path} is a tuned grid of format version {data.get('version')!r}; this "
            f"version of sde-diffusion reads version {VERSION}"
        )
    fields = {k: data.get(k) for k in ("times", "solver", "solver_options", "nfe", "sde")}
    times = fields["times"]
    if (
        not isinstance(times, list)
        or len(times) < 2
        or not all(isinstance(t, (int, float)) and math.isfinite(t) for t in times)
        or any(a <= b for a, b in pairwise(times))
        or not isinstance(fields["solver"], str)
        or not isinstance(fields["solver_options"], dict)
        or not isinstance(fields["nfe"], int)
        or not isinstance(fields["sde"], str)
    ):
        raise ArgumentError(f"{path}: a tuned grid needs decreasing finite times and its solver")
    return TunedGrid(**fields, record=data.get("record") or {})


def endpoint_error(
    model: ScoreFn,
    sde: SDE,
    x_T: Tensor,
    grid: Tensor | list[float],
    solver: Solver,
    reference: Tensor,
    cond: Cond = None,
) -> float:
    """Endpoint RMS error per dimension of ``solver`` on ``grid`` against ``reference``."""
    return float(draw_errors(model, sde, x_T, grid, solver, reference, cond).mean().sqrt())


def draw_errors(
    model: ScoreFn,
    sde: SDE,
    x_T: Tensor,
    grid: Tensor | list[float],
    solver: Solver,
    reference: Tensor,
    cond: Cond = None,
) -> Tensor:
    """Each draw's squared endpoint error per dimension, |x̂ − x_ref|² / d (their mean is E²)."""
    with torch.inference_mode():
        x = solve(model, sde, x_T, torch.as_tensor(grid, dtype=torch.float64), solver, cond=cond).x
    return (x.double() - reference.double()).pow(2).flatten(1).mean(1)


def worst_share(errors: Tensor, fraction: float = 0.01) -> float:
    """The share of the summed squared ``errors`` held by the worst ``fraction`` of the
    draws (at least one): near 1, the error rests on a few draws and an estimate from as
    many is noisy."""
    count = max(1, int(len(errors) * fraction))
    total = float(errors.sum())
    return float(errors.topk(count).values.sum()) / total if total > 0 else 0.0


def prior_draws(sde: SDE, samples: int, shape: tuple[int, ...], seed: int) -> Tensor:
    """``samples`` prior draws from a scrambled Sobol sequence (seeded) mapped through the
    normal quantile: quasi-random draws estimate the mean error over the prior with far
    less variance than as many independent ones, so a grid fitted on them fits the prior,
    not the draws."""
    dim = math.prod(shape)
    with warnings.catch_warnings():  # Sobol prefers powers of two; any count is still fine
        warnings.simplefilter("ignore", UserWarning)
        u = qmc.Sobol(dim, scramble=True, seed=seed).random(samples)
    z = torch.from_numpy(ndtri(np.clip(u, 1e-12, 1 - 1e-12)))
    return z.reshape(samples, *shape) * sde.prior_std


FINE_STEPS = 240


def fine_solve(
    model: ScoreFn, sde: SDE, x_T: Tensor, cond: Cond = None, to_zero: bool = True
) -> tuple[Tensor, Tensor]:
    """The endpoint of an accurate PF-ODE solve (UniPC-3 with its corrector, order 4, on
    ``FINE_STEPS`` log-SNR steps) and the states at its grid times (a fixed cost of 240
    calls: scipy's error control on a float32 network can take thousands)."""
    grid = timesteps(sde, FINE_STEPS, "logsnr")
    if to_zero:
        grid = torch.cat([grid, grid.new_zeros(1)])
    with torch.inference_mode():
        res = solve(model, sde, x_T, grid, get_solver("unipc", order=3), cond=cond,
                    return_trajectory=True)  # fmt: skip
    return res.x, res.trajectory


def check_request(
    solver: str | Solver, nfe: int, method: str, fit_weights: bool, to_zero: bool = True
) -> Solver:
    """The solver of a tuning request, or an ``ArgumentError`` saying why it cannot be
    tuned so (what ``tune_timesteps`` checks before it starts; callers may check early)."""
    solver = get_solver(solver) if isinstance(solver, str) else solver
    if method not in METHODS:
        raise ArgumentError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "gradient" and not isinstance(solver, ScaledMultistep):
        raise ArgumentError(
            f"method 'gradient' differentiates deis and ipndm; tune {solver.name} with 'search'"
        )
    if fit_weights and method != "gradient":
        raise ArgumentError("fit_weights needs method='gradient'")
    if steps_for_nfe(solver, nfe, to_zero=to_zero) is None:
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
    to_zero: bool = True,
    candidates: int = 80,
    max_evaluations: int = 300,
    freedom: int | None = None,
    fit_weights: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
    on_evaluation: Callable[[int], None] | None = None,
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
    ``on_evaluation(n)`` follows the n-th solve of a candidate grid (a progress bar).
    """
    solver = start_solver = check_request(solver, nfe, method, fit_weights, to_zero)
    steps = steps_for_nfe(solver, nfe, to_zero=to_zero)
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

    starts = {name: timesteps(sde, steps, name, to_zero=to_zero).tolist() for name in SCHEDULES}
    if "dp" in method:
        starts["dp"] = grid_of(_dp_lams(model, sde, states[every], cand_lams, inner, cond))
    scored = {name: error(grid) for name, grid in starts.items()}
    best = min(scored, key=scored.get)
    grid = starts[best]
    if "search" in method and inner > 1:
        grid = _search(grid, sde, grid_of, lam_start, lam_end, error, max_evaluations, freedom)
    contenders = {}  # name -> (grid, solver), judged on fresh draws below
    if method == "gradient" and inner > 1:
        fits = _gradient(
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
            "start_errors": scored,
            "error": final,
            "validation": validation,
            "kept": kept,
            "check_worst_share": worst_share(checked[kept]),
            "evaluations": evaluations[0],
            "seconds": round(time.perf_counter() - start_time, 2),
        },
    )


def _dp_lams(model, sde, states: Tensor, lams: np.ndarray, steps: int, cond: Cond) -> np.ndarray:
    """The ``steps``-step path through the candidate log-SNRs with the least summed
    local error of one DDIM step from the fine solve's state to its state later."""
    times = sde.t_from_log_snr(torch.tensor(lams, dtype=torch.float64)).tolist()
    process = ReverseProcess(model, sde, states[0], cond=cond, grid=times)
    with torch.inference_mode():
        denoised = torch.stack([process.denoise(states[k], t) for k, t in enumerate(times[:-1])])
    m = len(times)
    alpha = np.array([process.at(t).alpha for t in times])
    sigma = np.array([process.at(t).sigma for t in times])
    flat_x = states.flatten(2).double()  # (m, n, d)
    flat_d = denoised.flatten(2).double()
    eps = (flat_x[:-1] - torch.tensor(alpha[:-1])[:, None, None] * flat_d) / torch.tensor(
        sigma[:-1]
    )[:, None, None]
    # An error at ρ_j reaches the end damped as for Gaussian data of the endpoints' spread
    # s: by α_end/α_j · sqrt((s² + ρ_end²)/(s² + ρ_j²)) (the PF-ODE's linear map there).
    rho = sigma / alpha
    spread = float(flat_x[-1].var(0).mean())
    damping = alpha[-1] / alpha * np.sqrt((spread + rho[-1] ** 2) / (spread + rho**2))
    cost = np.full((m, m), np.inf)
    for i in range(m - 1):
        j = np.arange(i + 1, m)
        a, s = torch.tensor(alpha[j])[:, None, None], torch.tensor(sigma[j])[:, None, None]
        step = a * flat_d[i] + s * eps[i]  # DDIM from candidate i to every later one
        cost[i, j] = (step - flat_x[j]).pow(2).mean((1, 2)).sqrt().numpy() * damping[j]
    total = np.full((steps + 1, m), np.inf)
    total[0, 0] = 0.0
    parent = np.zeros((steps + 1, m), dtype=int)
    for k in range(1, steps + 1):
        options = total[k - 1][:, None] + cost  # (from, to)
        parent[k] = options.argmin(0)
        total[k] = options.min(0)
    path, node = [m - 1], m - 1
    for k in range(steps, 0, -1):
        node = parent[k, node]
        path.append(node)
    return lams[path[::-1]]


def _search(grid, sde, grid_of, lam_start, lam_end, error, max_evaluations, freedom):
    """Powell's search over the log-SNR increments of ``grid``: their logs move by a
    polynomial of ``freedom`` coefficients in the step index (Legendre basis; ``None``:
    every increment on its own); a softmax keeps them positive."""
    lams = sde.log_snr(torch.tensor(grid[: len(grid) - (grid[-1] == 0.0)], dtype=torch.float64))
    theta0 = np.log(np.diff(lams.numpy()) / (lam_end - lam_start))
    k = len(theta0)
    if freedom is None or freedom >= k:
        basis = np.eye(k)
    else:
        basis = np.polynomial.legendre.legvander(np.linspace(-1, 1, k), freedom - 1)

    def grid_at(c: np.ndarray) -> list[float]:
        theta = torch.from_numpy(theta0 + basis @ c)
        return grid_of(_lams_of(theta, lam_start, lam_end).numpy())

    def loss(c: np.ndarray) -> float:
        value = error(grid_at(c))
        return math.log(value) if value > 0 and math.isfinite(value) else 1e3

    c0 = np.zeros(basis.shape[1])
    result = minimize(loss, c0, method="Powell", options={"maxfev": max_evaluations, "xtol": 1e-3})
    return grid_at(result.x)


def _gradient(
    process: ReverseProcess,
    solver: ScaledMultistep,
    x_T: Tensor,
    reference: Tensor,
    grid: list[float],
    lam_range: tuple[float, float],
    iterations: int,
    fit_weights: bool,
    to_zero: bool,
    evaluations: list[int],
    on_evaluation: Callable[[int], None] | None,
) -> list[tuple[list[float], list[list[float]] | None]]:
    """Adam on ``log E`` through ``solver`` (``_differentiable_solve``): first the grid's
    log-SNR increments (``_lams_of``), then, with ``fit_weights``, the
    grid and the weight corrections together; each stage keeps its best iterate and
    returns its grid (and corrections)."""
    sde = process.sde
    lam_start, lam_end = lam_range
    inner = len(grid) - 1 - to_zero
    lams = sde.log_snr(torch.tensor(grid[: inner + 1], dtype=torch.float64))
    theta = torch.log(torch.diff(lams) / (lam_end - lam_start)).requires_grad_(True)
    corrections = torch.zeros(inner, solver.method_order, dtype=torch.float64, requires_grad=True)

    def loss() -> Tensor:
        evaluations[0] += 1
        if on_evaluation is not None:
            on_evaluation(evaluations[0])
        x = _differentiable_solve(
            process, solver, x_T, _lams_of(theta, lam_start, lam_end), corrections, to_zero
        )
        return (x.double() - reference.double()).pow(2).mean().sqrt().log()

    stages, fits = [[theta], [theta, corrections]] if fit_weights else [[theta]], []
    for params in stages:
        optimiser = torch.optim.Adam(params, lr=0.02)
        best, kept = math.inf, [p.detach().clone() for p in params]
        for _ in range(iterations):
            value = loss()
            if not torch.isfinite(value):
                break
            if float(value.detach()) < best:  # the iterate before the step this value judged
                best, kept = float(value.detach()), [p.detach().clone() for p in params]
            grads = torch.autograd.grad(value, params)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            optimiser.step()
        with torch.no_grad():
            for p, k in zip(params, kept, strict=True):
                p.copy_(k)
        times = _times_of(sde, _lams_of(theta, lam_start, lam_end).detach()).tolist()
        weights = corrections.detach().tolist() if any(p is corrections for p in params) else None
        fits.append(([*times, *([0.0] if to_zero else [])], weights))
    return fits


def _lams_of(theta: Tensor, lam_start: float, lam_end: float) -> Tensor:
    """The grid's log-SNRs from the logs ``theta`` of its increments (any scale): a softmax
    keeps them positive, and no step is below 1/20 of the longest, since a near-empty step
    wastes an evaluation and lets multistep extrapolation blow up on draws the fit never
    saw.  Differentiable (the ``gradient`` method) and used by the search alike."""
    w = torch.exp(torch.clamp(theta - theta.max(), -3.0, 0.0))
    cumulative = torch.cat([w.new_zeros(1), torch.cumsum(w / w.sum(), 0)])
    return lam_start + cumulative * (lam_end - lam_start)


def _times_of(sde: SDE, lams: Tensor) -> Tensor:
    """``sde.t_from_log_snr(lams)`` with its gradient: one Newton step from the (detached)
    inverse, ``t + (λ − λ(t)) / λ'(t)``, whose value is ``t`` and whose derivative is
    ``1 / λ'(t)`` for any SDE, closed-form inverse or bisection."""
    t = sde.t_from_log_snr(lams.detach()).requires_grad_(True)
    with torch.enable_grad():
        lam_t = sde.log_snr(t)
        (slope,) = torch.autograd.grad(lam_t.sum(), t)
    t = t.detach()
    return t + (lams - lam_t.detach()) / slope


def _differentiable_solve(
    process: ReverseProcess,
    solver: ScaledMultistep,
    x_T: Tensor,
    lams: Tensor,
    corrections: Tensor,
    to_zero: bool,
) -> Tensor:
    """``solver``'s run on the grid of log-SNRs ``lams`` (then t = 0 with ``to_zero``),
    with its ``corrections``, as a differentiable function of both: the same steps as
    ``ScaledMultistep.step``, with ``quadrature_weights`` for its weights."""
    sde, rows = process.sde, torch.arange(x_T.shape[0], device=x_T.device)
    times = _times_of(sde, lams)
    alpha, sigma = sde.alpha(times), sde.sigma(times)
    rho = sigma / alpha
    batch_times = times.to(x_T.dtype)[:, None].expand(-1, x_T.shape[0])
    steps = len(lams) - 1
    orders = solver.step_orders(steps + to_zero)
    y, history = x_T / alpha[0].to(x_T.dtype), []
    for i in range(steps):
        if solver.afs and i == 0:
            eps = y / rho[0].to(y.dtype)
        else:
            eps = process.predict_rows("eps", y * alpha[i].to(y.dtype), batch_times[i], rows)
        history = [eps, *history][: solver.method_order]
        k = orders[i]
        nodes = rho[i + 1 - k : i + 1].flip(0)
        w = quadrature_weights(nodes, rho[i + 1], solver.log_nodes)
        w = w + (rho[i + 1] - rho[i]) * corrections[i, :k]
        for j in range(k):
            y = y + w[j].to(y.dtype) * history[j]
    x = y * alpha[steps].to(y.dtype)
    if to_zero:
        x = process.predict_rows("x0", x, batch_times[steps], rows)
    return x
