"""Ancestral sampling: draw x_s from the Gaussian posterior q(x_s | x_t, x̂_0)."""

from __future__ import annotations

from .base import Solver
from .registry import register_solver

VARIANCES = ("posterior", "forward")


def posterior_coefficients(sde, t: float, s: float):
    """Mean weights and variance of ``q(x_s | x_t, x_0)`` for ``s < t``.

    With ``a = alpha_t / alpha_s`` and ``v = sigma_t^2 - a^2 sigma_s^2`` (the
    forward transition ``x_t | x_s ~ N(a x_s, v)``):
    ``mean = (a sigma_s^2 / sigma_t^2) x_t + (alpha_s v / sigma_t^2) x_0`` and
    ``var = v sigma_s^2 / sigma_t^2``.  Returns (weight on x_t, weight on x_0,
    posterior variance, forward variance v), CPU float64 scalars.
    """
    alpha_t, sigma_t = sde.alpha(t), sde.sigma(t)
    alpha_s, sigma_s = sde.alpha(s), sde.sigma(s)
    a = alpha_t / alpha_s
    v = sigma_t**2 - a**2 * sigma_s**2
    return a * sigma_s**2 / sigma_t**2, alpha_s * v / sigma_t**2, v * sigma_s**2 / sigma_t**2, v


@register_solver(
    "ancestral",
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
    Strong order 1 on additive noise, 1 NFE per step.
    """

    def __init__(self, variance: str = "posterior"):
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        self.variance = variance

    def step(self, process, t0, t1, x, state, noise):
        w_x, w_x0, post_var, fwd_var = posterior_coefficients(process.sde, t0, t1)
        var = post_var if self.variance == "posterior" else fwd_var
        mean = w_x * x + w_x0 * process.denoise(x, t0)
        if t1 == 0.0 and self.variance == "posterior":
            return mean, state
        return mean + var.sqrt() * noise(x, t0, t1), state
