"""VP and sub-VP SDEs: the linear β schedule of Song et al. 2021."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import SDE, Time, as_time, broadcast_coefficient, positive_range
from .registry import register_sde


class _LinearBetaSDE(SDE):
    """Shared schedule of VP and sub-VP: ``beta(t) = beta_min + t (beta_max - beta_min)``."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, t_min: float = 1e-3):
        self.beta_min, self.beta_max = positive_range("beta_min", beta_min, "beta_max", beta_max)
        self.t_min = positive_range("t_min", t_min, "T", self.T)[0]

    def beta(self, t: Time) -> Tensor:
        t = self.check_time(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: Time) -> Tensor:
        """``log alpha(t) = -(1/2) int_0^t beta = -t^2 (bmax - bmin)/4 - t bmin / 2``."""
        t = self.check_time(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t: Time) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def drift(self, x: Tensor, t: Time) -> Tensor:
        return -0.5 * broadcast_coefficient(self.beta(t), x) * x

    def t_from_log_alpha(self, log_alpha: Tensor) -> Tensor:
        """Root of ``(bmax - bmin) t^2 / 4 + bmin t / 2 + log alpha = 0`` in ``[0, T]``."""
        a, b = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
        t = (-b + torch.sqrt(b**2 - 4 * a * log_alpha)) / (2 * a)
        return t.clamp(0.0, self.T)


@register_sde("vp")
class VPSDE(_LinearBetaSDE):
    """Variance preserving SDE (DDPM in continuous time), Song et al. 2021 eq. 11.

    ``dx = -beta(t)/2 x dt + sqrt(beta(t)) dW``; ``alpha^2 + sigma^2 = 1``.
    """

    def diffusion(self, t: Time) -> Tensor:
        return torch.sqrt(self.beta(t))

    def sigma(self, t: Time) -> Tensor:
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def t_from_log_snr(self, lam: Tensor | float) -> Tensor:
        """Closed form: ``alpha^2 = sigmoid(2 lambda)``."""
        lam = as_time(lam).to(torch.float64)
        return self.t_from_log_alpha(-0.5 * torch.nn.functional.softplus(-2 * lam))


@register_sde("subvp")
class SubVPSDE(_LinearBetaSDE):
    """Sub-variance preserving SDE, Song et al. 2021 eq. 29.

    ``dx = -beta/2 x dt + sqrt(beta (1 - alpha^4)) dW``; ``sigma = 1 - alpha^2``.
    """

    def diffusion(self, t: Time) -> Tensor:
        return torch.sqrt(self.beta(t) * -torch.expm1(4 * self.log_alpha(t)))

    def sigma(self, t: Time) -> Tensor:
        return -torch.expm1(2 * self.log_alpha(t))

    def t_from_log_snr(self, lam: Tensor | float) -> Tensor:
        """Closed form: ``alpha / (1 - alpha^2) = e^lambda`` is a quadratic in alpha."""
        lam = as_time(lam).to(torch.float64)
        alpha = 2 / (torch.sqrt(1 + 4 * torch.exp(2 * lam)) + 1) * torch.exp(lam)
        return self.t_from_log_alpha(torch.log(alpha))
