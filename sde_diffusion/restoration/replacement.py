"""Replacement (Song et al. 2021, score-SDE inpainting and colorization, appendix I).

After each solver step to ``t``, the measured part of the state is replaced by a fresh
draw of its forward marginal: in spectral coordinates ``x̄_t ← α_t ȳ + σ_t z`` (for a mask,
the observed pixels ``α_t y + σ_t z``; for colorization, the grey direction of each pixel,
Song et al.'s decoupled channel), and the solver carries the rest.  Run by default with the
predictor–corrector sampler ``pc``, as in the paper; any fixed-grid solver runs it.  The
unmeasured part never learns of ``y`` except through the score at later steps, which is
why replacement is biased wherever the two parts are correlated (Chung et al. 2022).
Meant for noise-free measurements: with ``σ_y > 0`` the noisy ``ȳ`` is imposed as it is.
"""

from __future__ import annotations

import torch

from ..sampling import SampleResult, solve
from .base import Method

__all__ = ["Replacement", "replacer"]


def replacer(sde, obs, like, generator):
    """The step hook ``(t0, t1, x) -> x`` imposing ``α(t1) ȳ + σ(t1) z`` on ``x̄``."""
    spectrum, reading = obs.spectrum(like), obs.reading(like)

    def after_step(t0: float, t1: float, x):
        alpha, sigma = float(sde.alpha(t1)), float(sde.sigma(t1))
        z = torch.randn(reading.shape, generator=generator, device=x.device, dtype=x.dtype)
        return spectrum.compose(alpha * reading + sigma * z, x)

    return after_step


class Replacement(Method):
    """Replace the measured part after every step (see the module)."""

    name = "replacement"
    reference = "Song et al. 2021, appendix I"
    needs_svd = True
    default_solver = "pc"

    def run(self, model, sde, obs, x_T, grid, solver, generator, cond=None) -> SampleResult:
        hook = replacer(sde, obs, x_T, generator)
        return solve(model, sde, x_T, grid, solver, cond=cond, generator=generator,
                      after_step=hook)  # fmt: skip
