"""The reverse-time SDE and the probability-flow ODE of ``(sde, score_fn)``.

For a forward SDE ``dx = f dt + g dW`` with marginals ``p_t``, both

    reverse SDE:  dx = [f(x, t) - g(t)^2 score(x, t)] dt + g(t) dW_bar   (dt < 0)
    PF-ODE:       dx/dt = f(x, t) - g(t)^2 score(x, t) / 2

carry ``p_T`` back to ``p_0`` (Anderson 1982; Song et al. 2021, eqs. 6 and 13).
``score_fn(x, t)`` takes ``x`` of shape ``(B, *event)`` and ``t`` of shape
``(B,)`` and returns ``grad_x log p_t(x)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .sdes import SDE, Time, as_time, broadcast_coefficient

__all__ = ["ProbabilityFlowODE", "ReverseProcess", "ReverseSDE", "ScoreFn"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


class ReverseProcess:
    """What every sampler needs of ``(sde, score_fn)``: scores, denoised estimates."""

    def __init__(self, sde: SDE, score_fn: ScoreFn):
        self.sde = sde
        self.score_fn = score_fn

    def batch_time(self, x: Tensor, t: Time) -> Tensor:
        """``t`` as shape ``(B,)`` on ``x``'s device and dtype (a fill, no host sync)."""
        if isinstance(t, Tensor) and t.ndim == 1:
            return t.to(device=x.device, dtype=x.dtype)
        t = t.item() if isinstance(t, Tensor) and t.device.type == "cpu" else t
        if isinstance(t, Tensor):
            return t.to(device=x.device, dtype=x.dtype).expand(x.shape[0])
        return torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)

    def score(self, x: Tensor, t: Time) -> Tensor:
        """``grad_x log p_t(x)``."""
        return self.score_fn(x, self.batch_time(x, t))

    def denoise(self, x: Tensor, t: Time, score: Tensor | None = None) -> Tensor:
        """Tweedie's estimate ``E[x_0 | x_t] = (x + sigma^2 score) / alpha``."""
        if score is None:
            score = self.score(x, t)
        alpha = broadcast_coefficient(self.sde.alpha(t), x)
        sigma = broadcast_coefficient(self.sde.sigma(t), x)
        return (x + sigma**2 * score) / alpha

    def g2(self, x: Tensor, t: Time) -> Tensor:
        return broadcast_coefficient(self.sde.diffusion(t), x) ** 2


class ReverseSDE(ReverseProcess):
    """``dx = [f - g^2 score] dt + g dW_bar``, integrated from ``T`` down to ``t_min``."""

    kind = "sde"

    def drift(self, x: Tensor, t: Time, score: Tensor | None = None) -> Tensor:
        if score is None:
            score = self.score(x, t)
        return self.sde.drift(x, as_time(t)) - self.g2(x, t) * score

    def diffusion(self, t: Time) -> Tensor:
        return self.sde.diffusion(t)


class ProbabilityFlowODE(ReverseProcess):
    """``dx/dt = f - g^2 score / 2``: deterministic, same marginals as the SDE."""

    kind = "ode"

    def velocity(self, x: Tensor, t: Time, score: Tensor | None = None) -> Tensor:
        if score is None:
            score = self.score(x, t)
        return self.sde.drift(x, as_time(t)) - 0.5 * self.g2(x, t) * score

    drift = velocity
