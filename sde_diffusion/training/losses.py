"""Denoising score matching and its weightings.

Draw ``t``, form ``x_t = alpha x_0 + sigma eps`` and regress the model onto the
known conditional score ``-eps / sigma`` (Vincent 2011; Song et al. 2021, eq. 7):

    loss(x_0) = lambda(t) || s_theta(x_t, t) + eps / sigma ||^2

summed over the event dimensions, one value per sample.  Weightings:

- ``sigma2``: ``lambda = sigma^2`` with ``t ~ U[t_min, T]``; equals
  ``|| eps_theta - eps ||^2``, DDPM's "simple" loss.
- ``likelihood``: ``lambda = g^2`` (the ELBO weighting of Song et al. 2021b),
  with ``t`` importance-sampled from ``p(t) ~ g^2 / sigma^2`` so that the loss is
  ``Z || eps_theta - eps ||^2`` with ``Z = int g^2 / sigma^2 dt``: unbiased, low variance.
- ``edm``: ``nu = sigma / alpha ~ LogNormal(P_mean, P_std)`` and
  ``lambda = (nu^2 + sigma_data^2) / (nu sigma_data)^2`` on the denoiser error
  ``|| D_theta - x_0 ||^2`` (Karras et al. 2022, table 1).
- ``flow``: conditional flow matching, ``|| v_theta(x_t, t) - (alpha' x_0 + sigma' eps) ||^2``
  with ``t ~ U[t_min, T]`` (Lipman et al. 2023; Liu et al. 2023).  The target is the
  velocity of the path ``x_t = alpha x_0 + sigma eps``; its conditional mean is the
  PF-ODE velocity, so for rectified flow (``alpha = 1 - t``, ``sigma = t``) this is
  ``|| v_theta - (eps - x_0) ||^2``, which is ``|| eps_theta - eps ||^2 / (1 - t)^2``.
- ``min-snr``: Min-SNR-gamma (Hang et al. 2023), ``t ~ U[t_min, T]`` and
  ``lambda = min(SNR, gamma)`` on the denoiser error ``|| D_theta - x_0 ||^2`` with
  ``SNR = alpha^2 / sigma^2``.  The paper's three forms are this one loss:
  ``min(SNR, gamma) / SNR`` on the eps error, ``min(SNR, gamma)`` on the x0 error and
  ``min(SNR, gamma) / (SNR + 1)`` on the v error (``eps = SNR^(1/2) (x_0 - D)`` rescaled,
  ``v`` likewise), whatever the network predicts.
"""

from __future__ import annotations

import math

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..errors import ArgumentError
from ..parametrization import ScoreModel, convert
from ..sdes import SDE, append_dims

__all__ = ["WEIGHTINGS", "DenoisingScoreMatching", "immiscible_noise"]

WEIGHTINGS = ("sigma2", "likelihood", "edm", "flow", "min-snr")


class DenoisingScoreMatching:
    """Per-sample DSM losses for a ``ScoreModel`` under one weighting."""

    def __init__(
        self,
        sde: SDE,
        weighting: str = "sigma2",
        *,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        table_size: int = 4096,
        min_snr_gamma: float = 5.0,
    ):
        if weighting not in WEIGHTINGS:
            raise ArgumentError(
                f"unknown loss weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}"
            )
        self.sde, self.weighting = sde, weighting
        if not 0 < min_snr_gamma < math.inf:
            raise ArgumentError(f"min_snr_gamma must be a positive number, got {min_snr_gamma}")
        self.p_mean, self.p_std, self.min_snr_gamma = p_mean, p_std, min_snr_gamma
        if weighting == "likelihood":
            self._times, self._cdf, self.normaliser = self._importance_table(table_size)

    def _importance_table(self, n: int) -> tuple[Tensor, Tensor, float]:
        """Inverse-CDF table of ``p(t) ~ g^2 / sigma^2`` on ``[t_min, T]`` (log-spaced in t)."""
        t = torch.logspace(
            math.log10(self.sde.t_min), math.log10(self.sde.T), n, dtype=torch.float64
        )
        density = self.sde.diffusion(t) ** 2 / self.sde.sigma(t) ** 2
        cdf = torch.cat(
            [
                torch.zeros(1, dtype=torch.float64),
                torch.cumsum(0.5 * (density[1:] + density[:-1]) * t.diff(), 0),
            ]
        )
        return t, cdf / cdf[-1], float(cdf[-1])

    def sample_times(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Training times of this weighting, float64, shape ``(n,)``."""
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        t_min, t_max = self.sde.t_min, self.sde.T
        if self.weighting in ("sigma2", "flow", "min-snr"):
            return t_min + (t_max - t_min) * u
        if self.weighting == "likelihood":
            cdf, times = self._cdf.to(u.device), self._times.to(u.device)
            i = torch.searchsorted(cdf, u).clamp(1, len(cdf) - 1)
            frac = (u - cdf[i - 1]) / (cdf[i] - cdf[i - 1])
            return times[i - 1] + frac * (times[i] - times[i - 1])
        z = torch.randn(n, generator=generator, device=u.device, dtype=torch.float64)
        nu = torch.exp(self.p_mean + self.p_std * z)
        return self.sde.t_from_log_snr(-torch.log(nu)).clamp(t_min, t_max)

    def __call__(self, model: ScoreModel, x0: Tensor, cond=None, generator=None) -> Tensor:
        """Per-sample losses, shape ``(B,)``; ``cond`` (labels) reaches the model."""
        t = self.sample_times(x0.shape[0], generator=generator, device=x0.device)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return self.loss_at(model, x0, t, eps, cond)

    def loss_at(self, model: ScoreModel, x0: Tensor, t: Tensor, eps: Tensor, cond=None) -> Tensor:
        """The loss for given times and noise (what ``__call__`` draws)."""
        alpha = append_dims(self.sde.alpha(t).to(x0), x0.ndim)
        sigma = append_dims(self.sde.sigma(t).to(x0), x0.ndim)
        x_t = alpha * x0 + sigma * eps
        t = t.to(x0.dtype)
        kind, value = model.prediction, model(x_t, t, cond)
        if self.weighting == "edm":
            nu = (sigma / alpha).flatten(1)[:, 0]
            weight = (nu**2 + model.sigma_data**2) / (nu * model.sigma_data) ** 2
            x0_hat = convert(value, x_t, t, self.sde, kind, "x0")
            return weight * (x0_hat - x0).flatten(1).pow(2).sum(1)
        if self.weighting == "min-snr":
            snr = (alpha / sigma).flatten(1)[:, 0] ** 2
            x0_hat = convert(value, x_t, t, self.sde, kind, "x0")
            return snr.clamp(max=self.min_snr_gamma) * (x0_hat - x0).flatten(1).pow(2).sum(1)
        if self.weighting == "flow":
            v_hat = convert(value, x_t, t, self.sde, kind, "velocity")
            target = convert(eps, x_t, t, self.sde, "eps", "velocity")  # alpha' x0 + sigma' eps
            return (v_hat - target).flatten(1).pow(2).sum(1)
        eps_hat = convert(value, x_t, t, self.sde, kind, "eps")
        per_sample = (eps_hat - eps).flatten(1).pow(2).sum(1)
        return per_sample * self.normaliser if self.weighting == "likelihood" else per_sample


def immiscible_noise(x0: Tensor, eps: Tensor) -> Tensor:
    """``eps`` reordered so that the batch's total squared distance ``sum_i ||x0_i -
    eps_pi(i)||^2`` is least: immiscible diffusion (Li et al. 2024), each image diffused
    toward nearby noise.  The assignment is scipy's ``linear_sum_assignment`` on the
    batch's cost matrix (one host round trip per training step).
    """
    cost = torch.cdist(x0.flatten(1).double(), eps.flatten(1).double()).pow(2)
    _, columns = linear_sum_assignment(cost.cpu().numpy())
    return eps[torch.as_tensor(columns, device=eps.device)]
