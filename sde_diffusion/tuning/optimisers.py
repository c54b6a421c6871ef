"""The three ways to fit a grid: dynamic programming over candidate times, Powell's search
and Adam through the solver (see :mod:`sde_diffusion.tuning`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import minimize
from torch import Tensor

from ..models import Cond
from ..reverse import ReverseProcess
from ..sdes import SDE
from ..solvers.scaled_multistep import ScaledMultistep, quadrature_weights

__all__ = ["differentiable_solve", "dp_lams", "gradient_fit", "lams_of", "search"]


def dp_lams(model, sde, states: Tensor, lams: np.ndarray, steps: int, cond: Cond) -> np.ndarray:
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


def search(grid, sde, grid_of, lam_start, lam_end, error, max_evaluations, freedom):
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
        return grid_of(lams_of(theta, lam_start, lam_end).numpy())

    def loss(c: np.ndarray) -> float:
        value = error(grid_at(c))
        return math.log(value) if value > 0 and math.isfinite(value) else 1e3

    c0 = np.zeros(basis.shape[1])
    result = minimize(loss, c0, method="Powell", options={"maxfev": max_evaluations, "xtol": 1e-3})
    return grid_at(result.x)


def gradient_fit(
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
    """Adam on ``log E`` through ``solver`` (``differentiable_solve``): first the grid's
    log-SNR increments (``lams_of``), then, with ``fit_weights``, the
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
        x = differentiable_solve(
            process, solver, x_T, lams_of(theta, lam_start, lam_end), corrections, to_zero
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
        times = _times_of(sde, lams_of(theta, lam_start, lam_end).detach()).tolist()
        weights = corrections.detach().tolist() if any(p is corrections for p in params) else None
        fits.append(([*times, *([0.0] if to_zero else [])], weights))
    return fits


def lams_of(theta: Tensor, lam_start: float, lam_end: float) -> Tensor:
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


def differentiable_solve(
    process: ReverseProcess,
    solver: ScaledMultistep,
    x_T: Tensor,
    lams: Tensor,
    corrections: Tensor,
    to_zero: bool,
) -> Tensor:
    """``solver``'s run on the grid of log-SNRs ``lams`` (then t = 0 with ``to_zero``),
    with its ``corrections``, as a differentiable function of both: the solver's own
    update (``ScaledMultistep.advance``) with ``quadrature_weights`` for its weights."""
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
        k = orders[i]
        nodes = rho[i + 1 - k : i + 1].flip(0)
        w = quadrature_weights(nodes, rho[i + 1], solver.log_nodes)
        w = w + (rho[i + 1] - rho[i]) * corrections[i, :k]
        y, history = solver.advance(y, eps, history, list(w.unbind()))
    x = y * alpha[steps].to(y.dtype)
    if to_zero:
        x = process.predict_rows("x0", x, batch_times[steps], rows)
    return x
