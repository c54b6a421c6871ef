"""Gaussian mixtures: the ground truth of every numerical check.

Under a linear SDE with ``x_t = alpha(t) x_0 + sigma(t) eps`` the marginal of
a mixture ``sum_k w_k N(mu_k, S_k)`` is again a mixture,

    p_t = sum_k w_k N(alpha mu_k, alpha^2 S_k + sigma^2 I),

so its log-density, score and denoiser are exact.  Conditioning on a set of
components ``S`` (a class) keeps only those terms, reweighted: the conditional
law ``p_t(x | S)`` is exact too (``cond`` = component indices or a mask).
With ``S_k = U_k diag(l_k) U_k^T`` (eigendecomposition, once),
``C_k(t) = U_k diag(alpha^2 l_k + sigma^2) U_k^T``: a different time per sample
costs ``O(B K d^2)``, no per-time factorisation.  Responsibilities use log-sum-exp.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import ArgumentError
from .parametrization import convert
from .sdes import SDE, Time, as_time

__all__ = ["GaussianMixture", "MixtureScore", "eight_gaussians", "high_dim_mixture"]


class GaussianMixture:
    """``sum_k w_k N(mu_k, S_k)`` in ``d`` dimensions, parameters kept in float64.

    Args:
        means: ``(K, d)``.
        covs: ``(K, d, d)`` symmetric positive definite, or ``(K,)`` / scalar
            variances for isotropic components.
        weights: ``(K,)`` non-negative, normalised here; uniform if omitted.
    """

    def __init__(
        self,
        means: Tensor | Sequence,
        covs: Tensor | Sequence | float = 1.0,
        weights: Tensor | Sequence | None = None,
    ):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.ndim != 2:
            raise ArgumentError(f"means must have shape (K, d), got {tuple(means.shape)}")
        k, d = means.shape
        if not bool((means.abs() <= 1e100).all()):  # squared distances must stay finite
            raise ArgumentError(f"means must be finite numbers of magnitude <= 1e100, got {means}")
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if not bool(torch.isfinite(covs).all()):
            raise ArgumentError("covs must be finite")
        if covs.ndim <= 1:
            covs = covs.expand(k)[:, None, None] * torch.eye(d, dtype=torch.float64)
        if covs.shape != (k, d, d):
            raise ArgumentError(
                f"covs must have shape (K, d, d) = ({k}, {d}, {d}), got {tuple(covs.shape)}"
            )
        if not torch.allclose(covs, covs.mT, atol=1e-10):
            raise ArgumentError("covs must be symmetric")
        weights = (
            torch.full((k,), 1.0 / k, dtype=torch.float64)
            if weights is None
            else torch.as_tensor(weights, dtype=torch.float64)
        )
        valid = weights.shape == (k,) and bool(torch.isfinite(weights).all())
        if not valid or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ArgumentError(
                f"weights must be {k} finite non-negative numbers with a positive sum, "
                f"got {weights.tolist()}"
            )
        eigvals, eigvecs = torch.linalg.eigh(covs)
        if bool((eigvals <= 0).any()):
            raise ArgumentError(
                f"covs must be positive definite; smallest eigenvalue {eigvals.min().item():.3g}"
            )
        self.means, self.covs = means, covs
        self.weights = weights / weights.sum()
        self.eigvals, self.eigvecs = eigvals, eigvecs
        self._chol = torch.linalg.cholesky(covs)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.num_components}, d={self.dim})"

    # -- data law -------------------------------------------------------------

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        return_components: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``n`` independent draws, shape ``(n, d)``.  Drawn in float64 on the
        generator's device, then cast.  ``return_components`` adds each draw's
        component index (its class)."""
        gen_device = generator.device if generator is not None else torch.device("cpu")
        comp = torch.multinomial(
            self.weights.to(gen_device), n, replacement=True, generator=generator
        )
        z = torch.randn(n, self.dim, generator=generator, device=gen_device, dtype=torch.float64)
        chol, means = self._chol.to(gen_device), self.means.to(gen_device)
        x = means[comp] + torch.einsum("nij,nj->ni", chol[comp], z)
        x = x.to(device=device or gen_device, dtype=dtype)
        return (x, comp.to(x.device)) if return_components else x

    def mean(self) -> Tensor:
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Law of total covariance: ``sum w (S + mu mu^T) - m m^T``."""
        m = self.mean()
        second = torch.einsum(
            "k,kij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None, :]
        )
        return second - torch.outer(m, m)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density of the data law, shape ``(B,)``."""
        return self._log_prob_and_score(x, torch.ones(()), torch.zeros(()), need_score=False)[0]

    def components(self, indices: Sequence[int] | Tensor) -> GaussianMixture:
        """The law given the component set ``indices``: those terms, reweighted."""
        idx = torch.as_tensor(indices, dtype=torch.long).flatten()
        if idx.numel() == 0 or bool((idx < 0).any() | (idx >= self.num_components).any()):
            raise ArgumentError(
                f"component indices must lie in [0, {self.num_components - 1}], got {idx.tolist()}"
            )
        return GaussianMixture(self.means[idx], self.covs[idx], self.weights[idx])

    # -- marginals under a linear SDE -----------------------------------------

    def marginal(self, sde: SDE, t: float) -> GaussianMixture:
        """The mixture ``p_t`` for one time ``t`` as its own ``GaussianMixture``."""
        a, s = float(sde.alpha(t)), float(sde.sigma(t))
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(a * self.means, a**2 * self.covs + s**2 * eye, self.weights)

    def marginal_log_prob(self, sde: SDE, x: Tensor, t: Time, cond: Tensor | None = None) -> Tensor:
        """``log p_t(x)`` (``log p_t(x | cond)``); ``t`` a number or a tensor of shape ``(B,)``."""
        return self._log_prob_and_score(x, sde.alpha(t), sde.sigma(t), need_score=False, cond=cond)[
            0
        ]

    def score(self, sde: SDE, x: Tensor, t: Time, cond: Tensor | None = None) -> Tensor:
        """``grad_x log p_t(x)`` (given ``cond``), exact."""
        return self._log_prob_and_score(x, sde.alpha(t), sde.sigma(t), need_score=True, cond=cond)[
            1
        ]

    def denoise(self, sde: SDE, x: Tensor, t: Time, cond: Tensor | None = None) -> Tensor:
        """``E[x_0 | x_t = x]`` (Tweedie), exact."""
        return convert(self.score(sde, x, t, cond), x, t, sde, "score", "x0")

    def score_fn(self, sde: SDE) -> MixtureScore:
        """The exact score of ``p_t`` under ``sde`` as a model, usable by every solver.

        Called as ``model(x, t)`` or ``model(x, t, cond)`` with ``cond`` the
        component index of each sample (shape ``(B,)``; the index ``K`` is the null
        label, no condition, as for our networks) or a boolean mask of allowed
        components (shape ``(B, K)``): the exact conditional score.
        """
        return MixtureScore(self, sde)

    # -- the one computation ----------------------------------------------------

    @staticmethod
    def _per_sample(value: Tensor, x: Tensor) -> Tensor:
        return as_time(value).to(device=x.device, dtype=x.dtype).expand(x.shape[0])

    def _log_weights(self, x: Tensor, cond: Tensor | None) -> Tensor:
        """``log w_k``, or per sample ``(B, K)`` with components outside ``cond`` at ``-inf``."""
        log_w = torch.log(self.weights.to(x))
        if cond is None:
            return log_w
        k = self.num_components
        mask = cond if cond.dtype == torch.bool else None
        if mask is None:
            if cond.is_floating_point() or cond.shape != (x.shape[0],):
                raise ArgumentError(
                    f"cond must be component indices of shape ({x.shape[0]},) or a boolean "
                    f"mask of shape ({x.shape[0]}, {k}), got {cond.dtype} {tuple(cond.shape)}"
                )
            if cond.device.type == "cpu" and bool(((cond < 0) | (cond > k)).any()):
                raise ArgumentError(
                    f"component indices must lie in [0, {k - 1}] ({k}: no condition)"
                )
            labels = cond[:, None].to(x.device)
            mask = (labels == torch.arange(k, device=x.device)) | (labels == k)
        elif mask.shape != (x.shape[0], k):
            raise ArgumentError(f"a component mask must have shape ({x.shape[0]}, {k})")
        return log_w.masked_fill(~mask.to(x.device), -math.inf)

    def _log_prob_and_score(
        self, x: Tensor, alpha: Tensor, sigma: Tensor, need_score: bool, cond: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ArgumentError(f"expected x of shape (B, {self.dim}), got {tuple(x.shape)}")
        alpha, sigma = self._per_sample(alpha, x), self._per_sample(sigma, x)
        means = self.means.to(x)
        eigvals, eigvecs = self.eigvals.to(x), self.eigvecs.to(x)
        # variances of each component along its eigenbasis: (B, K, d)
        var = alpha[:, None, None] ** 2 * eigvals + sigma[:, None, None] ** 2
        diff = x[:, None, :] - alpha[:, None, None] * means  # (B, K, d)
        # U_k^T (x - alpha mu_k), as K matrix products of (B, d) by (d, d), not B*K vector ones
        proj = torch.einsum("bkd,kde->bke", diff, eigvecs)
        log_comp = -0.5 * (
            (proj**2 / var).sum(-1) + torch.log(var).sum(-1) + self.dim * math.log(2 * math.pi)
        )
        log_weights = self._log_weights(x, cond)
        log_joint = log_comp + log_weights
        log_prob = torch.logsumexp(log_joint, dim=-1)
        if cond is not None:  # normalise: log p_t(x | cond)
            log_prob = log_prob - torch.logsumexp(log_weights, dim=-1)
        if not need_score:
            return log_prob, None
        resp = torch.softmax(log_joint, dim=-1)  # (B, K)
        per_component = torch.einsum("bke,kde->bkd", proj / var, eigvecs)  # C_k^-1 (x - a mu_k)
        score = -(resp.unsqueeze(-1) * per_component).sum(1)
        return log_prob, score


class MixtureScore:
    """The exact score of a mixture's marginals under ``sde``: a model predicting ``score``."""

    prediction = "score"

    def __init__(self, mixture: GaussianMixture, sde: SDE):
        self.mixture, self.sde = mixture, sde

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.mixture.score(self.sde, x, t, cond)

    def __repr__(self) -> str:
        return f"MixtureScore({self.mixture!r}, {self.sde!r})"


def eight_gaussians(radius: float = 4.0, std: float = 0.5) -> GaussianMixture:
    """Eight isotropic Gaussians on a ring in 2-D (the classic toy problem)."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(means, torch.full((8,), std**2, dtype=torch.float64))


def high_dim_mixture(dim: int = 64, num_components: int = 10, seed: int = 0) -> GaussianMixture:
    """A seeded ``dim``-D mixture with full covariances and unequal weights.

    Means ``~ N(0, 2 I)``; covariances ``A A^T / (2 d) + 0.05 I`` with Gaussian
    ``A``; weights uniform on ``[0.5, 1.5]`` before normalising.
    """
    g = torch.Generator().manual_seed(seed)
    means = math.sqrt(2.0) * torch.randn(num_components, dim, generator=g, dtype=torch.float64)
    a = torch.randn(num_components, dim, dim, generator=g, dtype=torch.float64)
    covs = 0.5 * a @ a.mT / dim + 0.05 * torch.eye(dim, dtype=torch.float64)
    weights = torch.rand(num_components, generator=g, dtype=torch.float64) + 0.5
    return GaussianMixture(means, covs, weights)
