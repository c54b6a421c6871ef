"""The maths of stochastic steps that the solvers and the ELBO share.

The Gaussian posterior of a linear SDE's forward transition (``posterior_coefficients``,
DDPM's), the split of a step's noise between a deterministic part and fresh noise
(``ancestral_split``, in scaled units σ/α), where two-stage η methods put their stage
(``stage_times``), and the η family base classes (``EtaSolver``, ``MidpointEtaSolver``).
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch

from ..errors import ArgumentError
from ..parametrization import Coefficients
from .base import Solver

__all__ = [
    "EtaSolver",
    "MidpointEtaSolver",
    "ancestral_split",
    "noise_to_signal",
    "posterior_coefficients",
    "stage_times",
]


def posterior_coefficients(c_t: Coefficients, c_s: Coefficients):
    """Mean weights and variance of ``q(x_s | x_t, x_0)`` for ``s < t``.

    With ``a = alpha_t / alpha_s`` and ``v = sigma_t^2 - a^2 sigma_s^2`` (the
    forward transition ``x_t | x_s ~ N(a x_s, v)``):
    ``mean = (a sigma_s^2 / sigma_t^2) x_t + (alpha_s v / sigma_t^2) x_0`` and
    ``var = v sigma_s^2 / sigma_t^2``.  Returns (weight on x_t, weight on x_0,
    posterior variance, forward variance v).
    """
    a = c_t.alpha / c_s.alpha
    v = c_t.sigma**2 - a**2 * c_s.sigma**2
    ratio = c_s.sigma**2 / c_t.sigma**2
    return a * ratio, c_s.alpha * v / c_t.sigma**2, v * ratio, v


def noise_to_signal(c) -> float:
    """Noise-to-signal ratio sigma / alpha (0 at t = 0 for sigma(0) = 0)."""
    return c.sigma / c.alpha


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
