"""Step-size controllers: *where* the one loop steps (diffrax's split).

A fixed-grid solver steps exactly the grid (:data:`FIXED_GRID`).  A solver with an
embedded error estimate steps under a :class:`PIDController`: every sample has its own
step size and error norm, so its path does not depend on the rest of the batch.

With the per-sample error norm ``E`` (the solver's estimate, scaled by
:meth:`PIDController.scale`) and ``e_k = 1/(E_k + error_offset)`` over the last accepted
steps,
the controller proposes ``h ← h·L(safety · e_0^{b_1} e_1^{b_2} e_2^{b_3})`` with
``b_1 = (k_P + k_I + k_D)/p``, ``b_2 = −(k_P + 2k_D)/p``, ``b_3 = k_D/p`` (``p`` the
solver's error order) and accepts the step when the factor is at least
``accept_safety``.  The limiter ``L`` is Söderlind's ``1 + atan(f − 1)`` or a clip to
``[factor_min, factor_max]`` (Hairer's I controller with ``k_I = 1``, as scipy's
``RK45``/``DOP853`` use).  References: Söderlind 2003, *Digital filters in adaptive
time-stepping*; Hairer, Nørsett & Wanner, *Solving ODEs I*, sec. II.4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .errors import ArgumentError

__all__ = ["FIXED_GRID", "FixedGrid", "PIDController"]


@dataclass(frozen=True)
class FixedGrid:
    """Step exactly the grid's intervals (one ``step`` each)."""

    adaptive = False


FIXED_GRID = FixedGrid()


MAX_TOLERANCE = 1e6  # beyond it the error scale overflows and no error is ever seen
MAX_GAIN = 10.0  # PID gains are of order one (k-diffusion's, Söderlind's); larger overflow


@dataclass(frozen=True)
class PIDController:
    """Per-sample PID step-size control with an optional NFE budget (``max_nfe``, 0: none).

    ``norm="sum"`` scales errors by ``atol + rtol·max(|a|, |b|)`` (Hairer, scipy),
    ``norm="max"`` by ``max(atol, rtol·max(|a|, |b|))`` (k-diffusion's DPM-Solver); ``a``
    and ``b`` are the two states the solver compares.  ``hold_after_reject``: a step
    accepted right after a rejection does not grow the next one (Hairer's rule, scipy's).
    ``resize_taken_step``: the factor applies to the step taken, shortened to reach a grid
    time (Hairer), or else to the step proposed (k-diffusion).
    """

    rtol: float
    atol: float
    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    safety: float = 0.9
    accept_safety: float = 0.9
    limiter: Literal["clip", "atan"] = "clip"
    factor_min: float = 0.2
    factor_max: float = 10.0
    norm: Literal["sum", "max"] = "sum"
    error_offset: float = 0.0
    hold_after_reject: bool = True
    resize_taken_step: bool = True
    max_nfe: int = 0

    adaptive = True

    def __post_init__(self):
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if not 0 < value <= MAX_TOLERANCE:
                raise ArgumentError(
                    f"{name} must be a number in (0, {MAX_TOLERANCE:g}], got {value!r}"
                )
        gains = (self.pcoeff, self.icoeff, self.dcoeff)
        if not all(abs(k) <= MAX_GAIN for k in gains) or sum(gains) <= 0:
            raise ArgumentError(
                f"pcoeff, icoeff and dcoeff must lie in [-{MAX_GAIN:g}, {MAX_GAIN:g}] with a "
                f"positive sum, got {gains}"
            )
        if not 0 < self.accept_safety <= 1:
            raise ArgumentError(f"accept_safety must lie in (0, 1], got {self.accept_safety!r}")
        if not (isinstance(self.max_nfe, int) and self.max_nfe >= 0):
            raise ArgumentError(f"max_nfe must be a whole number >= 0, got {self.max_nfe!r}")

    def check_dtype(self, dtype: torch.dtype) -> None:
        """Refuse tolerances that ``dtype`` cannot resolve (the step would vanish)."""
        floor = 10 * torch.finfo(dtype).eps
        if min(self.rtol, self.atol) < floor:
            raise ArgumentError(
                f"rtol and atol must be >= {floor:.1e} for {dtype}, which cannot resolve a "
                f"smaller error (got rtol={self.rtol:g}, atol={self.atol:g})"
            )

    def scale(self, a: Tensor, b: Tensor) -> Tensor:
        """The per-entry error scale of two states ``a`` and ``b``."""
        relative = self.rtol * torch.maximum(a.abs(), b.abs())
        if self.norm == "max":
            return relative.clamp_min(self.atol)
        return relative + self.atol

    def error(self, error: Tensor, a: Tensor, b: Tensor) -> Tensor:
        """Per-sample RMS of ``error / scale(a, b)``, shape ``(B,)``."""
        return (error / self.scale(a, b)).flatten(1).pow(2).mean(1).sqrt()

    def init(self, batch: int, device: torch.device) -> Tensor:
        """The controller's state per sample: the last three inverse errors (NaN: none
        yet) and whether the last attempt was rejected."""
        history = torch.full((batch, 4), math.nan, dtype=torch.float64, device=device)
        history[:, 3] = 0.0
        return history

    def adapt(self, history: Tensor, error: Tensor, order: float) -> tuple[Tensor, Tensor, Tensor]:
        """``(accept, factor, history)`` for the per-sample scaled errors ``error``."""
        k_p, k_i, k_d = self.pcoeff, self.icoeff, self.dcoeff
        exponents = torch.tensor(
            [k_p + k_i + k_d, -(k_p + 2 * k_d), k_d], dtype=history.dtype, device=history.device
        ) / float(order)
        inverse = (1 / (error.to(history.dtype) + self.error_offset)).clamp(max=1e300)
        errors = torch.where(history[:, :3].isnan(), inverse[:, None], history[:, :3])
        errors[:, 0] = inverse  # (a first step fills the history with its own error)
        raw = self.safety * errors.pow(exponents).prod(1)
        if self.limiter == "atan":
            factor = 1 + torch.atan(raw - 1)
        else:
            factor = raw.clamp(self.factor_min, self.factor_max)
        accept = factor >= self.accept_safety
        if self.hold_after_reject:
            factor = torch.where(accept & (history[:, 3] > 0), factor.clamp(max=1.0), factor)
        shifted = torch.stack([errors[:, 0], errors[:, 0], errors[:, 1]], 1)
        errors = torch.where(accept[:, None], shifted, errors)
        return accept, factor, torch.cat([errors, (~accept).to(errors)[:, None]], 1)
