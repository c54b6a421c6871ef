"""The variance exploding SDE (SMLD in continuous time)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import SDE, Time, as_time, positive_range
from .registry import register_sde


@register_sde("ve")
class VESDE(SDE):
    """Variance exploding SDE (SMLD in continuous time), Song et al. 2021 eq. 9.

    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, ``f = 0``,
    ``g = sigma(t) sqrt(2 log(sigma_max / sigma_min))``, ``alpha = 1``.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, *, t_min: float = 1e-5):
        self.sigma_min, self.sigma_max = positive_range(
            "sigma_min", sigma_min, "sigma_max", sigma_max
        )
        self.t_min = positive_range("t_min", t_min, "T", self.T)[0]
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def drift(self, x: Tensor, t: Time) -> Tensor:
        self.check_time(t)
        return torch.zeros_like(x)

    def diffusion(self, t: Time) -> Tensor:
        return self.sigma(t) * math.sqrt(2 * self._log_ratio)

    def alpha(self, t: Time) -> Tensor:
        return torch.ones_like(self.check_time(t))

    def sigma(self, t: Time) -> Tensor:
        return self.sigma_min * torch.exp(self.check_time(t) * self._log_ratio)

    def t_from_log_snr(self, lam: Tensor | float) -> Tensor:
        lam = as_time(lam).to(torch.float64)
        return ((-lam - math.log(self.sigma_min)) / self._log_ratio).clamp(0.0, self.T)
