"""EDM's stochastic sampler: churn noise, then a Heun step (Karras et al. 2022, alg. 2)."""

from __future__ import annotations

import math

import torch

from ..errors import ArgumentError
from .base import Solver
from .registry import register_solver
from .stochastic import noise_to_signal


@register_solver(
    "heun_sde",
    aliases=("edm", "edm_stochastic"),
    kind="sde",
    order=1.0,
    nfe_per_step=2,
    stochastic=True,
    reference="Karras et al. 2022, alg. 2",
)
class EDMStochasticHeun(Solver):
    """EDM stochastic Heun: raise ν to ν̂ = ν(1+γ) with fresh noise, Heun step ν̂ → ν_s.

    Works for any linear SDE in the scaled variables ``x̃ = x / α`` and
    ``ν = σ / α`` (EDM eq. 4), where the PF-ODE reads ``dx̃/dν = (x̃ − x̂_0)/ν``.
    ``γ = min(churn / N, √2 − 1)`` for ``s_tmin <= ν <= s_tmax`` else 0; ν̂ is
    capped at ν(T).  2 NFE per step (1 on a last step to t = 0).  ``churn = 0``
    is deterministic Heun in ν.  Churn noise is not a Brownian increment, so the
    sampler has no strong order against the reverse SDE (``order`` is nominal).
    """

    def __init__(
        self,
        churn: float = 40.0,
        s_tmin: float = 0.05,
        s_tmax: float = 50.0,
        s_noise: float = 1.003,
    ):
        if churn < 0 or s_noise < 0 or s_tmin < 0 or s_tmax < s_tmin:
            raise ArgumentError(
                "need churn >= 0, s_noise >= 0 and 0 <= s_tmin <= s_tmax, got "
                f"churn={churn}, s_tmin={s_tmin}, s_tmax={s_tmax}, s_noise={s_noise}"
            )
        self.churn, self.s_tmin, self.s_tmax, self.s_noise = map(
            float, (churn, s_tmin, s_tmax, s_noise)
        )

    @property
    def stochastic(self) -> bool:
        return self.churn > 0 and self.s_noise > 0

    uses = frozenset({"denoise"})

    def init(self, process, grid, x, noise):
        """Precompute the churned times t̂ of every step (one vectorised inversion)."""
        sde = process.sde
        steps = len(grid) - 1
        nu = [noise_to_signal(process.at(t)) for t in grid]
        gamma = [
            min(self.churn / steps, math.sqrt(2) - 1) if self.s_tmin <= v <= self.s_tmax else 0.0
            for v in nu[:-1]
        ]
        nu_max = noise_to_signal(process.at(sde.T))
        nu_hat = [min(v * (1 + g), nu_max) for v, g in zip(nu, gamma, strict=False)]
        t_hat = sde.t_from_log_snr(-torch.log(torch.tensor(nu_hat, dtype=torch.float64)))
        t_hat = [t if g > 0 else t0 for t, g, t0 in zip(t_hat.tolist(), gamma, grid, strict=False)]
        process.precompute(t_hat)
        return 0, nu, nu_hat, t_hat

    def step(self, process, t0, t1, x, state, noise):
        i, nu, nu_hat, t_hat = state
        x_scaled = x / process.at(t0).alpha
        v0, v_hat, v1, th = nu[i], nu_hat[i], nu[i + 1], t_hat[i]
        if v_hat > v0 and self.s_noise > 0:
            scale = math.sqrt(v_hat**2 - v0**2) * self.s_noise
            x_scaled = torch.add(x_scaled, noise.fresh(x), alpha=scale)
        x0 = process.denoise(x_scaled * process.at(th).alpha, th)
        d = (x_scaled - x0) / v_hat
        x_next = torch.add(x_scaled, d, alpha=v1 - v_hat)
        if t1 != 0.0:
            d1 = (x_next - process.denoise(x_next * process.at(t1).alpha, t1)) / v1
            x_next = torch.add(x_scaled, d + d1, alpha=0.5 * (v1 - v_hat))
        return x_next * process.at(t1).alpha, (i + 1, nu, nu_hat, t_hat)
