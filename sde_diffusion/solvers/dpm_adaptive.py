"""Adaptive DPM-Solver: embedded orders 3(2) or 2(1) with PID step control per sample."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..controllers import PIDController
from ..errors import ArgumentError
from .base import AdaptiveSolver
from .registry import register_solver


@register_solver(
    "dpm_adaptive",
    kind="ode",
    order=3.0,
    nfe_per_step=3,
    stochastic=False,
    adaptive=True,
    reference="Lu et al. 2022, DPM-Solver (sec. 3.4, adaptive); Söderlind 2003 (PID "
    "control); k-diffusion sample_dpm_adaptive",
)
class DPMAdaptive(AdaptiveSolver):
    """Adaptive DPM-Solver-23 (or -12) in log-SNR with a PID step-size controller per sample.

    In ``y = x/α`` and ``λ = log(α/σ)`` the PF-ODE is ``dy/dσ̃ = ε̂`` with ``σ̃ = e^{-λ}``.
    A step of size ``h`` from ``λ_s`` takes DPM-Solver-3 (stages at ``λ_s + h/3`` and
    ``λ_s + 2h/3``) and DPM-Solver-2 with ``r = 1/3``, which shares its first two
    evaluations (3 NFE); ``order=2`` pairs DPM-Solver-2 with DDIM (2 NFE).  Each sample's
    error is ``E = rms((y_low − y_high)/δ)`` with ``δ = max(atol, rtol·max(|y_low|,
    |y_prev|))``; with ``e_k = 1/(E_k + 10⁻⁸)`` over the last accepted steps the
    controller sets ``h ← h·L(e_0^{b_1} e_1^{b_2} e_2^{b_3})``, ``L(f) = 1 + atan(f − 1)``,
    ``b_1 = (k_P + k_I + k_D)/p``, ``b_2 = −(k_P + 2k_D)/p``, ``b_3 = k_D/p``, and accepts
    when ``L ≥ accept_safety``.

    The loop (:mod:`sde_diffusion.loop`) gives every sample its own ``λ`` and ``h`` under
    this solver's :class:`~sde_diffusion.controllers.PIDController` (Söderlind's limiter,
    the ``max`` error scale), so its path does not depend on the rest of the batch; a
    model call evaluates only the samples still moving, and ``nfe`` counts calls (per
    grid interval, the most any sample needed).  Steps stop at every grid time; over one
    grid interval a sample's path is k-diffusion's ``sample_dpm_adaptive`` run on it
    alone.  ``max_nfe`` (0: no cap) caps the calls: once only the calls needed to reach
    the remaining grid times are left, each sample steps straight to them.  A grid ending
    at ``t = 0`` is solved to its last positive time and finished with the Tweedie step.
    """

    uses = frozenset({"eps"})
    coordinate_tolerance = 1e-5  # k-diffusion's: a sample within 1e-5 of λ_end is done

    def __init__(
        self,
        rtol: float = 0.05,
        atol: float = 0.0078,
        order: int = 3,
        h_init: float = 0.05,
        pcoeff: float = 0.0,
        icoeff: float = 1.0,
        dcoeff: float = 0.0,
        accept_safety: float = 0.81,
        max_nfe: int = 0,
    ):
        if order not in (2, 3):
            raise ArgumentError(f"order must be 2 or 3, got {order!r}")
        if not 0 < h_init < math.inf:
            raise ArgumentError(f"h_init must be a finite number > 0, got {h_init!r}")
        if not (isinstance(max_nfe, int) and (max_nfe == 0 or max_nfe >= order)):
            raise ArgumentError(
                f"max_nfe must be 0 (no cap) or a whole number >= {order} (one step of order "
                f"{order}), got {max_nfe!r}"
            )
        self.controller = PIDController(
            rtol=float(rtol),
            atol=float(atol),
            pcoeff=float(pcoeff),
            icoeff=float(icoeff),
            dcoeff=float(dcoeff),
            safety=1.0,
            accept_safety=float(accept_safety),
            limiter="atan",
            norm="max",
            error_offset=1e-8,
            hold_after_reject=False,
            resize_taken_step=False,
            max_nfe=max_nfe,
        )
        self.method_order, self.h_init = int(order), float(h_init)

    def options(self):
        c = self.controller
        return {
            "rtol": c.rtol,
            "atol": c.atol,
            "order": self.method_order,
            "h_init": self.h_init,
            "pcoeff": c.pcoeff,
            "icoeff": c.icoeff,
            "dcoeff": c.dcoeff,
            "accept_safety": c.accept_safety,
            "max_nfe": c.max_nfe,
        }

    @property
    def order(self) -> float:
        return float(self.method_order)

    @property
    def error_order(self) -> float:
        return float(self.method_order)

    @property
    def nfe_per_step(self) -> int:
        return self.method_order

    def coordinate(self, process, t):
        return process.at(t).log_snr

    def time_of(self, process, s):
        return process.sde.t_from_log_snr(s)

    def enter(self, process, t, x):
        return x / process.at(t).alpha

    def leave(self, process, t, y):
        return y * process.at(t).alpha

    def start(self, process, y, s, direction, span):
        return torch.full_like(s, self.h_init), {"low": y}

    def attempt(self, process, y, s, s_next, rows, state):
        low, high = self._pair(process, y, s, s_next - s, rows)
        error = self.controller.error(low - high, low, state["low"]).to(s.dtype)
        return high, error, {"low": low}

    def _pair(self, process, y: Tensor, s: Tensor, h: Tensor, rows: Tensor):
        """``(y_low, y_high)`` of one step of size ``h`` from ``λ = s`` (per sample)."""
        sde, shape = process.sde, (-1,) + (1,) * (y.ndim - 1)

        def eps(y_in: Tensor, lam: Tensor) -> Tensor:
            t = sde.t_from_log_snr(lam)
            alpha = sde.alpha(t).to(y_in).expand(lam.shape[0]).view(shape)
            return process.predict_rows("eps", y_in * alpha, t, rows)

        def sig(lam: Tensor) -> Tensor:  # σ̃ = e^{-λ}, shaped for y
            return lam.neg().exp().to(y).view(shape)

        def col(v: Tensor) -> Tensor:
            return v.to(y).view(shape)

        eps0 = eps(y, s)
        end = s + h
        first = self.method_order == 2
        r1 = 0.5 if first else 1 / 3
        s1 = s + r1 * h
        u1 = y - sig(s1) * col(torch.expm1(r1 * h)) * eps0
        eps1 = eps(u1, s1)
        base = y - sig(end) * col(torch.expm1(h)) * eps0
        second = base - sig(end) / (2 * r1) * col(torch.expm1(h)) * (eps1 - eps0)
        if first:
            return base, second
        r2 = 2 / 3
        s2 = s + r2 * h
        u2 = (
            y
            - sig(s2) * col(torch.expm1(r2 * h)) * eps0
            - sig(s2) * (r2 / r1) * col(torch.expm1(r2 * h) / (r2 * h) - 1) * (eps1 - eps0)
        )
        eps2 = eps(u2, s2)
        third = base - sig(end) / r2 * col(torch.expm1(h) / h - 1) * (eps2 - eps0)
        return second, third
