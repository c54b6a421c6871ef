"""LCM sampling, which is multistep consistency sampling: denoise, then re-noise to the next
level with fresh noise (also registered as ``consistency``)."""

from __future__ import annotations

import torch

from .base import Solver
from .registry import register_solver


@register_solver(
    "lcm",
    kind="sde",
    aliases=("consistency",),
    order=0.0,
    nfe_per_step=1,
    stochastic=True,
    reference="Luo et al. 2023 (LCM); Song et al. 2023, consistency models, alg. 1 "
    "(multistep consistency sampling); ComfyUI sample_lcm",
)
class LCM(Solver):
    """``x_s = α_s x̂_0(x, t) + σ_s z``: each step forgets ``x`` but for its denoised
    estimate, so it samples well only from a model whose x̂_0 is already a sample (a
    consistency or LCM student); on a score model it converges to nothing (order 0), it
    lands on the posterior means.  1 NFE per step; a step to t = 0 returns x̂_0, so the grid
    ``[T, 0]`` is one-step consistency sampling."""

    uses = frozenset({"denoise"})

    def step(self, process, t0, t1, x, state, noise):
        x0 = process.denoise(x, t0)
        if t1 == 0.0:
            return x0, state
        c1 = process.at(t1)
        return torch.add(x0 * c1.alpha, noise(x, t0, t1), alpha=c1.sigma), state
