"""Exact log-likelihood and bits/dim through the probability-flow ODE.

Along the PF-ODE ``dx/dt = v(x, t)`` the log-density obeys
``d log p_t(x_t) / dt = -div v(x_t, t)``, so integrating from ``t_0`` up to ``T``

    log p_{t_0}(x) = log p_T(x_T) + int_{t_0}^{T} div v(x_t, t) dt

(Chen et al. 2018; Song et al. 2021, app. D).  ``log p_T`` is taken as the prior's.
The divergence is exact (one autograd pass per dimension) or the Hutchinson–Skilling
estimate ``E[eps^T (dv/dx) eps]`` with probes drawn once per trajectory, so the
estimate is unbiased.  ``(x, int div)`` travel as one ``(B, D + 1)`` tensor, so the
registry's generic integrators (``euler``, ``heun``, ``lms``, ``rk45``, ``dop853``)
integrate it unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import torch
from torch import Tensor

from .noise import GeneratorNoise
from .reverse import ProbabilityFlowODE, ScoreFn
from .sampling import CountingScore
from .sdes import SDE
from .solvers.registry import get_solver

__all__ = [
    "GENERIC_ODE_SOLVERS",
    "ELBOResult",
    "LikelihoodResult",
    "bits_per_dim",
    "elbo",
    "log_likelihood",
    "pixel_range",
]

GENERIC_ODE_SOLVERS = ("euler", "heun", "lms", "rk45", "dop853")  # they use only the velocity
EXACT_DIVERGENCE_MAX_DIM = 32

Divergence = Literal["auto", "exact", "hutchinson"]


@dataclass
class LikelihoodResult:
    """Per-sample terms of the estimate (nats) and its cost."""

    log_likelihood: Tensor  # log p_{t_0}(x), shape (B,)
    prior_logp: Tensor  # log prior(x_T)
    divergence_integral: Tensor  # int div v dt
    x_T: Tensor
    nfe: int
    divergence: str


class _AugmentedFlow:
    """The PF-ODE of ``x`` with ``div v`` appended: a velocity on ``(B, D + 1)`` tensors."""

    def __init__(self, ode: ProbabilityFlowODE, shape: torch.Size, probes: Tensor | None):
        self.ode, self.sde, self.shape, self.probes = ode, ode.sde, shape, probes

    def velocity(self, z: Tensor, t: float) -> Tensor:
        with torch.enable_grad():
            x = z[:, :-1].detach().reshape(self.shape).requires_grad_(True)
            v = self.ode.velocity(x, t)
            div = self._exact(x, v) if self.probes is None else self._hutchinson(x, v)
        return torch.cat([v.detach().flatten(1), div.detach()[:, None]], dim=1)

    @staticmethod
    def _exact(x: Tensor, v: Tensor) -> Tensor:
        flat = v.flatten(1)
        diagonal = [
            torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)[0].flatten(1)[:, i]
            for i in range(flat.shape[1])
        ]
        return torch.stack(diagonal, dim=1).sum(1)

    def _hutchinson(self, x: Tensor, v: Tensor) -> Tensor:
        estimates = []
        for k, eps in enumerate(self.probes):
            last = k == len(self.probes) - 1
            (vjp,) = torch.autograd.grad((v * eps).sum(), x, retain_graph=not last)
            estimates.append((vjp * eps).flatten(1).sum(1))
        return torch.stack(estimates).mean(0)


def log_likelihood(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    *,
    solver: str = "rk45",
    steps: int = 200,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    divergence: Divergence = "auto",
    probes: int = 1,
    probe_dist: Literal["rademacher", "gaussian"] = "rademacher",
    t_start: float | None = None,
    generator: torch.Generator | None = None,
    return_result: bool = False,
) -> Tensor | LikelihoodResult:
    """Per-sample ``log p_{t_start}(x)`` in nats, shape ``(B,)``.

    ``t_start`` defaults to ``sde.t_min``.  ``solver`` is ``rk45``/``dop853``
    (adaptive, ``rtol``/``atol``) or a fixed-grid ``euler``/``heun``/``lms`` with
    ``steps`` steps uniform in log-SNR from ``t_start`` to ``T``.  ``divergence="auto"`` is exact
    for at most 32 dimensions per sample and Hutchinson (``probes`` probes,
    Rademacher or Gaussian, fixed per trajectory) above.
    """
    name = solver.lower()
    if name not in GENERIC_ODE_SOLVERS:
        raise ValueError(
            f"likelihoods integrate with one of {', '.join(GENERIC_ODE_SOLVERS)}; got {solver!r}"
        )
    if divergence not in ("auto", "exact", "hutchinson"):
        raise ValueError(f"divergence must be 'auto', 'exact' or 'hutchinson', got {divergence!r}")
    if probes < 1 or probe_dist not in ("rademacher", "gaussian"):
        raise ValueError(
            f"need probes >= 1 and probe_dist 'rademacher' or 'gaussian', got "
            f"probes={probes}, probe_dist={probe_dist!r}"
        )
    if x.ndim < 2 or not x.is_floating_point():
        raise ValueError(
            f"x must be a floating-point batch of shape (B, *event), got {tuple(x.shape)} {x.dtype}"
        )
    t0 = float(sde.t_min if t_start is None else t_start)
    if not 0 < t0 < sde.T:
        raise ValueError(f"t_start must lie in (0, T) = (0, {sde.T}), got {t0}")
    dim = x[0].numel()
    if divergence == "auto":
        divergence = "exact" if dim <= EXACT_DIVERGENCE_MAX_DIM else "hutchinson"
    eps = None
    if divergence == "hutchinson":
        shape = (probes, *x.shape)
        eps = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
        if probe_dist == "rademacher":
            eps = eps.sign()

    counter = CountingScore(score_fn)
    flow = _AugmentedFlow(ProbabilityFlowODE(sde, counter), x.shape, eps)
    z = torch.cat([x.detach().flatten(1), x.new_zeros(x.shape[0], 1)], dim=1)
    if name in ("rk45", "dop853"):
        integrator = get_solver(name, rtol=rtol, atol=atol)
        z, _ = integrator.solve(flow, [t0, float(sde.T)], z, None, False)
    else:
        integrator = get_solver(name)
        grid = _log_snr_grid(sde, t0, steps)
        state = integrator.init(flow, grid, z, GeneratorNoise(generator))
        for a, b in pairwise(grid):
            z, state = integrator.step(flow, a, b, z, state, None)
    x_T = z[:, :-1].reshape(x.shape)
    prior = sde.prior_logp(x_T)
    integral = z[:, -1]
    logp = prior + integral
    if not return_result:
        return logp
    return LikelihoodResult(logp, prior, integral, x_T, counter.nfe, divergence)


def _log_snr_grid(sde: SDE, t0: float, steps: int) -> list[float]:
    """``steps + 1`` times from ``t0`` up to ``T``, uniform in log-SNR."""
    lam = torch.linspace(
        float(sde.log_snr(t0)), float(sde.log_snr(sde.T)), steps + 1, dtype=torch.float64
    )
    grid = sde.t_from_log_snr(lam).tolist()
    grid[0], grid[-1] = t0, float(sde.T)
    return grid


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


def elbo(
    score_fn: ScoreFn,
    sde: SDE,
    x: Tensor,
    *,
    steps: int = 1000,
    t_start: float | None = None,
    generator: torch.Generator | None = None,
    return_result: bool = False,
) -> Tensor | ELBOResult:
    """Per-sample variational lower bound on ``log p_{t_start}(x)`` in nats (the VLB).

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
        raise ValueError(
            f"x must be a floating-point batch of shape (B, *event), got {tuple(x.shape)} {x.dtype}"
        )
    if steps < 2:
        raise ValueError(f"the variational bound needs steps >= 2, got {steps}")
    t0 = float(sde.t_min if t_start is None else t_start)
    if not 0 < t0 < sde.T:
        raise ValueError(f"t_start must lie in (0, T) = (0, {sde.T}), got {t0}")
    from .solvers.ancestral import posterior_coefficients

    counter = CountingScore(score_fn)
    given = _GivenStart(sde, t0)
    grid = given.grid(t0, steps)
    dim, flat = x[0].numel(), x.flatten(1)

    def draw_and_denoise(t: float) -> Tensor:
        """``x̂_0(x_t)`` for ``x_t ~ q(x_t | x)``, flattened."""
        alpha, sigma = float(given.alpha(t)), float(given.sigma(t))
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_t = alpha * x + sigma * eps
        score = counter(x_t, torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype))
        return ((x_t + sigma**2 * score) / alpha).flatten(1)

    prior_var = sde.prior_std**2
    a_T, s_T = float(given.alpha(sde.T)), float(given.sigma(sde.T))
    ratio = s_T**2 / prior_var
    prior_kl = 0.5 * (dim * (ratio - 1 - math.log(ratio)) + a_T**2 * flat.pow(2).sum(1) / prior_var)
    diffusion_kl = torch.zeros_like(prior_kl)
    for s, t in pairwise(grid[1:]):
        _, c_0, var, _ = posterior_coefficients(given, t, s)
        sq = (flat - draw_and_denoise(t)).pow(2).sum(1)
        diffusion_kl = diffusion_kl + float(c_0**2 / (2 * var)) * sq
    t1 = grid[1]
    rec_var = float(given.sigma(t1) ** 2 / given.alpha(t1) ** 2)
    sq = (flat - draw_and_denoise(t1)).pow(2).sum(1)
    reconstruction = 0.5 * dim * math.log(2 * math.pi * rec_var) + sq / (2 * rec_var)
    bound = -(prior_kl + diffusion_kl + reconstruction)
    if not return_result:
        return bound
    return ELBOResult(bound, prior_kl, diffusion_kl, reconstruction, counter.nfe)


def pixel_range(scale: float, shift: float, levels: int) -> tuple[float, float]:
    """``(low, high)`` for :func:`bits_per_dim` when pixels ``k`` map to ``(k - shift) / scale``.

    Each level's dequantisation bin ``[k - 1/2, k + 1/2)`` is then centred on the
    value the model was trained on (digits: ``k / 8 - 1``, so ``±1.0625``).
    """
    return (-0.5 - shift) / scale, (levels - 0.5 - shift) / scale


def bits_per_dim(
    score_fn: ScoreFn,
    sde: SDE,
    x_int: Tensor,
    *,
    levels: int = 256,
    low: float = -1.0,
    high: float = 1.0,
    generator: torch.Generator | None = None,
    estimator: Literal["ode", "elbo"] = "ode",
    **options,
) -> Tensor:
    """Per-sample bits/dim of integer data in ``{0, ..., levels - 1}`` (images).

    Uniform dequantisation ``u = x + U[0, 1)``, then the model's scaling
    ``y = low + (high - low) u / levels``.  The change of variables gives
    ``log p(u) = log p(y) + D log((high - low) / levels)``, and
    ``bits/dim = -log p(u) / (D ln 2)``, an upper bound on the discrete NLL.
    ``log p(y)`` comes from :func:`log_likelihood` (``estimator="ode"``) or from
    the variational bound :func:`elbo` (``"elbo"``, a looser upper bound on bits/dim);
    ``options`` go to that function.
    """
    if estimator not in ("ode", "elbo"):
        raise ValueError(f"estimator must be 'ode' or 'elbo', got {estimator!r}")
    if x_int.is_floating_point() and not torch.equal(x_int, x_int.round()):
        raise ValueError("bits_per_dim expects integer pixel values (dequantisation is done here)")
    if x_int.min() < 0 or x_int.max() >= levels:
        raise ValueError(
            f"pixel values must lie in [0, {levels - 1}], got "
            f"[{x_int.min().item()}, {x_int.max().item()}]"
        )
    dtype = x_int.dtype if x_int.is_floating_point() else torch.get_default_dtype()
    noise = torch.rand(x_int.shape, generator=generator, device=x_int.device, dtype=dtype)
    u = x_int.to(noise.dtype) + noise
    y = low + (high - low) * u / levels
    dim = x_int[0].numel()
    estimate = log_likelihood if estimator == "ode" else elbo
    logp_y = estimate(score_fn, sde, y, generator=generator, **options)
    logp_u = logp_y + dim * math.log((high - low) / levels)
    return -logp_u / (dim * math.log(2))
