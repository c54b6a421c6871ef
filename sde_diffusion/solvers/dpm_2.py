"""DPM-Solver-2 (k-diffusion's ``sample_dpm_2``) and its ancestral form."""

from __future__ import annotations

import math

import torch

from .registry import register_solver
from .stochastic import MidpointEtaSolver


@register_solver(
    "dpm_2",
    kind="ode",
    order=2.0,
    nfe_per_step=2,
    stochastic=False,
    reference="Lu et al. 2022, DPM-Solver-2; Karras et al. 2022 (k-diffusion sample_dpm_2)",
)
class DPM2(MidpointEtaSolver):
    """DPM-Solver-2 in scaled units y = x/α, σ̃ = σ/α: an Euler step to the geometric
    midpoint σ̃_m = √(σ̃_t σ̃_s), then the full step with the slope found there:

    ``d = (y − x̂_0(t))/σ̃_t``, ``y_m = y + d (σ̃_m − σ̃_t)``,
    ``y_s = y + (y_m − x̂_0(m))/σ̃_m · (σ̃_s − σ̃_t)``; a step to t = 0 returns x̂_0.
    ``eta > 0`` (``dpm_2_ancestral``) integrates to σ_down and adds σ_up fresh noise
    (``ancestral_split``).  Order 2 (deterministic), 2 NFE per step.
    """

    def step(self, process, t0, t1, x, state, noise):
        x0 = process.denoise(x, t0)
        if t1 == 0.0:
            return x0, state
        c0, c1, sig0, down, up = self.split(process, t0, t1)
        y = x / c0.alpha
        sig_mid = math.sqrt(sig0 * down)  # the geometric mean: λ halfway to σ_down
        t_mid = state[t0]
        alpha_mid = process.at(t_mid).alpha
        y_mid = torch.add(y * (sig_mid / sig0), x0, alpha=1 - sig_mid / sig0)
        x0_mid = process.denoise(y_mid * alpha_mid, t_mid)
        slope = (y_mid - x0_mid) / sig_mid
        x = torch.add(y, slope, alpha=down - sig0) * c1.alpha
        return self.add_noise(x, noise, t0, t1, c1.alpha * up), state


@register_solver(
    "dpm_2_ancestral",
    kind="sde",
    order=1.0,
    nfe_per_step=2,
    stochastic=True,
    reference="Karras et al. 2022 (k-diffusion sample_dpm_2_ancestral)",
)
class DPM2Ancestral(DPM2):
    """DPM-Solver-2 to σ_down plus σ_up fresh noise (``eta = 1`` by default)."""

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0):
        super().__init__(eta, s_noise)
