"""SDEdit (Meng et al. 2022): noise an input part of the way, then solve back to the data.

``strength`` ∈ [0, 1] says how far: the standard grid of ``steps`` intervals is cut to its
last ``round(strength · steps)`` intervals, which start at ``t_s``; the input becomes
``x_{t_s} = α(t_s) x + σ(t_s) z`` and any registered solver takes it from there to the
data.  Strength 1 starts from the prior itself (``prior_std · z``, the same draw
``sd.sample`` makes from the same seed: the same samples); strength 0 returns the input.
The edit keeps what the noise did not wash out: coarse layout at medium strengths, only
the data manifold at high ones.  On a latent model
(:class:`~sde_diffusion.latent.LatentModel`) ``x`` is images: they are encoded (posterior
means), edited in latent space and decoded (``res.latent`` the edited latents).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .devices import checked_dtype
from .errors import ArgumentError
from .latent import latent_model_of
from .models import Cond
from .noise import seeded_generator
from .reverse import ScoreFn
from .sampling import DEFAULT_STEPS, SampleResult, solve
from .sdes import SDE
from .solvers.base import Solver
from .solvers.registry import get_solver
from .timesteps import timesteps

__all__ = ["sdedit"]


def sdedit(
    model: ScoreFn,
    sde: SDE,
    x: Tensor,
    strength: float,
    solver: str | Solver = "heun",
    steps: int = DEFAULT_STEPS,
    schedule: str = "karras",
    *,
    cond: Cond = None,
    seed: int = 0,
    to_zero: bool = False,
    **options: Any,
) -> SampleResult:
    """Edit ``x`` (a batch in model units) with SDEdit at ``strength`` (see the module);
    ``res.x`` holds the edits and ``res.nfe`` what they cost (0 at strength 0)."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise ArgumentError(f"strength must be a number in [0, 1], got {strength!r}")
    if not 0.0 <= strength <= 1.0:
        raise ArgumentError(f"strength must lie in [0, 1], got {strength!r}")
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ArgumentError("x must be a batch of inputs, a tensor of shape (B, *event)")
    checked_dtype(x.dtype)
    images, latent = x, latent_model_of(model)
    if latent is not None:
        with torch.no_grad():
            x = latent.encode(x)
    solver = get_solver(solver, **options) if isinstance(solver, str) else solver  # at once
    grid = timesteps(sde, steps, schedule, to_zero=to_zero)
    first = len(grid) - 1 - round(strength * (len(grid) - 1))
    generator = seeded_generator(seed, x.device)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if first >= len(grid) - 1:  # strength 0 (or too small for one step): nothing to do
        return SampleResult(
            x=images.clone(), nfe=0, network_passes=0, solver=solver.name, ts=grid[-1:],
            wall_time=0.0, options={}, batches=1,
        )  # fmt: skip
    t_s = float(grid[first])
    noised = float(sde.alpha(t_s)) * x + float(sde.sigma(t_s)) * z
    x_t = z * sde.prior_std if first == 0 else noised  # strength 1: the prior itself
    if not math.isfinite(float(x_t.abs().max())):
        raise ArgumentError("the input holds inf or NaN")
    res = solve(model, sde, x_t, grid[first:], solver, cond=cond, generator=generator, **options)
    if latent is not None:
        res.latent, res.x = res.x, latent.decode(res.x)
    return res
