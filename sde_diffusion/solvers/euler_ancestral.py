"""Euler ancestral: an Euler step of the PF-ODE to σ_down, then fresh noise of size σ_up."""

from __future__ import annotations

import math
from itertools import pairwise

import torch

from ..errors import ArgumentError
from .base import Solver
from .registry import register_solver


def ancestral_split(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` with ``sigma_down² + sigma_up² = sigma_next²``.

    ``sigma_up = min(sigma_next, eta · sigma_next √(1 − sigma_next²/sigma²))``: at
    ``eta = 1`` the step is the exact posterior ``q(x_s | x_t, x̂_0)`` (DDPM), at
    ``eta = 0`` a deterministic PF-ODE step.  In scaled units ``σ/α``.
    """
    if sigma_next == 0.0:
        return 0.0, 0.0
    up = min(sigma_next, eta * sigma_next * math.sqrt(max(1 - sigma_next**2 / sigma**2, 0.0)))
    return math.sqrt(sigma_next**2 - up**2), up


def stage_times(process, grid: list[float], eta: float, r: float = 0.5) -> dict[float, float]:
    """``t0 -> t_m`` for each step of ``grid`` not ending at 0: the point at fraction ``r``
    of the log-SNR way from ``t0`` to the step's ``σ_down`` (``eta = 0``: to ``t1``)."""
    starts, lams = [], []
    for t0, t1 in pairwise(grid):
        if t1 == 0.0:
            continue
        c0, c1 = process.at(t0), process.at(t1)
        sig0 = c0.sigma / c0.alpha
        down, _ = ancestral_split(sig0, c1.sigma / c1.alpha, eta)
        starts.append(t0)
        lams.append(c0.log_snr + r * math.log(sig0 / down))
    return dict(zip(starts, process.times_at_log_snr(lams), strict=True))


class EtaSolver(Solver):
    """A data-prediction solver with the stochasticity knob: ``eta`` in [0, 1] (0: the
    probability-flow ODE, 1: the reverse SDE) and ``s_noise``, a factor on the noise."""

    uses = frozenset({"denoise"})

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0):
        if not 0.0 <= eta <= 1.0:
            raise ArgumentError(f"eta must lie in [0, 1], got {eta!r}")
        if not 0.0 <= s_noise < math.inf:
            raise ArgumentError(f"s_noise must be a finite number >= 0, got {s_noise!r}")
        self.eta, self.s_noise = float(eta), float(s_noise)

    @property
    def stochastic(self) -> bool:
        return self.eta > 0 and self.s_noise > 0

    def add_noise(self, x, noise, t0: float, t1: float, std: float):
        """``x + s_noise · std · z`` with z the noise of the interval ``t0 -> t1``."""
        if std > 0 and self.s_noise > 0:
            x = torch.add(x, noise(x, t0, t1), alpha=std * self.s_noise)
        return x


class MidpointEtaSolver(EtaSolver):
    """A two-stage solver with the eta knob whose stage point lies halfway in log-SNR
    from ``t`` to the step's ``σ_down`` (``stage_times``, computed for the whole grid)."""

    def __init__(self, eta: float = 0.0, s_noise: float = 1.0):
        super().__init__(eta, s_noise)

    def init(self, process, grid, x, noise):
        return stage_times(process, grid, self.eta)  # the midpoints, computed together

    def split(self, process, t0: float, t1: float):
        """``(c_t, c_s, σ̃_t, σ_down, σ_up)`` of the step ``t0 -> t1``."""
        c0, c1 = process.at(t0), process.at(t1)
        sig0 = c0.sigma / c0.alpha
        down, up = ancestral_split(sig0, c1.sigma / c1.alpha, self.eta)
        return c0, c1, sig0, down, up


@register_solver(
    "euler_ancestral",
    kind="sde",
    order=1.0,
    nfe_per_step=1,
    stochastic=True,
    reference="Karras et al. 2022 (k-diffusion sample_euler_ancestral); Ho et al. 2020",
)
class EulerAncestral(EtaSolver):
    """Euler ancestral, in scaled units y = x/α, σ̃ = σ/α (k-diffusion's form on any SDE).

    With ``(σ_down, σ_up) = ancestral_split(σ̃_t, σ̃_s, η)``:
    ``y_s = x̂_0 + (y − x̂_0) σ_down/σ̃_t + s_noise · σ_up · z``.  At ``eta = 1`` this is
    the ``ancestral`` solver (the DDPM posterior step, same numbers) and at ``eta = 0``
    DDIM; on the EDM formulation it equals ``ddim --eta`` for every η.  1 NFE per step.
    """

    def step(self, process, t0, t1, x, state, noise):
        x0 = process.denoise(x, t0)
        if t1 == 0.0:
            return x0, state
        c0, c1 = process.at(t0), process.at(t1)
        sig0, sig1 = c0.sigma / c0.alpha, c1.sigma / c1.alpha
        down, up = ancestral_split(sig0, sig1, self.eta)
        # x_s = α_s (x̂_0 + (x/α_t − x̂_0) σ_down/σ̃_t) + α_s σ_up z
        on_x = c1.alpha * down / (sig0 * c0.alpha)
        x = torch.add(x * on_x, x0, alpha=c1.alpha * (1 - down / sig0))
        return self.add_noise(x, noise, t0, t1, c1.alpha * up), state
