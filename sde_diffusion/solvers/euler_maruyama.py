"""Euler–Maruyama on the reverse SDE."""

from __future__ import annotations

import math

from .base import Solver
from .registry import register_solver


@register_solver(
    "euler_maruyama",
    aliases=("em",),
    kind="sde",
    order=1.0,
    nfe_per_step=1,
    stochastic=True,
    reference="Kloeden & Platen 1992; Song et al. 2021, sec. 4",
)
class EulerMaruyama(Solver):
    """Euler–Maruyama on the reverse SDE: x += (f - g² s) Δt + g √|Δt| z.

    Strong order 1 for additive noise (g depends on t only), 1 NFE per step.
    """

    def step(self, process, t0, t1, x, state, noise):
        dt = t1 - t0
        g = process.diffusion(t0)
        return x + process.drift(x, t0) * dt + g * math.sqrt(-dt) * noise(x, t0, t1), state
