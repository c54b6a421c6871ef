"""Ancestral sampling: draw x_s from the Gaussian posterior q(x_s | x_t, x̂_0)."""

from __future__ import annotations

import torch

from ..errors import ArgumentError
from .base import Solver
from .registry import register_solver
from .stochastic import posterior_coefficients

VARIANCES = ("posterior", "forward")


@register_solver(
    "ancestral",
    aliases=("ddpm",),
    kind="sde",
    order=1.0,
    nfe_per_step=1,
    stochastic=True,
    reference="Ho et al. 2020, eq. 7; Song et al. 2021, app. E",
)
class Ancestral(Solver):
    """Ancestral step x_s ~ N(posterior mean of x̂_0, var): DDPM for VP, reverse diffusion for VE.

    One formula for every linear SDE: x̂_0 is Tweedie's estimate at t and the
    mean is the posterior mean of ``q(x_s | x_t, x̂_0)``.  ``variance="posterior"``
    uses the posterior variance (DDPM's beta-tilde; k-diffusion's ancestral
    sigma_up); ``"forward"`` uses the forward transition variance (DDPM's
    sigma^2 = beta; for VE exactly Song et al.'s reverse-diffusion predictor).
    Strong order 1 on additive noise, 1 NFE per step.  ``ddpm`` (ComfyUI's and diffusers'
    DDPM with ``variance_type="fixed_small"``) is this method with the posterior variance.
    """

    uses = frozenset({"denoise"})

    def __init__(self, variance: str = "posterior"):
        if variance not in VARIANCES:
            raise ArgumentError(f"variance must be one of {VARIANCES}, got {variance!r}")
        self.variance = variance

    def step(self, process, t0, t1, x, state, noise):
        w_x, w_x0, post_var, fwd_var = posterior_coefficients(process.at(t0), process.at(t1))
        var = post_var if self.variance == "posterior" else fwd_var
        mean = torch.add(x * w_x, process.denoise(x, t0), alpha=w_x0)
        if t1 == 0.0 and self.variance == "posterior":
            return mean, state
        return torch.add(mean, noise(x, t0, t1), alpha=max(var, 0.0) ** 0.5), state
