"""SA-Solver: stochastic Adams predictor–corrector in data prediction (Xue et al. 2023)."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ArgumentError
from .registry import register_solver
from .stochastic import EtaSolver

NODES, WEIGHTS = np.polynomial.legendre.leggauss(16)  # exact to round-off for these integrands


def adams_weights(lams: list[float], lam_s: float, lam_t: float, tau: float) -> list[float]:
    """``b_j = (1 + τ²) ∫_{λ_s}^{λ_t} e^{(1+τ²)(λ − λ_t)} ℓ_j(λ) dλ`` for the Lagrange basis
    ``ℓ_j`` through ``lams``: the weights of the x̂_0 values (times ``α_t``) that integrate
    the SA-Solver SDE's data term exactly for x̂_0 polynomial in λ (16-point Gauss–Legendre,
    exact to round-off for these smooth integrands)."""
    c, h = 1 + tau**2, lam_t - lam_s
    u = lam_s + (NODES + 1) * h / 2  # quadrature points in [λ_s, λ_t]
    kernel = c * np.exp(c * (u - lam_t)) * WEIGHTS * h / 2
    out = []
    for j, lam_j in enumerate(lams):
        basis = np.ones_like(u)
        for k, lam_k in enumerate(lams):
            if k != j:
                basis *= (u - lam_k) / (lam_j - lam_k)
        out.append(float((kernel * basis).sum()))
    return out


def _adams_step(process, x, t_from: float, t_to: float, nodes, tau: float):
    """``(σ_t/σ_s) e^{−τ²h} x + α_t Σ_j b_j x̂_0,j`` from ``t_from`` to ``t_to`` over the
    history ``nodes = [(λ_j, x̂_0,j)]`` (without the noise)."""
    cs, ct = process.at(t_from), process.at(t_to)
    b = adams_weights([lam for lam, _ in nodes], cs.log_snr, ct.log_snr, tau)
    out = x * (ct.sigma / cs.sigma * math.exp(-(tau**2) * (ct.log_snr - cs.log_snr)))
    for weight, (_, x0) in zip(b, nodes, strict=True):
        out = out.add_(x0, alpha=ct.alpha * weight)
    return out


@register_solver(
    "sa_solver",
    kind="sde",
    order=1.0,
    nfe_per_step=1,
    stochastic=True,
    reference="Xue et al. 2023, SA-Solver (NeurIPS), alg. 1 (data prediction); ComfyUI "
    "sample_sa_solver; diffusers SASolverScheduler",
)
class SASolver(EtaSolver):
    """SA-Solver on the SDE family ``dx = [f x − (1+τ²)/2 g² ∇log p] dt + τ g dw̄``, in λ.

    Exactly: ``x_t = (σ_t/σ_s) e^{−τ²h} x_s + α_t (1+τ²) ∫ e^{(1+τ²)(λ−λ_t)} x̂_0 dλ
    + σ_t √(1 − e^{−2τ²h}) z`` (``h = λ_t − λ_s``).  The predictor puts the Lagrange
    polynomial of the last ``predictor_order`` x̂_0 values into the integral
    (``adams_weights``); after the model call at the predicted point, the corrector redoes
    the step with the last ``corrector_order`` values, that one included, and the same
    noise (PEC: the call is reused by the next predictor; ``sa_solver_pece`` calls the model
    again at the corrected point).  ``τ = eta`` for noise levels in the middle of the
    log-SNR range (``tau_start``–``tau_end`` of the way from the prior side), 0 elsewhere
    (ComfyUI's and diffusers' default window); orders drop near a final step to t = 0.
    ``eta = 0``: an ODE method of order ``min(predictor_order + 1, corrector_order)``.
    """

    pece = False

    def __init__(
        self,
        eta: float = 1.0,
        s_noise: float = 1.0,
        predictor_order: int = 3,
        corrector_order: int = 4,
        tau_start: float = 0.2,
        tau_end: float = 0.8,
    ):
        super().__init__(eta, s_noise)
        for name, value in (
            ("predictor_order", predictor_order),
            ("corrector_order", corrector_order),
        ):
            if value not in (1, 2, 3, 4):
                raise ArgumentError(f"{name} must be 1, 2, 3 or 4, got {value!r}")
        if not 0.0 <= tau_start <= tau_end <= 1.0:
            raise ArgumentError(
                f"need 0 <= tau_start <= tau_end <= 1, got {tau_start!r} and {tau_end!r}"
            )
        self.predictor_order, self.corrector_order = predictor_order, corrector_order
        self.tau_start, self.tau_end = float(tau_start), float(tau_end)

    @property
    def order(self) -> float:
        deterministic = min(self.predictor_order + 1, self.corrector_order)
        return 1.0 if self.stochastic else float(deterministic)

    @property
    def nfe_per_step(self) -> int:
        return 2 if self.pece else 1

    def expected_nfe(self, grid):
        steps = len(grid) - 1
        return 2 * steps - 1 if self.pece else steps

    def init(self, process, grid, x, noise):
        lams = [process.at(t).log_snr for t in grid]
        lo, hi = lams[0], next(lam for lam in reversed(lams) if math.isfinite(lam))
        window = (lo + self.tau_start * (hi - lo), lo + self.tau_end * (hi - lo))
        return {"grid": grid, "index": {t: i for i, t in enumerate(grid)}, "window": window,
                "history": [], "base": None}  # fmt: skip

    def _tau(self, lam: float, window) -> float:
        return self.eta if window[0] <= lam <= window[1] else 0.0

    def step(self, process, t0, t1, x, state, noise):
        grid, i = state["grid"], state["index"][t0]
        c0 = process.at(t0)
        history = [*state["history"], (c0.log_snr, process.denoise(x, t0))][-4:]
        last = len(grid) - 1
        to_zero = grid[-1] == 0.0
        base = state["base"]
        corrector = 0 if i == 0 or (t1 == 0.0 and not self.pece) else self.corrector_order
        if to_zero:
            corrector = min(corrector, last - i + 1)
        if corrector and base is not None:  # correct x at t0 with the new value included
            x_prev, t_prev, tau, ksi = base
            x = _adams_step(process, x_prev, t_prev, t0, history[-corrector:], tau)
            if ksi is not None:
                x = x.add_(ksi)
            if self.pece:
                history[-1] = (c0.log_snr, process.denoise(x, t0))
        if t1 == 0.0:
            return history[-1][1], state
        c1 = process.at(t1)
        predictor = min(self.predictor_order, len(history))
        if to_zero:
            predictor = max(min(predictor, last - i - 1), 1)
        tau = self._tau(c1.log_snr, state["window"])
        x_new = _adams_step(process, x, t0, t1, history[-predictor:], tau)
        h = c1.log_snr - c0.log_snr
        ksi = None
        if tau > 0 and self.s_noise > 0:
            std = c1.sigma * math.sqrt(-math.expm1(-2 * tau**2 * h)) * self.s_noise
            ksi = noise(x, t0, t1) * std
            x_new = x_new.add_(ksi)
        return x_new, {**state, "history": history, "base": (x, t0, tau, ksi)}


@register_solver(
    "sa_solver_pece",
    kind="sde",
    order=1.0,
    nfe_per_step=2,
    stochastic=True,
    reference="Xue et al. 2023, SA-Solver (NeurIPS), PECE mode; ComfyUI sample_sa_solver_pece",
)
class SASolverPECE(SASolver):
    """SA-Solver in PECE mode: the model is called again at each corrected point (its value
    replaces the predicted one in the history).  2 NFE per step (1 on the first)."""

    pece = True
