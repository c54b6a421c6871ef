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
from typing import Literal

import torch
from torch import Tensor

from ..distributed import map_batches, sum_over_ranks
from ..errors import ArgumentError, raise_if_not_finite
from ..loop import integrate
from ..noise import GeneratorNoise, seeded_generator
from ..reverse import ReverseProcess, ScoreFn
from ..sdes import SDE
from ..solvers.base import Solver
from ..solvers.registry import get_solver, solver_class, solver_names, solver_options
from .elbo import elbo_terms

__all__ = [
    "LikelihoodResult",
    "bits_per_dim",
    "likelihood_solvers",
    "likelihood_terms",
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


def likelihood_terms(
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
) -> LikelihoodResult:
    """Per-sample ``log p_{t_start}(x)`` in nats with its terms and cost
    (:func:`log_likelihood` gives the values alone).

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
    raise_if_not_finite(logp, "log_likelihood")
    return LikelihoodResult(logp, prior, integral, x_T, process.nfe, divergence)


def log_likelihood(model: ScoreFn, sde: SDE, x: Tensor, **options) -> Tensor:
    """Per-sample ``log p_{t_start}(x)`` in nats, shape ``(B,)``: the value of
    :func:`likelihood_terms`, whose options these are."""
    return likelihood_terms(model, sde, x, **options).log_likelihood


def _log_snr_grid(sde: SDE, t0: float, steps: int) -> list[float]:
    """``steps + 1`` times from ``t0`` up to ``T``, uniform in log-SNR."""
    lam = torch.linspace(
        float(sde.log_snr(t0)), float(sde.log_snr(sde.T)), steps + 1, dtype=torch.float64
    )
    grid = sde.t_from_log_snr(lam).tolist()
    grid[0], grid[-1] = t0, float(sde.T)
    return grid


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
    return _bits_and_terms(model, sde, x_int, levels, low, high, generator, estimator, options)[0]


def _bits_and_terms(model, sde, x_int, levels, low, high, generator, estimator, options):
    """Bits/dim and the estimator's result (terms and NFE)."""
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
    estimate = likelihood_terms if estimator == "ode" else elbo_terms
    result = estimate(model, sde, y, generator=generator, **options)
    logp_y = result.log_likelihood if estimator == "ode" else result.elbo
    bits = -(logp_y + dim * math.log((high - low) / levels)) / (dim * math.log(2))
    return bits, result


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
        generator = seeded_generator(seed * 1_000_003 + start, x.device)
        batch = x[start:stop]
        if levels is not None:
            bits, result = _bits_and_terms(
                model, sde, batch, levels, low, high, generator, estimator, options
            )
            nll = bits * dim * math.log(2)
        else:
            estimate = likelihood_terms if estimator == "ode" else elbo_terms
            result = estimate(model, sde, batch, generator=generator, **options)
            nll = -(result.log_likelihood if estimator == "ode" else result.elbo)
        calls[0], calls[1] = calls[0] + result.nfe, calls[1] + 1
        if on_batch is not None:
            on_batch(start, stop)
        return nll

    values = map_batches(run, len(x), batch_size)
    nfe, batches = sum_over_ranks(calls)
    return values, nfe / batches
