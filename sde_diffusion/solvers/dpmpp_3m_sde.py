"""DPM-Solver++(3M) SDE: the third-order multistep solver of the reverse SDE family."""

from __future__ import annotations

import math

import torch

from .registry import register_solver
from .stochastic import EtaSolver


@register_solver(
    "dpmpp_3m_sde",
    aliases=("dpmpp_3m_sde_gpu",),  # ComfyUI: its GPU noise
    kind="sde",
    order=1.0,
    nfe_per_step=1,
    stochastic=True,
    reference="Lu et al. 2022, DPM-Solver++; k-diffusion sample_dpmpp_3m_sde",
)
class DPMSolverPP3MSDE(EtaSolver):
    """DPM-Solver++(3M) SDE in λ = log(α/σ), ``h = λ_s − λ_t``, ``h_η = (1 + η) h``:

    ``x_s = (σ_s/σ_t) e^{−ηh} x + α_s (1 − e^{−h_η}) x̂_0 + α_s (φ₂ d₁ − φ₃ d₂)
    + s_noise σ_s √(1 − e^{−2ηh}) z`` with ``φ₂ = (e^{−h_η} − 1)/h_η + 1``,
    ``φ₃ = φ₂/h_η − 1/2`` and the divided differences d₁, d₂ of the last three x̂_0
    (only d₁ after one step; none on the first).  ``eta = 0`` is a deterministic
    third-order multistep solver.  1 NFE per step; a step to t = 0 returns x̂_0.
    """

    def step(self, process, t0, t1, x, state, noise):
        x0 = process.denoise(x, t0)
        if t1 == 0.0:
            return x0, None
        c0, c1 = process.at(t0), process.at(t1)
        h = c1.log_snr - c0.log_snr
        h_eta = h * (self.eta + 1)
        x_new = torch.add(
            x * (c1.sigma / c0.sigma * math.exp(-self.eta * h)),
            x0,
            alpha=-c1.alpha * math.expm1(-h_eta),
        )
        history = state or []
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        if len(history) == 2:
            (x0_1, h_1), (x0_2, h_2) = history
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (x0 - x0_1) / r0
            d1_1 = (x0_1 - x0_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            x_new = x_new + (d1 * phi_2 - d2 * phi_3) * c1.alpha
        elif len(history) == 1:
            ((x0_1, h_1),) = history
            x_new = torch.add(x_new, (x0 - x0_1) / (h_1 / h), alpha=c1.alpha * phi_2)
        std = c1.sigma * math.sqrt(-math.expm1(-2 * h * self.eta))
        return self.add_noise(x_new, noise, t0, t1, std), [(x0, h), *history[:1]]
