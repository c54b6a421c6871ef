"""Adaptive DPM-Solver: embedded orders 3(2) or 2(1) with PID step control per sample."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import NonFiniteError, Solver
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
class DPMAdaptive(Solver):
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

    Every sample has its own ``λ`` and ``h``, so its path does not depend on the rest of
    the batch; a model call evaluates only the samples still moving, and ``nfe`` counts
    calls (per grid interval, the most any sample needed).  Steps stop at every grid
    time; over one grid interval a sample's path is k-diffusion's ``sample_dpm_adaptive``
    run on it alone.
    ``max_nfe`` (0: no cap) caps the calls: once only the calls needed to reach the
    remaining grid times are left, each sample steps straight to them.  A grid ending at
    ``t = 0`` is solved to its last positive time and finished with the Tweedie step.
    """

    uses = frozenset({"eps"})

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
            raise ValueError(f"order must be 2 or 3, got {order!r}")
        for name, value in (("rtol", rtol), ("atol", atol), ("h_init", h_init)):
            if not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        gains = (pcoeff, icoeff, dcoeff)
        if not all(math.isfinite(k) for k in gains) or pcoeff + icoeff + dcoeff <= 0:
            raise ValueError(
                f"pcoeff, icoeff and dcoeff must be finite with a positive sum, got {gains}"
            )
        if not 0 < accept_safety <= 1:
            raise ValueError(f"accept_safety must lie in (0, 1], got {accept_safety!r}")
        if not (isinstance(max_nfe, int) and (max_nfe == 0 or max_nfe >= order)):
            raise ValueError(
                f"max_nfe must be 0 (no cap) or a whole number >= {order} (one step of order "
                f"{order}), got {max_nfe!r}"
            )
        self.rtol, self.atol, self.method_order = float(rtol), float(atol), int(order)
        self.h_init, self.accept_safety, self.max_nfe = float(h_init), float(accept_safety), max_nfe
        self.pcoeff, self.icoeff, self.dcoeff = map(float, gains)

    def options(self):
        opts = dict(vars(self))
        opts["order"] = opts.pop("method_order")
        return opts

    @property
    def order(self) -> float:
        return float(self.method_order)

    @property
    def nfe_per_step(self) -> int:
        return self.method_order

    def expected_nfe(self, grid):
        return None

    def integrate(self, process, grid, x, noise, observe):
        floor = 10 * torch.finfo(x.dtype).eps
        if min(self.rtol, self.atol) < floor:
            raise ValueError(
                f"rtol and atol must be >= {floor:.1e} for {x.dtype}, which cannot resolve a "
                f"smaller error (got rtol={self.rtol:g}, atol={self.atol:g})"
            )
        stops = [t for t in grid if t > 0.0]
        to_zero = len(stops) < len(grid)
        least = (len(stops) - 1) * self.method_order + to_zero
        if self.max_nfe and self.max_nfe < least:
            raise ValueError(
                f"max_nfe={self.max_nfe} is below the {least} evaluations needed to reach "
                f"the {len(stops) - 1} grid times (order {self.method_order}) of this grid"
            )
        lams = [process.at(t).log_snr for t in stops]
        wide = dict(dtype=torch.float64, device=x.device)
        y = x / process.at(stops[0]).alpha
        run = _Run(self, y, torch.full((x.shape[0],), lams[0], **wide))
        for i, target in enumerate(lams[1:]):
            reserve = (len(lams) - 2 - i) * self.method_order + to_zero
            while run.step(process, target, reserve):
                pass
            observe(i, grid[i], grid[i + 1], run.y * process.at(grid[i + 1]).alpha)
        out = run.y * process.at(stops[-1]).alpha
        if to_zero:
            out = process.denoise(out, stops[-1])
            observe(len(grid) - 2, stops[-1], 0.0, out)
        return out


class _Run:
    """The per-sample state of one adaptive solve: ``y``, ``λ``, ``h``, the last
    accepted low-order solution and the controller's inverse errors."""

    def __init__(self, solver: DPMAdaptive, y: Tensor, lam: Tensor):
        self.solver, self.y, self.lam = solver, y, lam
        self.h = torch.full_like(lam, solver.h_init)
        self.y_prev = y
        self.inv_errors = torch.full(
            (lam.shape[0], 3), math.nan, dtype=lam.dtype, device=lam.device
        )
        p = float(solver.method_order)
        k_p, k_i, k_d = solver.pcoeff, solver.icoeff, solver.dcoeff
        self.exponents = torch.tensor([k_p + k_i + k_d, -(k_p + 2 * k_d), k_d], **_like(lam)) / p

    def step(self, process, target: float, reserve: int) -> bool:
        """One attempted step of every sample short of ``target``; ``False`` when none is."""
        rows = (self.lam < target - 1e-5).nonzero().squeeze(1)  # the one sync per step
        if rows.numel() == 0:
            return False
        s = self.lam[rows]
        cap = self.solver.max_nfe
        forced = bool(cap) and process.nfe + 2 * self.solver.method_order + reserve > cap
        t = torch.full_like(s, target) if forced else torch.clamp(s + self.h[rows], max=target)
        y = self.y[rows]
        low, high = self._pair(process, y, s, t - s, rows)
        delta = torch.maximum(
            torch.full_like(low, self.solver.atol),
            self.solver.rtol * torch.maximum(low.abs(), self.y_prev[rows].abs()),
        )
        error = ((low - high) / delta).flatten(1).pow(2).mean(1).sqrt().to(s.dtype)
        accept, factor = self._control(rows, error)
        accept = accept | forced
        self.h[rows] = self.h[rows] * factor
        self._check(process, s, error, self.h[rows])
        shape = (-1,) + (1,) * (y.ndim - 1)
        self.y = self.y.index_put((rows,), torch.where(accept.view(shape), high, y))
        self.y_prev = self.y_prev.index_put(
            (rows,), torch.where(accept.view(shape), low, self.y_prev[rows])
        )
        self.lam = self.lam.index_put((rows,), torch.where(accept, t, s))
        return True

    def _check(self, process, s: Tensor, error: Tensor, h: Tensor) -> None:
        """Stop with a sentence, never loop forever, on a non-finite error or a vanishing step."""
        bad = ~error.isfinite() | (h < 1e-12)
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            t = float(process.sde.t_from_log_snr(s[i]))
            if not error[i].isfinite():
                raise NonFiniteError(
                    f"dpm_adaptive: the error estimate of the step from t = {t:.4g} is not "
                    "finite (the model returned inf or NaN); check the model there"
                )
            raise NonFiniteError(
                f"dpm_adaptive: the step size vanished at t = {t:.4g}; rtol={self.solver.rtol:g} "
                f"and atol={self.solver.atol:g} are too tight for this model"
            )

    def _control(self, rows: Tensor, error: Tensor) -> tuple[Tensor, Tensor]:
        """The PID factor on ``h`` and whether each sample's step is accepted."""
        inv = self.inv_errors[rows]
        inv = torch.where(inv.isnan(), (1 / (error + 1e-8))[:, None], inv)  # first step
        inv[:, 0] = 1 / (error + 1e-8)
        factor = 1 + torch.atan(inv.pow(self.exponents).prod(1) - 1)
        accept = factor >= self.solver.accept_safety
        shifted = torch.stack([inv[:, 0], inv[:, 0], inv[:, 1]], 1)
        self.inv_errors[rows] = torch.where(accept[:, None], shifted, inv)
        return accept, factor

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
        first = self.solver.method_order == 2
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


def _like(t: Tensor) -> dict:
    return {"dtype": t.dtype, "device": t.device}
