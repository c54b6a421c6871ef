"""Denoising diffusion restoration models, DDRM (Kawar et al. 2022, eq. 7–8).

DDRM runs DDIM in the spectral coordinates of ``A = U diag(s) Vᵀ``.  With ``u = x/α``
(noise level ``ν = σ/α``), the denoised ``x̂_0`` at ``ν_0`` and the reading ``ȳ_i`` of
coordinate ``i`` with noise ``σ_y/s_i``, the step to ``ν_1`` is

- unmeasured directions: ``x̂_0 + √(1−η²) ν_1 (u − x̂_0)/ν_0 + η ν_1 z`` (DDIM);
- ``ν_1 < σ_y/s_i``: ``x̄_0 + √(1−η²) ν_1 (ȳ_i − x̄_0)/(σ_y/s_i) + η ν_1 z``;
- ``ν_1 ≥ σ_y/s_i``: ``(1−η_b) x̄_0 + η_b ȳ_i + √(ν_1² − η_b² σ_y²/s_i²) z``.

``η = 0.85`` and ``η_b = 1`` are the paper's.  1 network pass per step; its own update
rule, so it takes no registered solver.  Noise-free (``σ_y = 0``) measured coordinates
equal ``ȳ`` at every step.
"""

from __future__ import annotations

from itertools import pairwise

import torch

from ..sampling import SampleResult
from .base import Method, OwnLoop, number

__all__ = ["DDRM"]


class DDRM(Method):
    """DDIM in the spectral coordinates of ``A`` (see the module)."""

    name = "ddrm"
    reference = "Kawar, Elad, Ermon & Song 2022, eq. 7-8"
    needs_svd = True
    takes_solver = False

    def __init__(self, eta: float = 0.85, eta_b: float = 1.0):
        self.eta = number("eta", eta, 0.0, 1.0)
        self.eta_b = number("eta_b", eta_b, 0.0, 1.0)

    def run(self, model, sde, obs, x_T, grid, solver, generator, cond=None) -> SampleResult:
        loop = OwnLoop(self, model, sde, x_T, grid, generator, cond)
        spectrum, reading = obs.spectrum(x_T), obs.reading(x_T)
        level = obs.sigma_y / spectrum.s  # the reading's noise, per coordinate
        keep = (1.0 - self.eta**2) ** 0.5
        x = x_T
        for t0, t1 in pairwise(grid):
            nu0, nu1 = loop.nu(t0), loop.nu(t1)
            x0 = loop.denoise(x, t0)
            z = loop.noise(x)
            u = x0 + (keep * nu1 / nu0) * (x / loop.alpha(t0) - x0) + (self.eta * nu1) * z
            c0, cz = spectrum.coordinates(x0), spectrum.coordinates(z)
            quiet = (
                c0 + (keep * nu1) * (reading - c0) / level.clamp_min(1e-30) + self.eta * nu1 * cz
            )
            spread = (nu1**2 - self.eta_b**2 * level**2).clamp_min(0.0).sqrt()
            loud = (1.0 - self.eta_b) * c0 + self.eta_b * reading + spread * cz
            x = loop.alpha(t1) * spectrum.compose(torch.where(nu1 < level, quiet, loud), u)
        return loop.result(x)
