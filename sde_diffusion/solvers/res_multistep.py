"""RES multistep: the second-order exponential multistep method of Zhang et al. 2023."""

from __future__ import annotations

import math

import torch

from .cfg_pp import GUIDED, ancestral_ends
from .registry import register_solver
from .stochastic import EtaSolver


def phi_weights(h: float, c2: float) -> tuple[float, float]:
    """``(b_1, b_2) = (φ_1(−h) − φ_2(−h)/c_2, φ_2(−h)/c_2)``, ``φ_1(z) = (e^z − 1)/z``,
    ``φ_2(z) = (φ_1(z) − 1)/z``: the RES weights of the current and previous x̂_0."""
    phi1 = math.expm1(-h) / -h
    phi2 = (phi1 - 1) / -h
    return phi1 - phi2 / c2, phi2 / c2


@register_solver(
    "res_multistep",
    kind="ode",
    order=2.0,
    nfe_per_step=1,
    stochastic=False,
    reference="Zhang et al. 2023 (RES, arXiv:2308.02157), 2-step; ComfyUI res_multistep",
)
class ResMultistep(EtaSolver):
    """RES 2-step in scaled units ``y = x/α``, ``ν = σ/α``, ``λ = −log ν``.

    With ``(σ_down, σ_up) = ancestral_split(ν_t, ν_s, η)``, ``h = log(ν_t/σ_down)`` and
    ``c_2 = (λ_prev − λ_down,prev)/h`` (the previous step, to its own σ_down):
    ``y_s = e^{−h} y + h (b_1 x̂_0 + b_2 x̂_0,prev) + s_noise σ_up z`` with the φ-function
    weights ``phi_weights(h, c_2)``; the first step (and a step to σ_down = 0) is DDIM,
    ``y_s = x̂_0 + σ_down (y − x̂_0)/ν_t``.  ``eta = 0`` (default) is the ODE method,
    ``res_multistep_ancestral`` has ``eta = 1``.  1 NFE per step.
    """

    cfg_pp = False

    def __init__(self, eta: float = 0.0, s_noise: float = 1.0):
        super().__init__(eta, s_noise)

    @property
    def order(self) -> float:
        return 1.0 if self.stochastic else 2.0

    def step(self, process, t0, t1, x, state, noise):
        if self.cfg_pp:
            x0, x0_free = process.denoise_guided(x, t0)
        else:
            x0 = x0_free = process.denoise(x, t0)
        a0, nu0, a1, down, up = ancestral_ends(process, t0, t1, self.eta)
        y = x / a0
        if down == 0.0 or state is None:
            y = torch.add(x0, y - x0_free, alpha=down / nu0)
        else:
            old, old_down, nu_prev = state
            h = math.log(nu0 / down)
            b1, b2 = phi_weights(h, math.log(old_down / nu_prev) / h)
            y = torch.add(y, x0 - x0_free)  # CFG++: the guidance vector (else zero)
            y = torch.add(y * math.exp(-h), x0_free, alpha=h * b1).add_(old, alpha=h * b2)
        return self.add_noise(y * a1, noise, t0, t1, a1 * up), (x0_free, down, nu0)


@register_solver(
    "res_multistep_ancestral",
    kind="sde",
    order=1.0,
    nfe_per_step=1,
    stochastic=True,
    reference="Zhang et al. 2023 (RES); ComfyUI res_multistep_ancestral",
)
class ResMultistepAncestral(ResMultistep):
    """RES 2-step to σ_down with σ_up fresh noise (``eta = 1`` by default)."""

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0):
        super().__init__(eta, s_noise)


@register_solver(
    "res_multistep_cfg_pp",
    kind="ode",
    order=2.0,
    nfe_per_step=1,
    stochastic=False,
    reference="Zhang et al. 2023 (RES); Chung et al. 2024 (CFG++); ComfyUI",
)
class ResMultistepCFGPP(ResMultistep):
    """RES 2-step CFG++: the step on the unconditional denoiser from ``y + x̂_0 − x̂_0^∅``
    (first step: ``x̂_0 + σ_down (y − x̂_0^∅)/ν_t``).  1 NFE per step."""

    cfg_pp, uses = True, GUIDED


@register_solver(
    "res_multistep_ancestral_cfg_pp",
    kind="sde",
    order=1.0,
    nfe_per_step=1,
    stochastic=True,
    reference="Zhang et al. 2023 (RES); Chung et al. 2024 (CFG++); ComfyUI",
)
class ResMultistepAncestralCFGPP(ResMultistepAncestral):
    """RES 2-step ancestral CFG++ (``eta = 1`` by default)."""

    cfg_pp, uses = True, GUIDED
