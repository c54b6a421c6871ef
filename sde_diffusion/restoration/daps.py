"""Decoupled annealing posterior sampling, DAPS (Zhang et al. 2025, Algorithm 1).

DAPS anneals down a grid of noise levels, and at each level ``ν_t`` decouples the
measurement from the chain: it solves the PF-ODE from ``x_t`` to an estimate ``x̂_0``
(``ode_steps`` steps of a registered solver, ``euler`` by default, 5 steps as in the
paper), draws ``x_0`` from ``p(x_0 | x̂_0, y) ∝ N(x_0; x̂_0, r_t² I) N(y; A x_0, σ_y² I)``
with ``r_t = r_scale · ν_t``, and re-noises it to the next level, ``x_{t'}/α = x_0 +
ν_{t'} z``.  For a linear measurement that conditional is Gaussian; the paper samples it
with Langevin steps, we draw it exactly (what the chain converges to) in the spectral
coordinates of ``A``: mean ``(σ_y² x̄̂_0 + r² s² ȳ)/(σ_y² + r² s²)``, variance
``r² σ_y²/(σ_y² + r² s²)``; the unmeasured part ``x̂_0 + r z``.  Network passes: the
annealing steps times ``ode_steps``.
"""

from __future__ import annotations

import math
from itertools import pairwise

from ..loop import integrate
from ..noise import GeneratorNoise
from ..sampling import SampleResult
from .base import Method, OwnLoop, number, whole

__all__ = ["DAPS"]


class DAPS(Method):
    """Anneal, solve to ``x̂_0``, draw ``x_0`` given ``y``, re-noise (see the module)."""

    name = "daps"
    reference = "Zhang et al. 2025, Algorithm 1"
    needs_svd = True
    default_solver = "euler"

    def __init__(self, ode_steps: int = 5, r_scale: float = 1.0):
        self.ode_steps = whole("ode_steps", ode_steps, 1, 1000)
        self.r_scale = number("r_scale", r_scale, 0.0, 1e3, open_lo=True)

    def run(self, model, sde, obs, x_T, grid, solver, generator, cond=None) -> SampleResult:
        loop = OwnLoop(self, model, sde, x_T, grid, generator, cond)
        spectrum, reading = obs.spectrum(x_T), obs.reading(x_T)
        s2, sigma_y2 = spectrum.s**2, obs.sigma_y**2
        noise = GeneratorNoise(generator)
        end = min(t for t in grid if t > 0)
        x = x_T
        for t0, t1 in pairwise(grid):
            inner = self._ode_grid(loop, t0, end)
            x0_hat = integrate(solver, loop.process, inner, x, noise, lambda *a: None)
            r2 = (self.r_scale * loop.nu(t0)) ** 2
            spread = (r2 * sigma_y2 / (sigma_y2 + r2 * s2)).sqrt()
            mean = (sigma_y2 * spectrum.coordinates(x0_hat) + r2 * s2 * reading) / (
                sigma_y2 + r2 * s2
            )
            z = loop.noise(x)
            x0 = spectrum.compose(mean + spread * spectrum.coordinates(z), x0_hat + r2**0.5 * z)
            x = x0 if t1 == grid[-1] else loop.alpha(t1) * (x0 + loop.nu(t1) * loop.noise(x))
        return loop.result(x, f"daps+{solver.name}")

    def _ode_grid(self, loop: OwnLoop, t0: float, end: float) -> list[float]:
        """``ode_steps`` intervals from ``t0`` to ``end``, even in ``log ν`` below ``t0``."""
        if t0 <= end:
            return [t0]
        a, b = math.log(loop.nu(t0)), math.log(loop.nu(end))
        lams = [-(a + (b - a) * k / self.ode_steps) for k in range(1, self.ode_steps)]
        return [t0, *loop.process.times_at_log_snr(lams), end]
