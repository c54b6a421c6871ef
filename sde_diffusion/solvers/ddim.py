"""DDIM: the first-order exponential integrator of the PF-ODE, with eta-controlled noise."""

from __future__ import annotations

from .ancestral import posterior_coefficients
from .base import Solver
from .registry import register_solver


@register_solver(
    "ddim",
    kind="ode",
    order=1.0,
    nfe_per_step=1,
    stochastic=False,
    reference="Song, Meng & Ermon 2021, eq. 12",
)
class DDIM(Solver):
    """DDIM: x_s = α_s x̂_0 + √(σ_s² − c²) ε̂ + c z, c = η · posterior std.

    ``eta = 0`` is deterministic (DPM-Solver-1 / the exact exponential Euler
    step of the PF-ODE, order 1); ``eta = 1`` samples the DDPM posterior.
    1 NFE per step.
    """

    def __init__(self, eta: float = 0.0):
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
        self.eta = float(eta)

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def step(self, process, t0, t1, x, state, noise):
        sde = process.sde
        alpha_t, sigma_t = sde.alpha(t0), sde.sigma(t0)
        alpha_s, sigma_s = sde.alpha(t1), sde.sigma(t1)
        x0 = process.denoise(x, t0)
        eps = (x - alpha_t * x0) / sigma_t
        c2 = self.eta**2 * posterior_coefficients(sde, t0, t1)[2]
        x = alpha_s * x0 + (sigma_s**2 - c2).clamp_min(0).sqrt() * eps
        if self.eta > 0 and t1 > 0.0:
            x = x + c2.sqrt() * noise(x, t0, t1)
        return x, state
