"""ER-SDE-Solver-3: the extended reverse-time SDE of Cui et al. 2023, up to three stages."""

from __future__ import annotations

import math

import torch

from ..errors import ArgumentError
from .registry import register_solver
from .stochastic import EtaSolver

POINTS = 200  # the Riemann sum of the stage integrals (the paper's code and ComfyUI)


def noise_scaler(nu: torch.Tensor | float):
    """The default noise scaler ``f(ν) = ν (e^{ν^0.3} + 10)`` of ER-SDE-Solver-3."""
    return nu * (math.exp(nu**0.3) + 10) if isinstance(nu, float) else nu * (nu**0.3).exp().add(10)


def stage_integrals(nu_t: float, nu_s: float) -> tuple[float, float]:
    """``∫ dν/f(ν)`` and ``∫ (ν − ν_t)/f(ν) dν`` from ``ν_t`` down to ``ν_s``, as left Riemann
    sums on ``POINTS`` points from ``ν_s`` (the form of the paper's code)."""
    step = (nu_t - nu_s) / POINTS
    nu = nu_s + step * torch.arange(POINTS, dtype=torch.float64)
    scaled = noise_scaler(nu)
    return float((1 / scaled).sum()) * step, float(((nu - nu_t) / scaled).sum()) * step


@register_solver(
    "er_sde",
    kind="sde",
    order=1.0,
    nfe_per_step=1,
    stochastic=True,
    reference="Cui et al. 2023, Elucidating the Solution Space of Extended Reverse-Time SDEs "
    "(ER-SDE-Solver-3, VP); ComfyUI sample_er_sde",
)
class ERSDE(EtaSolver):
    """ER-SDE-Solver-3 in ``ν = σ/α`` with the noise scaler ``f`` and ``r = f(ν_s)/f(ν_t)``:

    ``x_s = (α_s/α_t) r x + α_s (1 − r) x̂_0``
    ``+ α_s (ν_s − ν_t + f(ν_s) ∫ dν/f) D_1 + α_s ((ν_s − ν_t)²/2 + f(ν_s) ∫ (ν − ν_t)/f dν) D_2``
    ``+ s_noise α_s √(ν_s² − ν_t² r²) z``, with ``D_1``, ``D_2`` divided differences of x̂_0
    in ν over the previous steps (stage 2 from the second step, stage 3 from the third, up
    to ``max_stage``).  1 NFE per step; a step to t = 0 returns x̂_0."""

    def __init__(self, s_noise: float = 1.0, max_stage: int = 3):
        super().__init__(1.0, s_noise)
        if max_stage not in (1, 2, 3):
            raise ArgumentError(f"max_stage must be 1, 2 or 3, got {max_stage!r}")
        self.max_stage = max_stage

    def options(self):
        return {"s_noise": self.s_noise, "max_stage": self.max_stage}

    @property
    def stochastic(self) -> bool:
        return self.s_noise > 0

    def step(self, process, t0, t1, x, state, noise):
        x0 = process.denoise(x, t0)
        history = state or ()  # ((x̂_0, ν, D_1), ...) of earlier steps, newest first
        if t1 == 0.0:
            return x0, state
        c0, c1 = process.at(t0), process.at(t1)
        nu0, nu1 = c0.sigma / c0.alpha, c1.sigma / c1.alpha
        r = noise_scaler(nu1) / noise_scaler(nu0)
        x_new = torch.add(x * (c1.alpha / c0.alpha * r), x0, alpha=c1.alpha * (1 - r))
        d1 = None
        if self.max_stage >= 2 and history:
            x0_prev, nu_prev, d1_prev = history[0]
            dt = nu1 - nu0
            s, s_u = stage_integrals(nu0, nu1)
            d1 = (x0 - x0_prev) / (nu0 - nu_prev)
            x_new = x_new.add_(d1, alpha=c1.alpha * (dt + s * noise_scaler(nu1)))
            if self.max_stage >= 3 and d1_prev is not None:
                nu_before = history[1][1]
                d2 = (d1 - d1_prev) / ((nu0 - nu_before) / 2)
                x_new = x_new.add_(d2, alpha=c1.alpha * (dt**2 / 2 + s_u * noise_scaler(nu1)))
        std = c1.alpha * math.sqrt(max(nu1**2 - nu0**2 * r**2, 0.0))
        return self.add_noise(x_new, noise, t0, t1, std), ((x0, nu0, d1), *history[:1])
