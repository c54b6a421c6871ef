"""A VP SDE from a discrete DDPM table ᾱ (diffusers' ``alphas_cumprod``)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ArgumentError
from .base import SDE, Time, as_time, broadcast_coefficient
from .registry import register_sde


@register_sde("discrete_vp")
class DiscreteVPSDE(SDE):
    """A VP SDE from a discrete DDPM schedule ``alphas_cumprod`` (ᾱ_0 … ᾱ_{N-1}).

    Level ``k`` sits at ``t_k = (k + 1) / N``; ``log ᾱ`` is piecewise linear in
    ``t`` between levels, as in DPM-Solver's ``NoiseScheduleVP("discrete")``, and 0
    at ``t = 0`` (clean data).  So ``alpha = sqrt(ᾱ)`` and ``sigma = sqrt(1 - ᾱ)``
    are exact at every level, ``f = (1/2) d log ᾱ / dt`` and ``g^2 = -2 f``.
    ``t_min = 1/N`` (level 0), ``T = 1`` (level N - 1).  Without a table it is DDPM's
    (linear β from 1e-4 to 0.02, 1000 levels).

    A zero-terminal-SNR table (ᾱ_{N-1} = 0: Lin et al. 2024, diffusers'
    ``rescale_betas_zero_snr``) ends at the VP limit: its last level takes the geometric
    continuation ``ᾱ_{N-2}² / ᾱ_{N-3}`` of the two before it (α(T) between 3e-5 and 3e-4
    for SD 2.x's table, by the precision it was computed in), so every solver can divide by
    α at T and the prior is N(0, I) to that precision.
    """

    def __init__(self, alphas_cumprod: Tensor | list[float] | None = None):
        if alphas_cumprod is None:  # DDPM's linear β table (Ho et al. 2020), diffusers' default
            alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
        table = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        abar = table.clone()
        if abar.numel() >= 3 and abar[-1] == 0 and bool((abar[:-1] > 0).all()):
            abar[-1] = abar[-2] ** 2 / abar[-3]  # zero terminal SNR: the VP limit
        if abar.numel() < 2 or not bool(((abar > 0) & (abar <= 1)).all()):
            raise ArgumentError(
                "alphas_cumprod must hold at least 2 values in (0, 1] (a last value of 0, zero "
                "terminal SNR, needs 3)"
            )
        if not bool((abar.diff() < 0).all()):
            raise ArgumentError("alphas_cumprod must decrease strictly")
        self.alphas_cumprod, self.num_levels = table, abar.numel()
        self.t_min = 1.0 / self.num_levels
        self._times = torch.arange(self.num_levels + 1, dtype=torch.float64) / self.num_levels
        self._log_abar = torch.cat([torch.zeros(1, dtype=torch.float64), abar.log()])
        self._on: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _table(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._on:
            self._on[device] = (self._times.to(device), self._log_abar.to(device))
        return self._on[device]

    def _segment(self, t: Time) -> tuple[Tensor, Tensor, Tensor]:
        """``(t as float64, log ᾱ at the segment's left end, slope)`` for each time."""
        t = self.check_time(t)
        t64 = t.to(torch.float64)
        times, log_abar = self._table(t.device)
        i = torch.searchsorted(times, t64.contiguous(), right=True).clamp(1, self.num_levels)
        slope = (log_abar[i] - log_abar[i - 1]) * self.num_levels
        return t64 - times[i - 1], log_abar[i - 1], slope

    def log_alpha_bar(self, t: Time) -> Tensor:
        """``log ᾱ(t)``, piecewise linear in ``t``; dtype follows ``t`` (float64 for numbers)."""
        offset, left, slope = self._segment(t)
        return (left + slope * offset).to(as_time(t).dtype)

    def alpha(self, t: Time) -> Tensor:
        return torch.exp(0.5 * self.log_alpha_bar(t))

    def sigma(self, t: Time) -> Tensor:
        return torch.sqrt(-torch.expm1(self.log_alpha_bar(t)))

    def drift_coefficient(self, t: Time) -> Tensor:
        return (0.5 * self._segment(t)[2]).to(as_time(t).dtype)

    def drift(self, x: Tensor, t: Time) -> Tensor:
        return broadcast_coefficient(self.drift_coefficient(t), x) * x

    def diffusion(self, t: Time) -> Tensor:
        return torch.sqrt(-2 * self.drift_coefficient(t))

    def t_from_log_snr(self, lam: Tensor | float) -> Tensor:
        """Exact inverse: ``log ᾱ = -softplus(-2 lambda)``, then the linear segment."""
        lam = as_time(lam).to(torch.float64)
        target = torch.nn.functional.softplus(-2 * lam)  # -log ᾱ, increasing in t
        times, log_abar = self._table(lam.device)
        i = torch.searchsorted(-log_abar, target.contiguous()).clamp(1, self.num_levels)
        left, right = -log_abar[i - 1], -log_abar[i]
        t = times[i - 1] + (target - left) / (right - left) / self.num_levels
        return t.clamp(0.0, self.T)

    def __repr__(self) -> str:
        return f"DiscreteVPSDE(num_levels={self.num_levels})"
