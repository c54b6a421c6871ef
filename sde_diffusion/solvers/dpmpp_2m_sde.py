"""DPM-Solver++(2M) SDE: the second-order multistep solver of the reverse SDE family."""

from __future__ import annotations

import math

import torch

from ..errors import ArgumentError
from .registry import register_solver
from .stochastic import EtaSolver

VARIANTS = ("midpoint", "heun")


@register_solver(
    "dpmpp_2m_sde",
    aliases=("dpmpp_2m_sde_gpu",),  # ComfyUI: its GPU noise
    kind="sde",
    order=1.0,
    nfe_per_step=1,
    stochastic=True,
    reference="Lu et al. 2022, SDE-DPM-Solver++(2M); k-diffusion sample_dpmpp_2m_sde",
)
class DPMSolverPP2MSDE(EtaSolver):
    """DPM-Solver++(2M) SDE in λ = log(α/σ), ``h = λ_s − λ_t``, ``η h`` the noise share:

    ``x_s = (σ_s/σ_t) e^{−ηh} x + α_s (1 − e^{−(1+η)h}) x̂_0 + correction
    + s_noise · σ_s √(1 − e^{−2ηh}) z``, the correction from the previous x̂_0 with
    ``r = h_prev/h``: ``midpoint``: ``α_s (1 − e^{−(1+η)h}) (x̂_0 − x̂_0,prev)/(2r)``;
    ``heun``: ``α_s (1 − (1 − e^{−(1+η)h})/((1+η)h)) (x̂_0 − x̂_0,prev)/r``.
    ``eta = 0`` is ``dpmpp_2m`` exactly (midpoint); ``eta = 1`` samples the reverse SDE.
    1 NFE per step; a step to t = 0 returns x̂_0.
    """

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, variant: str = "midpoint"):
        super().__init__(eta, s_noise)
        if variant not in VARIANTS:
            raise ArgumentError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant

    def step(self, process, t0, t1, x, state, noise):
        x0 = process.denoise(x, t0)
        if t1 == 0.0:
            return x0, None
        c0, c1 = process.at(t0), process.at(t1)
        h = c1.log_snr - c0.log_snr
        eta_h = self.eta * h
        weight = -math.expm1(-h - eta_h)  # 1 − e^{−(1+η)h}
        x_new = torch.add(x * (c1.sigma / c0.sigma * math.exp(-eta_h)), x0, alpha=c1.alpha * weight)
        if state is not None:
            x0_prev, h_prev = state
            r = h_prev / h
            if self.variant == "midpoint":
                scale = 0.5 * weight / r
            else:
                scale = (weight / (-h - eta_h) + 1) / r
            x_new = torch.add(x_new, x0 - x0_prev, alpha=c1.alpha * scale)
        std = c1.sigma * math.sqrt(-math.expm1(-2 * eta_h))
        return self.add_noise(x_new, noise, t0, t1, std), (x0, h)


@register_solver(
    "dpmpp_2m_sde_heun",
    aliases=("dpmpp_2m_sde_heun_gpu",),  # ComfyUI: its GPU noise
    kind="sde",
    order=1.0,
    nfe_per_step=1,
    stochastic=True,
    reference="Lu et al. 2022; k-diffusion sample_dpmpp_2m_sde(solver_type='heun'); ComfyUI",
)
class DPMSolverPP2MSDEHeun(DPMSolverPP2MSDE):
    """DPM-Solver++(2M) SDE with the ``heun`` correction (ComfyUI's name for it)."""

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, variant: str = "heun"):
        super().__init__(eta, s_noise, variant)
