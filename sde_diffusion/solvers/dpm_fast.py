"""DPM-Solver "fast": singlestep orders 3, …, 3, 2, 1 on a grid uniform in log-SNR."""

from __future__ import annotations

import math

import torch

from .base import Leg, Solver
from .registry import register_solver

STAGES = {1: (), 2: (0.5,), 3: (1 / 3, 2 / 3)}  # the stage fractions of each order


def fast_orders(nfe: int) -> list[int]:
    """The orders of DPM-Solver's fast schedule for ``nfe`` evaluations (Lu et al. 2022,
    sec. 3.4): as many third-order steps as fit, then a second and/or first."""
    steps = nfe // 3 + 1
    if nfe % 3 == 0:
        return [3] * (steps - 2) + [2, 1]
    return [3] * (steps - 1) + [nfe % 3]


@register_solver(
    "dpm_fast",
    kind="ode",
    order=3.0,
    nfe_per_step=1,
    stochastic=False,
    reference="Lu et al. 2022, DPM-Solver, sec. 3.4 (DPM-Solver-fast); k-diffusion sample_dpm_fast",
)
class DPMFast(Solver):
    """DPM-Solver-fast: a grid of ``N`` steps is a budget of ``N`` evaluations, spent on
    ``fast_orders(N)`` singlestep DPM-Solver steps (noise prediction, ``r = 1/2`` and
    ``(1/3, 2/3)``) between the grid's ends, uniform in ``λ = log(α/σ)``; the schedule's
    own points are not used (as in k-diffusion).  A grid ending at t = 0 keeps one
    evaluation for the final x̂_0.  In scaled units ``y = x/α``, ``σ̃ = e^{−λ}``:
    ``y_s = y − σ̃_s (e^h − 1) ε̂_t − …`` (DPM-Solver-1/2/3).  Order 3.
    """

    uses = frozenset({"eps"})

    def expected_nfe(self, grid):
        return len(grid) - 1

    def legs(self, process, grid):
        to_zero = grid[-1] == 0.0
        end = grid[-2] if to_zero else grid[-1]
        orders = fast_orders(len(grid) - 1 - to_zero)
        lam0, lam1 = process.at(grid[0]).log_snr, process.at(end).log_snr
        h = (lam1 - lam0) / len(orders)
        starts = [lam0 + i * h for i in range(len(orders))]
        stages = [
            [lam + r * h for r in STAGES[order]] for lam, order in zip(starts, orders, strict=True)
        ]
        times = process.times_at_log_snr([*starts[1:], *(lam for s in stages for lam in s)])
        steps, rest = times[: len(orders) - 1], iter(times[len(orders) - 1 :])
        main = [grid[0], *steps, end]
        plan = {
            t0: (order, h, [next(rest) for _ in STAGES[order]])
            for t0, order in zip(main, orders, strict=False)
        }  # each step's order, λ-step and stage times, computed together
        return [Leg(main + [0.0] * to_zero, first_index=None, plan=plan)]

    def step(self, process, t0, t1, x, state, noise):
        if t1 == 0.0:
            return process.denoise(x, t0), state
        order, h, stages = state[t0]
        c0, c1 = process.at(t0), process.at(t1)
        y, eps0 = x / c0.alpha, process.eps(x, t0)
        sig1 = c1.sigma / c1.alpha

        def eps_at(y_at, t):
            return process.eps(y_at * process.at(t).alpha, t)

        def ratio(t):  # σ̃ at a stage time
            c = process.at(t)
            return c.sigma / c.alpha

        base = torch.add(y, eps0, alpha=-sig1 * math.expm1(h))
        if order == 1:
            return base * c1.alpha, state
        r1 = STAGES[order][0]
        u1 = torch.add(y, eps0, alpha=-ratio(stages[0]) * math.expm1(r1 * h))
        eps1 = eps_at(u1, stages[0])
        if order == 2:
            y_new = torch.add(base, eps1 - eps0, alpha=-sig1 / (2 * r1) * math.expm1(h))
            return y_new * c1.alpha, state
        r2, sig2 = STAGES[3][1], ratio(stages[1])
        u2 = torch.add(y, eps0, alpha=-sig2 * math.expm1(r2 * h)).add_(
            eps1 - eps0, alpha=-sig2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1)
        )
        eps2 = eps_at(u2, stages[1])
        y_new = torch.add(base, eps2 - eps0, alpha=-sig1 / r2 * (math.expm1(h) / h - 1))
        return y_new * c1.alpha, state
