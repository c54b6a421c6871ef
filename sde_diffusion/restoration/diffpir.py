"""Denoising diffusion models for plug-and-play image restoration, DiffPIR (Zhu et al.
2023, Algorithm 1).

Each step replaces the denoised estimate by the solution of a proximal problem,

    x̂_0 ← argmin_x ‖y − A x‖² + ρ_t ‖x − x̂_0‖²,   ρ_t = λ σ_y² / ν_t²,

solved exactly in the spectral coordinates of ``A``: ``x̄_i = (s_i² ȳ_i + ρ x̄_{0,i}) /
(s_i² + ρ)``, the unmeasured part unchanged (with ``σ_y = 0``, ``ρ = 0``: the measured
part is ``ȳ``).  The paper's step then mixes the implied noise with fresh noise,
``x_{t−1}/α = x̂_0 + ν_{t−1} (√(1−ζ) ε̂ + √ζ z)`` with ``ε̂ = (x_t/α − x̂_0)/ν_t``: the
default (``λ = 7``, ``ζ = 0.3``), 1 network pass per step.  Given a registered solver
instead, the proximal denoiser drives that solver (``ζ`` then unused).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from torch import Tensor

from ..models import as_model
from ..parametrization import convert
from ..sampling import SampleResult, solve
from .base import Method, OwnLoop, number, split_measurement, with_measurement
from .observation import Observation

__all__ = ["DiffPIR"]


def _proximal(obs: Observation, x0: Tensor, rho: Tensor | float, y: Tensor | None = None):
    """``argmin ‖y − A x‖² + ρ ‖x − x0‖²`` per sample (``rho`` a number or ``(B, 1)``;
    ``y``: the rows of the measurement ``x0`` holds, if not all)."""
    spectrum = obs.spectrum(x0)
    s2 = spectrum.s**2
    reading = obs.reading(x0) if y is None else spectrum.reading(y.to(x0))
    coords = (s2 * reading + rho * spectrum.coordinates(x0)) / (s2 + rho)
    return spectrum.compose(coords, x0)


class _ProximalDenoiser:
    """The model's ``x̂_0`` replaced by DiffPIR's proximal solution: a model for any solver."""

    prediction = "x0"

    def __init__(self, model: Any, sde, obs: Observation, lam: float):
        self.model, self.sde, self.obs, self.lam = as_model(model), sde, obs, lam
        self.passes_per_call = getattr(self.model, "passes_per_call", 1)

    def __call__(self, x: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        y, cond = split_measurement(cond)
        x0 = convert(self.model(x, t, cond), x, t, self.sde, self.model.prediction, "x0")
        nu2 = (self.sde.sigma(t) / self.sde.alpha(t)).to(x) ** 2
        return _proximal(self.obs, x0, (self.lam * self.obs.sigma_y**2 / nu2)[:, None], y)


class DiffPIR(Method):
    """A proximal data step on ``x̂_0`` at every step (see the module)."""

    name = "diffpir"
    reference = "Zhu et al. 2023, Algorithm 1"
    needs_svd = True

    def __init__(self, lam: float = 7.0, zeta: float = 0.3):
        self.lam = number("lam", lam, 0.0, 1e6)
        self.zeta = number("zeta", zeta, 0.0, 1.0)

    def run(self, model, sde, obs, x_T, grid, solver, generator, cond=None) -> SampleResult:
        if solver is not None:
            prox = _ProximalDenoiser(model, sde, obs, self.lam)
            cond = with_measurement(obs.y.to(x_T), cond)
            return solve(prox, sde, x_T, grid, solver, cond=cond, generator=generator)
        loop = OwnLoop(self, model, sde, x_T, grid, generator, cond)
        mix, fresh = (1.0 - self.zeta) ** 0.5, self.zeta**0.5
        x = x_T
        for t0, t1 in pairwise(grid):
            nu0, nu1 = loop.nu(t0), loop.nu(t1)
            rho = self.lam * obs.sigma_y**2 / nu0**2
            x0 = _proximal(obs, loop.denoise(x, t0), rho)
            eps = (x / loop.alpha(t0) - x0) / nu0
            x = loop.alpha(t1) * (x0 + nu1 * (mix * eps + fresh * loop.noise(x)))
        return loop.result(x)
