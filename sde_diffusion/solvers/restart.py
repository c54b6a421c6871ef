"""Restart sampling: PF-ODE steps, with forward re-noising over one interval repeated."""

from __future__ import annotations

import math

import torch

from ..errors import ArgumentError
from .base import Leg, Solver
from .registry import get_solver, register_solver
from .stochastic import noise_to_signal


@register_solver(
    "restart",
    kind="sde",
    order=2.0,
    nfe_per_step=2,
    stochastic=True,
    reference="Xu et al. 2023, Restart sampling for improving generative processes",
)
class Restart(Solver):
    """Restart: the ODE solver ``base`` along the grid, and ``restarts`` times, on reaching
    the first grid time ``t_i`` with ``σ̃ = σ/α ≤ restart_min``, a jump forward to ``t_max``
    (``σ̃ = restart_max``) by the exact forward transition, then ``restart_steps`` ODE steps
    back to ``t_i``.

    In ``y = x/α`` the jump is ``y ← y + s_noise·√(σ̃_max² − σ̃_i²)·ξ`` with fresh ``ξ``
    (the noise source's ``fresh``); the way back runs on a Karras (ρ = 7) grid in σ̃.  The
    added noise contracts the errors the ODE made before ``t_i`` (Xu et al. 2023, thm. 2),
    at ``restarts × restart_steps`` extra steps of ``base``.  A grid that never reaches
    ``restart_min`` restarts at its last positive time.  The re-noising is not a Brownian
    increment of the reverse SDE, so the method has no strong order (``order`` is the
    base's on the main grid); ``restarts=0`` is ``base``.
    """

    uses = frozenset({"velocity", "denoise"})

    def __init__(
        self,
        base: str = "heun",
        restart_min: float = 0.1,
        restart_max: float = 2.0,
        restarts: int = 2,
        restart_steps: int = 4,
        s_noise: float = 1.0,
    ):
        solver = get_solver(base)
        if solver.kind != "ode" or solver.adaptive:
            raise ArgumentError(f"base must be a fixed-step ODE solver, got {base!r}")
        if not 0 < restart_min < restart_max < math.inf:
            raise ArgumentError(
                "need 0 < restart_min < restart_max (noise levels σ/α), got "
                f"restart_min={restart_min!r}, restart_max={restart_max!r}"
            )
        if not (isinstance(restarts, int) and 0 <= restarts <= 100):
            raise ArgumentError(f"restarts must be a whole number in [0, 100], got {restarts!r}")
        if not (isinstance(restart_steps, int) and 1 <= restart_steps <= 1000):
            raise ArgumentError(
                f"restart_steps must be a whole number in [1, 1000], got {restart_steps!r}"
            )
        if not 0 <= s_noise < math.inf:
            raise ArgumentError(f"s_noise must be a finite number >= 0, got {s_noise!r}")
        self.base, self.restart_min, self.restart_max = (
            solver.name,
            float(restart_min),
            float(restart_max),
        )
        self.restarts, self.restart_steps, self.s_noise = restarts, restart_steps, float(s_noise)
        self._base = solver

    def options(self):
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    @property
    def stochastic(self) -> bool:
        return self.restarts > 0 and self.s_noise > 0

    @property
    def order(self) -> float:
        return self._base.order

    @property
    def nfe_per_step(self) -> int:
        return self._base.nfe_per_step

    def expected_nfe(self, grid):
        return (
            self._base.expected_nfe(grid) + self.restarts * self.restart_steps * self.nfe_per_step
        )

    def init(self, process, grid, x, noise):
        return self._base.init(process, grid, x, noise)

    def step(self, process, t0, t1, x, state, noise):
        return self._base.step(process, t0, t1, x, state, noise)

    def legs(self, process, grid):
        """The grid to ``t_i``, ``restarts`` re-noised legs back to ``t_i``, the rest."""
        if not self.restarts:
            return [Leg(grid)]
        nu = [noise_to_signal(process.at(t)) for t in grid]
        positive = [i for i, t in enumerate(grid) if t > 0.0]
        i = next((j for j in positive if nu[j] <= self.restart_min), positive[-1])
        top = noise_to_signal(process.at(process.sde.T))
        if self.restart_max > top:
            raise ArgumentError(
                f"restart_max={self.restart_max:g} lies above the SDE's largest noise level "
                f"σ/α = {top:.4g}"
            )
        ramp = torch.linspace(0, 1, self.restart_steps + 1, dtype=torch.float64)
        lo, hi = nu[i] ** (1 / 7), self.restart_max ** (1 / 7)
        levels = (hi + ramp * (lo - hi)) ** 7
        back = [*process.times_at_log_snr((-levels.log()).tolist()[:-1]), grid[i]]
        jump = self.s_noise * math.sqrt(self.restart_max**2 - nu[i] ** 2)
        restarts = [Leg(back, renoise=jump, first_index=None)] * self.restarts
        rest = [Leg(grid[i:], first_index=i)] if i < len(grid) - 1 else []
        return [Leg(grid[: i + 1]), *restarts, *rest]
