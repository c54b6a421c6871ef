"""Euler–Maruyama on the reverse SDE."""

from __future__ import annotations

import math

import torch

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
    """Euler–Maruyama on the reverse SDE: x += (f x - g² s) Δt + g √|Δt| z.

    Strong order 1 for additive noise (g depends on t only), 1 NFE per step.
    """

    uses = frozenset({"drift"})

    def step(self, process, t0, t1, x, state, noise):
        dt = t1 - t0
        x_new = torch.add(x, process.drift(x, t0), alpha=dt)
        return torch.add(
            x_new, noise(x, t0, t1), alpha=process.diffusion(t0) * math.sqrt(-dt)
        ), state
