"""DDIM: the first-order exponential integrator of the PF-ODE, with eta-controlled noise."""

from __future__ import annotations

import torch

from ..errors import ArgumentError
from .base import Solver
from .registry import register_solver
from .stochastic import posterior_coefficients


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
    With ``ε̂ = (x − α_t x̂_0)/σ_t`` the update is one affine combination of
    ``x`` and ``x̂_0``.  1 NFE per step.
    """

    uses = frozenset({"denoise"})

    def __init__(self, eta: float = 0.0):
        if not 0.0 <= eta <= 1.0:
            raise ArgumentError(f"eta must lie in [0, 1], got {eta!r}")
        self.eta = float(eta)

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def step(self, process, t0, t1, x, state, noise):
        c0, c1 = process.at(t0), process.at(t1)
        c2 = self.eta**2 * posterior_coefficients(c0, c1)[2]
        on_eps = max(c1.sigma**2 - c2, 0.0) ** 0.5 / c0.sigma
        x0 = process.denoise(x, t0)
        x = torch.add(x * on_eps, x0, alpha=c1.alpha - on_eps * c0.alpha)
        if self.eta > 0 and t1 > 0.0:
            x = torch.add(x, noise(x, t0, t1), alpha=c2**0.5)
        return x, state
