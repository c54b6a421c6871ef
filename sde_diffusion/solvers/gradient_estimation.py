"""Gradient estimation: Euler in ν with the direction extrapolated from the last two."""

from __future__ import annotations

import torch

from ..errors import ArgumentError
from .base import Solver
from .cfg_pp import GUIDED, scaled
from .registry import register_solver


@register_solver(
    "gradient_estimation",
    kind="ode",
    order=1.0,
    nfe_per_step=1,
    stochastic=False,
    reference="Permenter & Yuan 2024, Interpreting and Improving Diffusion Models from an "
    "Optimization Perspective, alg. 2; ComfyUI sample_gradient_estimation",
)
class GradientEstimation(Solver):
    """Euler on ``dy/dν = d = (y − x̂_0)/ν`` (``y = x/α``, ``ν = σ/α``) with the direction
    ``d̄ = d + (γ − 1)(d − d_prev)`` after the first step:
    ``y_s = y + (ν_s − ν_t) d̄``; a step to t = 0 returns x̂_0.  ``ge_gamma = 2`` (the
    paper's) over-extrapolates by half a step, so the method stays first order (γ = 1.5
    would be second order on uniform steps).  1 NFE per step."""

    uses = frozenset({"denoise"})

    def __init__(self, ge_gamma: float = 2.0):
        if not 0.0 <= ge_gamma <= 10.0:
            raise ArgumentError(f"ge_gamma must lie in [0, 10], got {ge_gamma!r}")
        self.ge_gamma = float(ge_gamma)

    cfg_pp = False

    def step(self, process, t0, t1, x, state, noise):
        if self.cfg_pp:
            x0, x0_free = process.denoise_guided(x, t0)
        else:
            x0 = x0_free = process.denoise(x, t0)
        if t1 == 0.0:
            return x0, state
        a0, nu0, _ = scaled(process, t0)
        a1, nu1, _ = scaled(process, t1)
        y = x / a0
        d = (y - x0_free) / nu0
        y = torch.add(x0, d, alpha=nu1) if self.cfg_pp else torch.add(y, d, alpha=nu1 - nu0)
        if state is not None:
            y = y.add_(d - state, alpha=(self.ge_gamma - 1) * (nu1 - nu0))
        return y * a1, d


@register_solver(
    "gradient_estimation_cfg_pp",
    kind="ode",
    order=1.0,
    nfe_per_step=1,
    stochastic=False,
    reference="Permenter & Yuan 2024; Chung et al. 2024 (CFG++); ComfyUI",
)
class GradientEstimationCFGPP(GradientEstimation):
    """Gradient estimation CFG++: ``d = (y − x̂_0^∅)/ν_t``, ``y_s = x̂_0 + ν_s d`` plus the
    same extrapolation ``(γ − 1)(d − d_prev)(ν_s − ν_t)``.  1 NFE per step."""

    cfg_pp, uses = True, GUIDED
