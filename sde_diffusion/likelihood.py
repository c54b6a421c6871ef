"""Exact log-likelihood and bits/dim through the probability-flow ODE.

Along the PF-ODE ``dx/dt = v(x, t)`` the log-density obeys
``d log p_t(x_t) / dt = -div v(x_t, t)``, so integrating from ``t_0`` up to ``T``

    log p_{t_0}(x) = log p_T(x_T) + int_{t_0}^{T} div v(x_t, t) dt

(Chen et al. 2018; Song et al. 2021, app. D).  ``log p_T`` is taken as the prior's.
The divergence is exact (one autograd pass per dimension) or the Hutchinson–Skilling
estimate ``E[eps^T (dv/dx) eps]`` with probes drawn once per trajectory, so the
estimate is unbiased.  ``(x, int div)`` travel as one ``(B, D + 1)`` tensor through
the solvers' own ``integrate`` loop, so every registered solver whose metadata says it
is deterministic and asks only for the PF-ODE velocity (``euler``, ``heun``, ``lms``,
``rk45``, ``dop853``, …) integrates it unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

import torch
from torch import Tensor

from .distributed import map_batches, sum_over_ranks
from .errors import ArgumentError, NonFiniteError
from .loop import integrate
from .noise import GeneratorNoise
from .parametrization import Coefficients, convert_at
from .reverse import ReverseProcess, ScoreFn
from .sdes import SDE
from .solvers.ancestral import posterior_coefficients
from .solvers.base import Solver
from .solvers.registry import get_solver, solver_class, solver_names, solver_options

__all__ = [
    "ELBOResult",
    "LikelihoodResult",
    "bits_per_dim",
    "elbo",
    "likelihood_solvers",
    "log_likelihood",
    "nll_batched",
    "pixel_range",
]

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


def integrates_flows(solver: Solver) -> bool:
    """Whether ``solver`` can integrate any ODE given its velocity (read from its metadata)."""
    return solver.kind == "ode" and not solver.stochastic and solver.uses <= {"velocity"}


def likelihood_solvers() -> list[str]:
    """Registered solvers that can integrate the augmented likelihood ODE (default options)."""
    return [n for n in solver_names() if integrates_flows(get_solver(n))]


def _solver(solver: str | Solver, rtol: float, atol: float) -> Solver:
    if isinstance(solver, str):
        accepted = solver_options(solver_class(solver))
        tolerances = {k: v for k, v in (("rtol", rtol), ("atol", atol)) if k in accepted}
        solver = get_solver(solver, **tolerances)
    if not integrates_flows(solver):
        raise ArgumentError(
            f"likelihoods integrate with a deterministic solver that uses only the PF-ODE "
            f"velocity ({', '.join(likelihood_solvers())}); got {solver.name!r}"
        )
    return solver


class _AugmentedFlow:
    """The PF-ODE of ``x`` with ``div v`` appended: a velocity on ``(B, D + 1)`` tensors."""

    def __init__(self, ode: ReverseProcess, shape: torch.Size, probes: Tensor | None):
        self.ode, self.sde, self.shape, self.probes = ode, ode.sde, shape, probes
        self.dtype = ode.dtype

    @property
    def nfe(self) -> int:
        return self.ode.nfe

    def velocity(self, z: Tensor, t: float) -> Tensor:
        return self._augmented(z, self.shape, lambda x: self.ode.velocity(x, t), self.probes)

    def predict_rows(self, kind: str, z: Tensor, t: Tensor, rows: Tensor | slice) -> Tensor:
        """The augmented velocity of the batch rows ``rows``, each at its own time."""
        assert kind == "velocity", kind
        shape = (z.shape[0], *self.shape[1:])
        probes = None if self.probes is None else self.probes[:, rows]
        return self._augmented(
            z, shape, lambda x: self.ode.predict_rows("velocity", x, t, rows), probes
        )

    def _augmented(self, z: Tensor, shape, velocity, probes: Tensor | None) -> Tensor:
        with torch.enable_grad():
            x = z[:, :-1].detach().reshape(shape).requires_grad_(True)
            v = velocity(x)
            div = self._exact(x, v) if probes is None else self._hutchinson(x, v, probes)
        return torch.cat([v.detach().flatten(1), div.detach()[:, None]], dim=1)

    @staticmethod
    def _exact(x: Tensor, v: Tensor) -> Tensor:
        flat = v.flatten(1)
        diagonal = [
            torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)[0].flatten(1)[:, i]
            for i in range(flat.shape[1])
        ]
        return torch.stack(diagonal, dim=1).sum(1)

    @staticmethod
    def _hutchinson(x: Tensor, v: Tensor, probes: Tensor) -> Tensor:
        estimates = []
        for k, eps in enumerate(probes):
            last = k == len(probes) - 1
            (vjp,) = torch.autograd.grad((v * eps).sum(), x, retain_graph=not last)
            estimates.append((vjp * eps).flatten(1).sum(1))
        return torch.stack(estimates).mean(0)


def log_likelihood(
    model: ScoreFn,
    sde: SDE,
    x: Tensor,
    *,
    cond: Tensor | dict[str, Tensor] | None = None,
    solver: str | Solver = "rk45",
    steps: int = 100,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    divergence: Divergence = "auto",
    probes: int = 1,
    probe_dist: Literal["rademacher", "gaussian"] = "rademacher",
    t_start: float | None = None,
    generator: torch.Generator | None = None,
    return_result: bool = False,
) -> Tensor | LikelihoodResult:
    """Per-sample ``log p_{t_start}(x)`` in nats, shape ``(B,)``.

    ``t_start`` defaults to ``sde.t_min``.  ``solver`` is any solver of
    :func:`likelihood_solvers`: adaptive ones (``rk45``, ``dop853``) take ``rtol``
    and ``atol``, fixed-grid ones step ``steps`` times uniformly in log-SNR from
    ``t_start`` to ``T``.  ``divergence="auto"`` is exact for at most 32 dimensions
    per sample and Hutchinson (``probes`` probes, Rademacher or Gaussian, fixed per
    trajectory) above.  ``cond`` reaches the model as in ``solve``.
    """
    integrator = _solver(solver, rtol, atol)
    if divergence not in ("auto", "exact", "hutchinson"):
        raise ArgumentError(
            f"divergence must be 'auto', 'exact' or 'hutchinson', got {divergence!r}"
        )
    if probes < 1 or probe_dist not in ("rademacher", "gaussian"):
        raise ArgumentError(
            f"need probes >= 1 and probe_dist 'rademacher' or 'gaussian', got "
            f"probes={probes}, probe_dist={probe_dist!r}"
        )
    if x.ndim < 2 or not x.is_floating_point():
        raise ArgumentError(
            f"x must be a floating-point batch of shape (B, *event), got {tuple(x.shape)} {x.dtype}"
        )
    t0 = float(sde.t_min if t_start is None else t_start)
    if not 0 < t0 < sde.T:
        raise ArgumentError(f"t_start must lie in (0, T) = (0, {sde.T}), got {t0}")
    dim = x[0].numel()
    if divergence == "auto":
        divergence = "exact" if dim <= EXACT_DIVERGENCE_MAX_DIM else "hutchinson"
    eps = None
    if divergence == "hutchinson":
        shape = (probes, *x.shape)
        eps = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
        if probe_dist == "rademacher":
            eps = eps.sign()

    grid = _log_snr_grid(sde, t0, steps)
    process = ReverseProcess(model, sde, x, cond=cond, grid=grid)
    flow = _AugmentedFlow(process, x.shape, eps)
    z = torch.cat([x.detach().flatten(1), x.new_zeros(x.shape[0], 1)], dim=1)
    z = integrate(integrator, flow, grid, z, GeneratorNoise(generator), lambda *step: None)
    x_T = z[:, :-1].reshape(x.shape)
    prior = sde.prior_logp(x_T)
    integral = z[:, -1]
    logp = prior + integral
    _raise_if_not_finite(logp, "log_likelihood")
    if not return_result:
        return logp
    return LikelihoodResult(logp, prior, integral, x_T, process.nfe, divergence)


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


def elbo(
    model: ScoreFn,
    sde: SDE,
    x: Tensor,
    *,
    cond: Tensor | dict[str, Tensor] | None = None,
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
    _raise_if_not_finite(bound, "elbo")
    if not return_result:
        return bound
    return ELBOResult(bound, prior_kl, diffusion_kl, reconstruction, process.nfe)


def _raise_if_not_finite(values: Tensor, what: str) -> None:
    bad = int((~torch.isfinite(values)).sum())  # the one host read of the estimate
    if bad:
        raise NonFiniteError(
            f"{what} is not finite for {bad} of {len(values)} samples: the model returned "
            "non-finite values or the solver diverged; check the model, or use more steps"
        )


def pixel_range(scale: float, shift: float, levels: int) -> tuple[float, float]:
    """``(low, high)`` for :func:`bits_per_dim` when pixels ``k`` map to ``(k - shift) / scale``.

    Each level's dequantisation bin ``[k - 1/2, k + 1/2)`` is then centred on the
    value the model was trained on (digits: ``k / 8 - 1``, so ``±1.0625``).
    """
    return (-0.5 - shift) / scale, (levels - 0.5 - shift) / scale


def bits_per_dim(
    model: ScoreFn,
    sde: SDE,
    x_int: Tensor,
    *,
    levels: int = 256,
    low: float = -1.0,
    high: float = 1.0,
    generator: torch.Generator | None = None,
    estimator: Literal["ode", "elbo"] = "ode",
    return_result: bool = False,
    **options,
) -> Tensor | tuple[Tensor, LikelihoodResult | ELBOResult]:
    """Per-sample bits/dim of integer data in ``{0, ..., levels - 1}`` (images).

    Uniform dequantisation ``u = x + U[0, 1)``, then the model's scaling
    ``y = low + (high - low) u / levels``.  The change of variables gives
    ``log p(u) = log p(y) + D log((high - low) / levels)``, and
    ``bits/dim = -log p(u) / (D ln 2)``, an upper bound on the discrete NLL.
    ``log p(y)`` comes from :func:`log_likelihood` (``estimator="ode"``) or from
    the variational bound :func:`elbo` (``"elbo"``, a looser upper bound on bits/dim);
    ``options`` go to that function; ``return_result=True`` returns its result
    (terms, NFE) beside the bits/dim.
    """
    if estimator not in ("ode", "elbo"):
        raise ArgumentError(f"estimator must be 'ode' or 'elbo', got {estimator!r}")
    if x_int.is_floating_point() and not torch.equal(x_int, x_int.round()):
        raise ArgumentError(
            "bits_per_dim expects integer pixel values (dequantisation is done here)"
        )
    if x_int.min() < 0 or x_int.max() >= levels:
        raise ArgumentError(
            f"pixel values must lie in [0, {levels - 1}], got "
            f"[{x_int.min().item()}, {x_int.max().item()}]"
        )
    dtype = x_int.dtype if x_int.is_floating_point() else torch.get_default_dtype()
    noise = torch.rand(x_int.shape, generator=generator, device=x_int.device, dtype=dtype)
    u = x_int.to(noise.dtype) + noise
    y = low + (high - low) * u / levels
    dim = x_int[0].numel()
    estimate = log_likelihood if estimator == "ode" else elbo
    result = estimate(model, sde, y, generator=generator, return_result=True, **options)
    logp_y = result.log_likelihood if estimator == "ode" else result.elbo
    bits = -(logp_y + dim * math.log((high - low) / levels)) / (dim * math.log(2))
    return (bits, result) if return_result else bits


def nll_batched(
    model: ScoreFn,
    sde: SDE,
    x: Tensor,
    *,
    estimator: Literal["ode", "elbo"] = "ode",
    batch_size: int = 128,
    seed: int = 0,
    levels: int | None = None,
    low: float = -1.0,
    high: float = 1.0,
    on_batch: Callable[[int, int], None] | None = None,
    **options,
) -> tuple[Tensor | None, float]:
    """Per-sample negative log-likelihood (nats) in batches, sharded over ``torchrun`` ranks.

    ``estimator`` picks :func:`log_likelihood` (``"ode"``) or :func:`elbo`; with
    ``levels`` the rows of ``x`` are integer pixels and the value is the NLL of the
    dequantised data (:func:`bits_per_dim` times ``D ln 2``).  Batch ``[s, s + b)``
    draws its randomness (probes, dequantisation, ELBO times) from a generator
    seeded by ``(seed, s)`` and rank ``r`` of ``W`` takes batches ``r, r + W, ...``,
    so the values do not depend on the number of processes.  Returns the values
    (on rank 0; ``None`` on other ranks) and the mean NFE per batch.  ``on_batch(start,
    stop)`` follows each finished batch of this rank (a progress bar).
    """
    if estimator not in ("ode", "elbo"):
        raise ArgumentError(f"estimator must be 'ode' or 'elbo', got {estimator!r}")
    dim, calls = x[0].numel(), [0, 0]

    def run(start: int, stop: int) -> Tensor:
        generator = torch.Generator(device=x.device).manual_seed(seed * 1_000_003 + start)
        batch = x[start:stop]
        if levels is not None:
            bits, result = bits_per_dim(
                model,
                sde,
                batch,
                levels=levels,
                low=low,
                high=high,
                generator=generator,
                estimator=estimator,
                return_result=True,
                **options,
            )
            nll = bits * dim * math.log(2)
        else:
            estimate = log_likelihood if estimator == "ode" else elbo
            result = estimate(model, sde, batch, generator=generator, return_result=True, **options)
            nll = -(result.log_likelihood if estimator == "ode" else result.elbo)
        calls[0], calls[1] = calls[0] + result.nfe, calls[1] + 1
        if on_batch is not None:
            on_batch(start, stop)
        return nll

    values = map_batches(run, len(x), batch_size)
    nfe, batches = sum_over_ranks(calls)
    return values, nfe / batches
