"""Euler's method on the probability-flow ODE."""

from __future__ import annotations

import torch

from .base import Solver
from .registry import register_solver


@register_solver(
    "euler",
    kind="ode",
    order=1.0,
    nfe_per_step=1,
    stochastic=False,
    reference="Karras et al. 2022, alg. 1 without the correction",
)
class Euler(Solver):
    """Euler on the PF-ODE: x += (s - t) v(x, t).  Order 1, 1 NFE per step."""

    def step(self, process, t0, t1, x, state, noise):
        return torch.add(x, process.velocity(x, t0), alpha=t1 - t0), state
