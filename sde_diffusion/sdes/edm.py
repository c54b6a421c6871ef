"""The EDM SDE: σ(t) = t, α = 1."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import SDE, Time, as_time, positive_range
from .registry import register_sde


@register_sde("edm")
class EDMSDE(SDE):
    """The EDM formulation, Karras et al. 2022: ``sigma(t) = t``, ``alpha = 1``.

    ``dx = sqrt(2 t) dW`` on ``[0, sigma_max]``; the PF-ODE velocity is
    ``-t * score = (x - D(x, t)) / t``.  ``t_min = sigma_min``, ``T = sigma_max``.
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.sigma_min, self.sigma_max = positive_range(
            "sigma_min", sigma_min, "sigma_max", sigma_max
        )
        self.T = self.sigma_max
        self.t_min = self.sigma_min

    def drift(self, x: Tensor, t: Time) -> Tensor:
        self.check_time(t)
        return torch.zeros_like(x)

    def diffusion(self, t: Time) -> Tensor:
        return torch.sqrt(2 * self.check_time(t))

    def alpha(self, t: Time) -> Tensor:
        return torch.ones_like(self.check_time(t))

    def sigma(self, t: Time) -> Tensor:
        return self.check_time(t).clone()

    def t_from_log_snr(self, lam: Tensor | float) -> Tensor:
        return torch.exp(-as_time(lam).to(torch.float64)).clamp(0.0, self.T)
