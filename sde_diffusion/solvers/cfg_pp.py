"""CFG++ samplers: step along the unconditional noise estimate, land on the guided one.

Chung et al. 2024 (CFG++): classifier-free guidance pushes the state off the data manifold
when the guided estimate is also used to re-noise; CFG++ re-noises with the unconditional
estimate instead.  In scaled units ``y = x/α``, ``ν = σ/α`` and with ``(x̂_0, x̂_0^∅)`` the
guided and unconditional denoisers of one guided call (``ReverseProcess.denoise_guided``),
the forms are ComfyUI's (comfy/k_diffusion/sampling.py).  With a model that has no
unconditional branch, each is its base sampler.  The guidance scale of CFG++ is its λ:
published settings are far smaller than CFG's (about 0.4 to 1.5 where CFG takes 5 to 8).
"""

from __future__ import annotations

import math

import torch

from .base import Solver
from .registry import register_solver
from .stochastic import EtaSolver, ancestral_split, stage_times

GUIDED = frozenset({"guided"})
"""What CFG++ samplers ask of the process: ``denoise_guided`` (both branches of a guided call)."""


def scaled(process, t: float):
    """``(α, ν = σ/α, λ)`` at ``t``."""
    c = process.at(t)
    return c.alpha, c.sigma / c.alpha, c.log_snr


def ancestral_ends(process, t0: float, t1: float, eta: float):
    """``(α_t, ν_t, α_s, σ_down, σ_up)`` of the step ``t0 → t1`` (``ancestral_split``)."""
    a0, nu0, _ = scaled(process, t0)
    a1, nu1, _ = scaled(process, t1)
    return (a0, nu0, a1, *ancestral_split(nu0, nu1, eta))


@register_solver(
    "euler_ancestral_cfg_pp",
    kind="sde",
    order=1.0,
    nfe_per_step=1,
    stochastic=True,
    reference="Chung et al. 2024 (CFG++), DDIM-CFG++ with ancestral noise; ComfyUI",
)
class EulerAncestralCFGPP(EtaSolver):
    """Euler ancestral CFG++: ``y_s = x̂_0 + σ_down (y − x̂_0^∅)/ν_t + s_noise σ_up z``, with
    ``(σ_down, σ_up) = ancestral_split(ν_t, ν_s, η)``; ``eta = 0`` is ``euler_cfg_pp``
    (DDIM-CFG++).  1 NFE per step; a step to t = 0 returns x̂_0."""

    uses = GUIDED

    def step(self, process, t0, t1, x, state, noise):
        x0, x0_free = process.denoise_guided(x, t0)
        if t1 == 0.0:
            return x0, state
        a0, nu0, a1, down, up = ancestral_ends(process, t0, t1, self.eta)
        y = torch.add(x0, x / a0 - x0_free, alpha=down / nu0)
        return self.add_noise(y * a1, noise, t0, t1, a1 * up), state


@register_solver(
    "euler_cfg_pp",
    kind="ode",
    order=1.0,
    nfe_per_step=1,
    stochastic=False,
    reference="Chung et al. 2024 (CFG++), DDIM-CFG++; ComfyUI sample_euler_cfg_pp",
)
class EulerCFGPP(EulerAncestralCFGPP):
    """DDIM-CFG++: ``y_s = x̂_0 + ν_s (y − x̂_0^∅)/ν_t``.  1 NFE per step."""

    def __init__(self):
        super().__init__(eta=0.0)

    def options(self):
        return {}


@register_solver(
    "dpmpp_2m_cfg_pp",
    kind="ode",
    order=2.0,
    nfe_per_step=1,
    stochastic=False,
    reference="Chung et al. 2024 (CFG++); Lu et al. 2022 (DPM-Solver++ 2M); ComfyUI",
)
class DPMSolverPP2MCFGPP(Solver):
    """DPM-Solver++(2M) CFG++, with ``h = λ_s − λ_t``, ``r = h_prev/h``:
    ``y_s = x̂_0 + e^{−h} (y − x̂_0^∅) − (e^{−h} − 1)(x̂_0 − x̂_0,prev^∅)/(2r)`` (first step
    and a step to t = 0 without the last term).  1 NFE per step."""

    uses = GUIDED

    def step(self, process, t0, t1, x, state, noise):
        x0, x0_free = process.denoise_guided(x, t0)
        if t1 == 0.0:
            return x0, state
        a0, _, lam0 = scaled(process, t0)
        a1, _, lam1 = scaled(process, t1)
        h = lam1 - lam0
        y = torch.add(x0, x / a0 - x0_free, alpha=math.exp(-h))
        if state is not None:
            free_prev, h_prev = state
            y = torch.add(y, x0 - free_prev, alpha=-math.expm1(-h) * h / (2 * h_prev))
        return y * a1, (x0_free, h)


@register_solver(
    "dpmpp_2s_ancestral_cfg_pp",
    kind="sde",
    order=1.0,
    nfe_per_step=2,
    stochastic=True,
    reference="Chung et al. 2024 (CFG++); Lu et al. 2022 (DPM-Solver++ 2S); ComfyUI",
)
class DPMSolverPP2SAncestralCFGPP(EtaSolver):
    """DPM-Solver++(2S) ancestral CFG++: the 2S step on the unconditional denoiser to
    ``σ_down`` (midpoint at half the log-SNR way), fresh noise ``σ_up``, then the first
    call's guidance vector ``x̂_0 − x̂_0^∅`` added:
    ``u = (ν_m/ν_t) y − (e^{−h/2} − 1) x̂_0^∅``,
    ``y_s = (σ_down/ν_t) y − (e^{−h} − 1) x̂_0^∅(u) + σ_up z + (x̂_0 − x̂_0^∅)``.
    2 NFE per step; a step to t = 0 returns x̂_0."""

    uses = GUIDED

    def init(self, process, grid, x, noise):
        return stage_times(process, grid, self.eta)

    def step(self, process, t0, t1, x, state, noise):
        x0, x0_free = process.denoise_guided(x, t0)
        if t1 == 0.0:
            return x0, state
        a0, nu0, a1, down, up = ancestral_ends(process, t0, t1, self.eta)
        h = math.log(nu0 / down)
        t_mid = state[t0]
        am, num, _ = scaled(process, t_mid)
        y0 = x / a0
        u = torch.add(y0 * (num / nu0), x0_free, alpha=-math.expm1(-h / 2))
        _, free_mid = process.denoise_guided(u * am, t_mid)
        y = torch.add(y0 * (down / nu0), free_mid, alpha=-math.expm1(-h))
        y = torch.add(y, x0 - x0_free)
        return self.add_noise(y * a1, noise, t0, t1, a1 * up), state
