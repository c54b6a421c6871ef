"""Heun's second-order method on the probability-flow ODE."""

from __future__ import annotations

import torch

from .base import Solver
from .registry import register_solver


@register_solver(
    "heun",
    kind="ode",
    order=2.0,
    nfe_per_step=2,
    stochastic=False,
    reference="Karras et al. 2022, alg. 1",
)
class Heun(Solver):
    """Heun (explicit trapezoid) on the PF-ODE; Euler on a last step to t = 0.

    ``x' = x + h v(x, t)``, ``x_s = x + h (v(x, t) + v(x', s)) / 2`` with
    ``h = s - t``.  Order 2, 2 NFE per step.
    """

    def step(self, process, t0, t1, x, state, noise):
        h = t1 - t0
        d0 = process.velocity(x, t0)
        x_euler = torch.add(x, d0, alpha=h)
        if t1 == 0.0:
            return x_euler, state
        return torch.add(x, d0 + process.velocity(x_euler, t1), alpha=0.5 * h), state
