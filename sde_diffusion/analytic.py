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

Observed through a linear measurement ``y = A x + σ_y n``, a mixture's posterior is a
mixture again, one per measurement (:func:`posterior`, ``GaussianMixture.posterior``):
its score is exact under every linear SDE, the ground truth of posterior samplers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import ArgumentError
from .measurements import Matrix, Measurement, check_sigma_y
from .parametrization import convert
from .sdes import SDE, Time, as_time

__all__ = [
    "GaussianMixture",
    "MixtureScore",
    "PosteriorMixture",
    "PosteriorScore",
    "eight_gaussians",
    "high_dim_mixture",
    "mixture_log_prob_and_score",
    "posterior",
]


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

    def posterior(
        self, a: Measurement | Tensor, y: Tensor, sigma_y: float = 0.0
    ) -> PosteriorMixture:
        """The exact posterior given measurements ``y = A x + σ_y n``, one per row (see
        :func:`posterior`)."""
        return posterior(self, a, y, sigma_y)

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
        log_weights = self._log_weights(x, cond)
        log_prob, score = mixture_log_prob_and_score(
            x, alpha, sigma, self.means, self.eigvals, self.eigvecs, log_weights, need_score
        )
        if cond is not None:  # normalise: log p_t(x | cond)
            log_prob = log_prob - torch.logsumexp(log_weights, dim=-1)
        return log_prob, score


def mixture_log_prob_and_score(
    x: Tensor,
    alpha: Time,
    sigma: Time,
    means: Tensor,
    eigvals: Tensor,
    eigvecs: Tensor,
    log_weights: Tensor,
    need_score: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """``log p_t(x)`` and its score for ``p_t = Σ_k w_k N(α μ_k, α² C_k + σ² I)``.

    ``C_k = V_k diag(λ_k) V_kᵀ`` (``eigvals`` ``(K, d)``, ``eigvecs`` ``(K, d, d)``);
    ``means`` are ``(K, d)`` or, per sample, ``(B, K, d)``; ``log_weights`` ``(K,)`` or
    ``(B, K)`` (unnormalised: the log-density is of the weights' total mass).
    """
    alpha = as_time(alpha).to(device=x.device, dtype=x.dtype).expand(x.shape[0])
    sigma = as_time(sigma).to(device=x.device, dtype=x.dtype).expand(x.shape[0])
    means, eigvals, eigvecs = means.to(x), eigvals.to(x), eigvecs.to(x)
    # variances of each component along its eigenbasis: (B, K, d)
    var = alpha[:, None, None] ** 2 * eigvals + sigma[:, None, None] ** 2
    diff = x[:, None, :] - alpha[:, None, None] * means  # (B, K, d)
    # V_k^T (x - alpha mu_k), as K matrix products of (B, d) by (d, d), not B*K vector ones
    proj = torch.einsum("bkd,kde->bke", diff, eigvecs)
    dim = x.shape[1]
    log_comp = -0.5 * (
        (proj**2 / var).sum(-1) + torch.log(var).sum(-1) + dim * math.log(2 * math.pi)
    )
    log_joint = log_comp + log_weights.to(x)
    log_prob = torch.logsumexp(log_joint, dim=-1)
    if not need_score:
        return log_prob, None
    resp = torch.softmax(log_joint, dim=-1)  # (B, K)
    per_component = torch.einsum("bke,kde->bkd", proj / var, eigvecs)  # C_k^-1 (x - a mu_k)
    return log_prob, -(resp.unsqueeze(-1) * per_component).sum(1)


class MixtureScore:
    """The exact score of a mixture's marginals under ``sde``: a model predicting ``score``
    of samples ``(B, d)``, or of any shape ``(B, *event)`` holding ``d`` numbers (an image
    view of the vector, for measurements on images)."""

    prediction = "score"

    def __init__(self, mixture: GaussianMixture, sde: SDE):
        self.mixture, self.sde = mixture, sde

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if x.ndim <= 2:  # (B, d) itself, or a shape the mixture refuses in a sentence
            return self.mixture.score(self.sde, x, t, cond)
        return self.mixture.score(self.sde, x.flatten(1), t, cond).view_as(x)

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


# -- the exact posterior under a linear measurement ------------------------------------


class PosteriorMixture:
    """Row ``b`` is the posterior given ``y[b]``: weights ``(B, K)``, means ``(B, K, d)``,
    covariances ``(K, d, d)`` shared by all rows (float64)."""

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor):
        self.weights, self.means, self.covs = weights, means, covs
        eigvals, self.eigvecs = torch.linalg.eigh(covs)
        self.eigvals = eigvals.clamp_min(0.0)  # observed directions: 0 up to round-off

    @property
    def batch(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[2]

    def __repr__(self) -> str:
        return f"PosteriorMixture(B={self.batch}, K={self.covs.shape[0]}, d={self.dim})"

    def mean(self) -> Tensor:
        """``E[x | y_b]``, shape ``(B, d)``."""
        return torch.einsum("bk,bkd->bd", self.weights, self.means)

    def covariance(self) -> Tensor:
        """``Cov[x | y_b]``, shape ``(B, d, d)`` (law of total covariance)."""
        m = self.mean()
        outer = self.means[..., :, None] * self.means[..., None, :]
        second = torch.einsum("bk,bkij->bij", self.weights, self.covs + outer)
        return second - m[:, :, None] * m[:, None, :]

    def sample(
        self,
        per_row: int = 1,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """``per_row`` exact draws for each row, shape ``(B, per_row, d)``."""
        comp = torch.multinomial(self.weights, per_row, replacement=True, generator=generator)
        z = torch.randn(self.batch, per_row, self.dim, generator=generator, dtype=torch.float64)
        root = self.eigvecs * self.eigvals.sqrt()[:, None, :]  # P_k = root rootᵀ
        every = torch.einsum("kij,bnj->bnki", root, z)  # (B, n, K, d): K is small
        pick = comp[..., None, None].expand(-1, -1, 1, self.dim)
        rows = torch.arange(self.batch)[:, None]
        x = self.means[rows, comp] + every.gather(2, pick).squeeze(2)
        return x.to(dtype)

    def marginal_log_prob(self, sde: SDE, x: Tensor, t: Time) -> Tensor:
        """``log p_t(x_b | y_b)`` for each row ``b``."""
        return self._at(sde, x, t, need_score=False)[0]

    def score(self, sde: SDE, x: Tensor, t: Time) -> Tensor:
        """``∇ log p_t(x_b | y_b)`` for each row, exact."""
        return self._at(sde, x, t, need_score=True)[1]

    def score_fn(self, sde: SDE) -> PosteriorScore:
        """The exact posterior score under ``sde`` as a model (row ``b`` given ``y_b``)."""
        return PosteriorScore(self, sde)

    def _at(self, sde: SDE, x: Tensor, t: Time, need_score: bool):
        if x.ndim != 2 or tuple(x.shape) != (self.batch, self.dim):
            raise ArgumentError(
                f"the posterior of {self.batch} measurements scores x of shape "
                f"({self.batch}, {self.dim}), one row per measurement; got {tuple(x.shape)}"
            )
        return mixture_log_prob_and_score(
            x, sde.alpha(t), sde.sigma(t), self.means, self.eigvals, self.eigvecs,
            torch.log(self.weights), need_score,
        )  # fmt: skip


class PosteriorScore:
    """The exact score of a :class:`PosteriorMixture` under ``sde``: a ``score`` model (of
    ``(B, d)`` or ``(B, *event)`` samples, as :class:`MixtureScore`)."""

    prediction = "score"

    def __init__(self, posterior: PosteriorMixture, sde: SDE):
        self.posterior, self.sde = posterior, sde

    def __call__(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if cond is not None:
            raise ArgumentError("the posterior score is already conditioned on y; pass no cond")
        if x.ndim <= 2:
            return self.posterior.score(self.sde, x, t)
        return self.posterior.score(self.sde, x.flatten(1), t).view_as(x)

    def __repr__(self) -> str:
        return f"PosteriorScore({self.posterior!r}, {self.sde!r})"


def posterior(
    prior: GaussianMixture, a: Measurement | Tensor, y: Tensor, sigma_y: float = 0.0
) -> PosteriorMixture:
    """The posterior of ``prior`` given the rows of ``y = A x + σ_y n``.

    With the prior ``Σ_k w_k N(μ_k, C_k)``, Bayes' rule gives a mixture per ``y_b``:
    ``S_k = A C_k Aᵀ + σ_y² I``, ``G_k = C_k Aᵀ S_k⁻¹``, ``m_bk = μ_k + G_k (y_b − A μ_k)``,
    ``P_k = C_k − G_k A C_k``, ``w_bk ∝ w_k N(y_b; A μ_k, S_k)``; the covariances do not
    depend on ``y``.
    ``a`` is a :class:`~sde_diffusion.measurements.Measurement` or a dense ``(m, d)``
    matrix.  With ``σ_y = 0`` the measurement must determine ``A x`` consistently with the
    prior (``A C_k Aᵀ`` invertible)."""
    op = a if isinstance(a, Measurement) else Matrix(a)
    sigma_y = check_sigma_y(sigma_y)
    if op.dim != prior.dim:
        raise ArgumentError(
            f"the operator acts on {op.dim} numbers but the mixture has {prior.dim} dimensions"
        )
    mat = op.matrix(torch.float64)  # (m, d)
    y = torch.as_tensor(y, dtype=torch.float64).cpu()
    if y.ndim != 2 or y.shape[1] != mat.shape[0] or not bool(torch.isfinite(y).all()):
        raise ArgumentError(
            f"y must be finite measurements of shape (B, {mat.shape[0]}), got {tuple(y.shape)}"
        )
    covs, mus = prior.covs, prior.means  # (K, d, d), (K, d)
    s = mat @ covs @ mat.T + sigma_y**2 * torch.eye(mat.shape[0], dtype=torch.float64)
    chol, info = torch.linalg.cholesky_ex(s)
    if bool((info > 0).any()):
        raise ArgumentError(
            "A C_k Aᵀ + σ_y² I is singular: with sigma_y = 0 the operator's rows must be "
            "independent; give sigma_y > 0"
        )
    gain = torch.cholesky_solve(mat @ covs, chol).mT  # C_k Aᵀ S_k⁻¹, (K, d, m)
    resid = y[:, None, :] - mus @ mat.T  # (B, K, m)
    means = mus + torch.einsum("kdm,bkm->bkd", gain, resid)
    post_covs = covs - gain @ mat @ covs
    post_covs = 0.5 * (post_covs + post_covs.mT)
    white = torch.linalg.solve_triangular(chol, resid.permute(1, 2, 0), upper=False)  # (K,m,B)
    log_det = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (K,)
    log_lik = -0.5 * (white.pow(2).sum(1).T + log_det + mat.shape[0] * math.log(2 * math.pi))
    weights = torch.softmax(torch.log(prior.weights) + log_lik, dim=1)
    return PosteriorMixture(weights, means, post_covs)
