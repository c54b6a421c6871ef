"""Rectified flow (flow matching): α = 1 − t, σ = t."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ArgumentError
from .base import SDE, Time, as_time, broadcast_coefficient, positive_range
from .registry import register_sde

LIMIT = 1e-7  # α at t = 1: the coefficients there are taken at 1 - LIMIT


@register_sde("rectified_flow")
class RectifiedFlow(SDE):
    """Rectified flow / flow matching: the straight path ``x_t = (1 - t) x_0 + t eps``.

    ``alpha = 1 - t``, ``sigma = t`` (Liu et al. 2023; Lipman et al. 2023; Stable
    Diffusion 3 and Flux).  As a linear SDE ``f = -1/(1 - t)`` and
    ``g^2 = d sigma^2/dt - 2 f sigma^2 = 2 t / (1 - t)``; the PF-ODE velocity is
    ``eps - x_0``, what a flow-matching network predicts (the ``velocity`` kind).
    ``f`` and ``g`` are singular at ``t = 1``, where ``alpha = 0``, so the process
    runs on ``[t_min, T]`` with ``T = 1 - 1e-3`` by default: the prior ``N(0, T^2 I)``
    differs from ``p_T`` by the ``alpha(T) = 1e-3`` of the data left in it.  ``T = 1``, where
    flow-matching pipelines start (σ = 1), is allowed: the coefficients are then taken at
    ``min(t, 1 − 1e-7)`` (α(1) = 1e-7, the limit to that precision), which keeps every
    conversion between predictions finite (x̂₀ = x − t v, exactly as t → 1) while a
    velocity model still sees ``t = 1``.
    """

    def __init__(self, t_min: float = 1e-3, T: float = 0.999):
        self.t_min, self.T = positive_range("t_min", t_min, "T", T)
        if self.T > 1:
            raise ArgumentError(f"T must be at most 1 (alpha(1) = 0), got {T!r}")

    def _clamped(self, t: Time) -> Tensor:
        return self.check_time(t).clamp(max=1.0 - LIMIT)

    def drift(self, x: Tensor, t: Time) -> Tensor:
        return broadcast_coefficient(-1.0 / (1.0 - self._clamped(t)), x) * x

    def diffusion(self, t: Time) -> Tensor:
        t = self._clamped(t)
        return torch.sqrt(2 * t / (1 - t))

    def alpha(self, t: Time) -> Tensor:
        return 1.0 - self._clamped(t)

    def sigma(self, t: Time) -> Tensor:
        return self._clamped(t).clone()

    def t_from_log_snr(self, lam: Tensor | float) -> Tensor:
        """Closed form: ``(1 - t)/t = e^lambda``, so ``t = sigmoid(-lambda)``."""
        return torch.sigmoid(-as_time(lam).to(torch.float64)).clamp(0.0, self.T)
