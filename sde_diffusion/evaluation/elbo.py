"""The variational lower bound (ELBO) on the log-likelihood, on any linear SDE.

The discrete-time bound of Sohl-Dickstein et al. 2015 and Ho et al. 2020, whose reverse
steps are the model's Gaussian posteriors ``q(x_s | x_t, x̂_0)`` (DDPM's).  It sits beside
the exact PF-ODE log-likelihood of :mod:`sde_diffusion.evaluation.likelihood`, above which it lies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor

from ..errors import ArgumentError, raise_if_not_finite
from ..parametrization import Coefficients, convert_at
from ..reverse import ReverseProcess, ScoreFn
from ..sdes import SDE
from ..solvers.stochastic import posterior_coefficients

__all__ = ["ELBOResult", "elbo", "elbo_terms"]


class _GivenStart:
    """``sde``'s marginals given ``x_{t0}`` in place of ``x_0``: ``x_t = a(t) x_{t0} + s(t) eps``.

    ``a = alpha_t / alpha_{t0}`` and ``s^2 = sigma_t^2 - a^2 sigma_{t0}^2``: the
    data of the variational bound is ``x_{t0}``, the variable whose density the
    PF-ODE computes, so both numbers bound or equal the same quantity.
    """

    def __init__(self, sde: SDE, t0: float):
        self.sde, self.alpha0, self.sigma0 = sde, sde.alpha(t0), sde.sigma(t0)

    def alpha(self, t: float) -> Tensor:
        return self.sde.alpha(t) / self.alpha0

    def sigma(self, t: float) -> Tensor:
        return (self.sde.sigma(t) ** 2 - (self.alpha(t) * self.sigma0) ** 2).clamp_min(0).sqrt()

    def at(self, t: float) -> Coefficients:
        return Coefficients(float(self.alpha(t)), float(self.sigma(t)))

    def grid(self, t0: float, steps: int) -> list[float]:
        """``t0`` then ``steps`` times up to ``T``, uniform in this chain's log-SNR.

        With ``n = sigma^2 / alpha^2`` the chain's noise-to-signal ratio is
        ``alpha_{t0}^2 (n(t) - n(t0))``.  It runs from ``sigma_{t0}^2`` (added noise as
        large as the noise already in ``x_{t0}``) to its value at ``T``.  A grid uniform
        in the SDE's own log-SNR would crowd the chain's first steps with ratios
        2, 3/2, 4/3, ... and leave a gap of about ``pi^2 D / 24`` nats however many
        steps were taken.
        """
        n0 = math.exp(-float(self.sde.log_snr(t0)))
        a0sq = float(self.alpha0) ** 2
        hi = -math.log(a0sq * n0)
        lo = -math.log(a0sq * (math.exp(-float(self.sde.log_snr(self.sde.T))) - n0))
        lam_rel = torch.linspace(hi, lo, steps, dtype=torch.float64)
        lam = -torch.log(n0 + torch.exp(-lam_rel) / a0sq)
        times = self.sde.t_from_log_snr(lam).tolist()
        times[-1] = float(self.sde.T)
        return [t0, *times]


@dataclass
class ELBOResult:
    """Per-sample terms of the variational bound (nats): ``elbo = -(prior + diffusion + recon)``."""

    elbo: Tensor
    prior_kl: Tensor
    diffusion_kl: Tensor
    reconstruction: Tensor
    nfe: int


def elbo_terms(
    model: ScoreFn,
    sde: SDE,
    x: Tensor,
    *,
    cond: Tensor | dict[str, Tensor] | None = None,
    steps: int = 1000,
    t_start: float | None = None,
    generator: torch.Generator | None = None,
) -> ELBOResult:
    """Per-sample variational lower bound on ``log p_{t_start}(x)`` in nats (the VLB), with
    its terms (:func:`elbo` gives the bound alone).

    The discrete-time bound of Sohl-Dickstein et al. 2015 and Ho et al. 2020 on a
    grid ``t_start = t_0 < t_1 < ... < t_N = T`` uniform in the log-SNR of
    ``x_t`` given ``x_{t_0}`` (see ``_GivenStart.grid``), with the model's
    reverse steps ``p(x_s | x_t) = q(x_s | x_t, x̂_0)`` (posterior variance) and
    ``x̂_0`` Tweedie's estimate from the score::

        -elbo = KL(q(x_T | x) || prior) + sum_i KL(q(x_{i-1} | x_i, x) || p(x_{i-1} | x_i))
                - log N(x; x̂_0(x_1), s_1^2 I)

    Each KL between Gaussians of equal variance is ``c_0^2 |x - x̂_0|^2 / (2 var)``;
    every term is estimated with one draw of ``x_i ~ q(x_i | x)``.  Any linear SDE
    works (VP is the classical case).  The bound tightens as ``steps`` grows.
    """
    if x.ndim < 2 or not x.is_floating_point():
        raise ArgumentError(
            f"x must be a floating-point batch of shape (B, *event), got {tuple(x.shape)} {x.dtype}"
        )
    if steps < 2:
        raise ArgumentError(f"the variational bound needs steps >= 2, got {steps}")
    t0 = float(sde.t_min if t_start is None else t_start)
    if not 0 < t0 < sde.T:
        raise ArgumentError(f"t_start must lie in (0, T) = (0, {sde.T}), got {t0}")
    given = _GivenStart(sde, t0)
    grid = given.grid(t0, steps)
    process = ReverseProcess(model, sde, x, cond=cond, grid=grid)
    dim, flat = x[0].numel(), x.flatten(1)

    def draw_and_denoise(t: float) -> Tensor:
        """``E[x_{t0} | x_t]`` for ``x_t ~ q(x_t | x)`` (Tweedie on the chain from ``t0``)."""
        chain = given.at(t)
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_t = chain.alpha * x + chain.sigma * eps
        return convert_at(process.score(x_t, t), x_t, "score", "x0", chain).flatten(1)

    prior_var = sde.prior_std**2
    a_T, s_T = float(given.alpha(sde.T)), float(given.sigma(sde.T))
    ratio = s_T**2 / prior_var
    prior_kl = 0.5 * (dim * (ratio - 1 - math.log(ratio)) + a_T**2 * flat.pow(2).sum(1) / prior_var)
    diffusion_kl = torch.zeros_like(prior_kl)
    for s, t in pairwise(grid[1:]):
        _, c_0, var, _ = posterior_coefficients(given.at(t), given.at(s))
        sq = (flat - draw_and_denoise(t)).pow(2).sum(1)
        diffusion_kl = diffusion_kl + c_0**2 / (2 * var) * sq
    t1 = grid[1]
    rec_var = float(given.sigma(t1) ** 2 / given.alpha(t1) ** 2)
    sq = (flat - draw_and_denoise(t1)).pow(2).sum(1)
    reconstruction = 0.5 * dim * math.log(2 * math.pi * rec_var) + sq / (2 * rec_var)
    bound = -(prior_kl + diffusion_kl + reconstruction)
    raise_if_not_finite(bound, "elbo")
    return ELBOResult(bound, prior_kl, diffusion_kl, reconstruction, process.nfe)


def elbo(model: ScoreFn, sde: SDE, x: Tensor, **options) -> Tensor:
    """The per-sample bound of :func:`elbo_terms` (nats, shape ``(B,)``); ``options`` are
    its own (``cond``, ``steps``, ``t_start``, ``generator``)."""
    return elbo_terms(model, sde, x, **options).elbo
