"""Euler ancestral: an Euler step of the PF-ODE to σ_down, then fresh noise of size σ_up."""

from __future__ import annotations

import torch

from .registry import register_solver
from .stochastic import EtaSolver, ancestral_split


@register_solver(
    "euler_ancestral",
    kind="sde",
    order=1.0,
    nfe_per_step=1,
    stochastic=True,
    reference="Karras et al. 2022 (k-diffusion sample_euler_ancestral); Ho et al. 2020",
)
class EulerAncestral(EtaSolver):
    """Euler ancestral, in scaled units y = x/α, σ̃ = σ/α (k-diffusion's form on any SDE).

    With ``(σ_down, σ_up) = ancestral_split(σ̃_t, σ̃_s, η)``:
    ``y_s = x̂_0 + (y − x̂_0) σ_down/σ̃_t + s_noise · σ_up · z``.  At ``eta = 1`` this is
    the ``ancestral`` solver (the DDPM posterior step, same numbers) and at ``eta = 0``
    DDIM; on the EDM formulation it equals ``ddim --eta`` for every η.  1 NFE per step.
    """

    def step(self, process, t0, t1, x, state, noise):
        x0 = process.denoise(x, t0)
        if t1 == 0.0:
            return x0, state
        c0, c1 = process.at(t0), process.at(t1)
        sig0, sig1 = c0.sigma / c0.alpha, c1.sigma / c1.alpha
        down, up = ancestral_split(sig0, sig1, self.eta)
        # x_s = α_s (x̂_0 + (x/α_t − x̂_0) σ_down/σ̃_t) + α_s σ_up z
        on_x = c1.alpha * down / (sig0 * c0.alpha)
        x = torch.add(x * on_x, x0, alpha=c1.alpha * (1 - down / sig0))
        return self.add_noise(x, noise, t0, t1, c1.alpha * up), state
