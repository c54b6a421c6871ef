"""DPM-Solver++(2S): the single-step second-order solver, and its ancestral form."""

from __future__ import annotations

import math

import torch

from .registry import register_solver
from .stochastic import MidpointEtaSolver


@register_solver(
    "dpmpp_2s",
    kind="ode",
    order=2.0,
    nfe_per_step=2,
    stochastic=False,
    reference="Lu et al. 2022, DPM-Solver++, alg. 1 (2S, r = 1/2)",
)
class DPMSolverPP2S(MidpointEtaSolver):
    """DPM-Solver++(2S) in log-SNR λ = log(α/σ), midpoint r = 1/2:

    ``h = λ_s − λ_t``, ``u = (σ_m/σ_t) x − α_m (e^{−h/2} − 1) x̂_0(t)`` at λ_m = λ_t + h/2,
    ``x_s = (σ_s/σ_t) x − α_s (e^{−h} − 1) x̂_0(u, m)``; a step to t = 0 returns x̂_0.
    ``eta > 0`` (``dpmpp_2s_ancestral``) steps to σ_down and adds σ_up fresh noise
    (``ancestral_split``).  Order 2 (deterministic), 2 NFE per step.
    """

    def step(self, process, t0, t1, x, state, noise):
        x0 = process.denoise(x, t0)
        if t1 == 0.0:
            return x0, state
        c0, c1, sig0, down, up = self.split(process, t0, t1)
        h = math.log(sig0 / down)  # λ_down − λ_t
        t_mid = state[t0]  # λ_t + h/2
        cm = process.at(t_mid)
        u = torch.add(x * (cm.sigma / c0.sigma), x0, alpha=-cm.alpha * math.expm1(-h / 2))
        x0_mid = process.denoise(u, t_mid)
        # in scaled units: y_down = (σ_down/σ̃_t) y − (e^{−h} − 1) x̂_0(m), then x = α_s y
        y = torch.add(x * (down / (sig0 * c0.alpha)), x0_mid, alpha=-math.expm1(-h))
        x = y * c1.alpha
        return self.add_noise(x, noise, t0, t1, c1.alpha * up), state


@register_solver(
    "dpmpp_2s_ancestral",
    kind="sde",
    order=1.0,
    nfe_per_step=2,
    stochastic=True,
    reference="Lu et al. 2022; Karras et al. 2022 (k-diffusion sample_dpmpp_2s_ancestral)",
)
class DPMSolverPP2SAncestral(DPMSolverPP2S):
    """DPM-Solver++(2S) to σ_down plus σ_up fresh noise (``eta = 1`` by default)."""

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0):
        super().__init__(eta, s_noise)
