"""What a tuned grid minimises: a solver's endpoint error against a fine solve of the same
model from quasi-random prior draws."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy.special import ndtri
from scipy.stats import qmc
from torch import Tensor

from ..models import Cond
from ..reverse import ScoreFn
from ..sampling import solve
from ..sdes import SDE
from ..solvers.base import Solver
from ..solvers.registry import get_solver
from ..timesteps import timesteps

__all__ = [
    "FINE_STEPS",
    "draw_errors",
    "endpoint_error",
    "fine_solve",
    "prior_draws",
    "worst_share",
]


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
