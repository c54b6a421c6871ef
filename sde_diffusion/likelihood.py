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

__all__ = ["GENERIC_ODE_SOLVERS", "LikelihoodResult", "bits_per_dim", "log_likelihood"]

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
        lam = torch.linspace(
            float(sde.log_snr(t0)), float(sde.log_snr(sde.T)), steps + 1, dtype=torch.float64
        )
        grid = sde.t_from_log_snr(lam).tolist()
        grid[0], grid[-1] = t0, float(sde.T)
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


def bits_per_dim(
    score_fn: ScoreFn,
    sde: SDE,
    x_int: Tensor,
    *,
    levels: int = 256,
    low: float = -1.0,
    high: float = 1.0,
    generator: torch.Generator | None = None,
    **likelihood_options,
) -> Tensor:
    """Per-sample bits/dim of integer data in ``{0, ..., levels - 1}`` (images).

    Uniform dequantisation ``u = x + U[0, 1)``, then the model's scaling
    ``y = low + (high - low) u / levels``.  The change of variables gives
    ``log p(u) = log p(y) + D log((high - low) / levels)``, and
    ``bits/dim = -log p(u) / (D ln 2)``, an upper bound on the discrete NLL.
    """
    if x_int.is_floating_point() and not torch.equal(x_int, x_int.round()):
        raise ValueError("bits_per_dim expects integer pixel values (dequantisation is done here)")
    if x_int.min() < 0 or x_int.max() >= levels:
        raise ValueError(
            f"pixel values must lie in [0, {levels - 1}], got "
            f"[{x_int.min().item()}, {x_int.max().item()}]"
        )
    noise = torch.rand(x_int.shape, generator=generator, device=x_int.device)
    u = x_int.to(noise.dtype) + noise
    y = low + (high - low) * u / levels
    dim = x_int[0].numel()
    logp_y = log_likelihood(score_fn, sde, y, generator=generator, **likelihood_options)
    logp_u = logp_y + dim * math.log((high - low) / levels)
    return -logp_u / (dim * math.log(2))
