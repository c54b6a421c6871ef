"""DPM-Solver++(2M): second-order multistep exponential integrator in data prediction."""

from __future__ import annotations

import math

import torch

from .base import Solver
from .registry import register_solver


@register_solver(
    "dpmpp_2m",
    aliases=("dpm_solver++_2m", "dpmsolver++"),
    kind="ode",
    order=2.0,
    nfe_per_step=1,
    stochastic=False,
    reference="Lu et al. 2022, DPM-Solver++, alg. 2",
)
class DPMSolverPP2M(Solver):
    """DPM-Solver++(2M) on the PF-ODE, in log-SNR λ = log(α/σ), variable steps.

    With ``h = λ_s − λ_t`` and ``r = h_prev / h``:
    ``D = (1 + 1/(2r)) x̂_0(t) − 1/(2r) x̂_0(t_prev)`` (first step: ``D = x̂_0``),
    ``x_s = (σ_s/σ_t) x − α_s (e^{−h} − 1) D``; a step to t = 0 returns ``D = x̂_0``.
    Order 2, 1 NFE per step.
    """

    uses = frozenset({"denoise"})

    def step(self, process, t0, t1, x, state, noise):
        x0 = process.denoise(x, t0)
        if t1 == 0.0:
            return x0, state
        c0, c1 = process.at(t0), process.at(t1)
        h = c1.log_snr - c0.log_snr
        if state is None:
            d = x0
        else:
            x0_prev, h_prev = state
            r = h_prev / h
            d = torch.add(x0 * (1 + 0.5 / r), x0_prev, alpha=-0.5 / r)
        x = torch.add(x * (c1.sigma / c0.sigma), d, alpha=-c1.alpha * math.expm1(-h))
        return x, (x0, h)
