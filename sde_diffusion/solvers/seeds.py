"""SEEDS-2 and SEEDS-3: stochastic explicit exponential derivative-free solvers."""

from __future__ import annotations

import math
from itertools import pairwise

import torch

from ..errors import ArgumentError
from .registry import register_solver
from .stochastic import EtaSolver


def ei_phi_2(z: float) -> float:
    """``z φ_2(z) = (e^z − 1 − z)/z``."""
    return (math.expm1(z) - z) / z


class _Stages:
    """The stage times of every step, at fractions ``r`` of its log-SNR way (``r = 1``: the
    step's end itself, not its round-off image through the log-SNR inverse)."""

    def __init__(self, process, grid, fractions):
        steps = [(t0, t1) for t0, t1 in pairwise(grid) if t1 != 0.0]
        inner = [r for r in fractions if r != 1.0]
        lams = [
            process.at(t0).log_snr + r * (process.at(t1).log_snr - process.at(t0).log_snr)
            for t0, t1 in steps
            for r in inner
        ]
        found = iter(process.times_at_log_snr(lams))
        self.at = {t0: [t1 if r == 1.0 else next(found) for r in fractions] for t0, t1 in steps}


class _Seeds(EtaSolver):
    """Shared: the exponential stage ``x_r`` from ``x`` at λ_t with its noise chained."""

    fractions: tuple[float, ...] = ()

    def init(self, process, grid, x, noise):
        return _Stages(process, grid, self.fractions).at

    def stage(self, process, t0, t_r, x, terms):
        """``x_r = (σ_r/σ_t) e^{−rhη} x − α_r Σ w x̂_0`` and ``r h``, for ``terms = [(w, x̂_0)]``."""
        c0, cr = process.at(t0), process.at(t_r)
        h = cr.log_snr - c0.log_snr  # r·h of the step
        out = x * (cr.sigma / c0.sigma * math.exp(-h * self.eta))
        for weight, x0 in terms:
            out = out.add_(x0, alpha=-cr.alpha * weight)
        return out, h

    def noise_chain(self, noise, x, t_from, t_to, h_from, h_to, carried):
        """The chained stage noise ``ξ' = e^{−ηΔ} ξ + √(1 − e^{−2ηΔ}) z``, ``Δ = h_to − h_from``."""
        if t_from == t_to:  # a stage at the step's end (r = 1): nothing left to draw
            return carried
        seg = (h_to - h_from) * self.eta
        z = noise(x, t_from, t_to)
        fresh = math.sqrt(-math.expm1(-2 * seg))
        return z * fresh if carried is None else torch.add(carried * math.exp(-seg), z, alpha=fresh)

    def advance(self, process, t0, t_from, t_to, x, terms, noise, h_from, xi):
        """The stage at ``t_to`` from ``x`` at ``t0`` (``stage``) plus, when stochastic, the
        chained noise of ``t_from → t_to``: ``(x_to, h_to, ξ_to)``."""
        out, h = self.stage(process, t0, t_to, x, terms)
        if self.stochastic:
            xi = self.noise_chain(noise, x, t_from, t_to, h_from, h, xi)
            out = out.add_(xi, alpha=process.at(t_to).sigma * self.s_noise)
        return out, h, xi


@register_solver(
    "seeds_2",
    kind="sde",
    order=1.0,
    nfe_per_step=2,
    stochastic=True,
    reference="Gonzalez et al. 2023, SEEDS (NeurIPS), VP data prediction, stage 2; ComfyUI",
)
class SEEDS2(_Seeds):
    """SEEDS-2 in λ = log(α/σ), ``h = λ_s − λ_t``, ``h_η = (1 + η) h``, stage at ``r h``:

    ``u = (σ_r/σ_t) e^{−rhη} x − α_r (e^{−r h_η} − 1) x̂_0 + σ_r √(1 − e^{−2rhη}) ξ_1``,
    ``x_s = (σ_s/σ_t) e^{−hη} x − α_s (e^{−h_η} − 1) D + σ_s (e^{−(1−r)hη} ξ_1-part + …) ξ``
    with ``D = x̂_0 + (x̂_0(u) − x̂_0)/(2r)`` (``solver_type="phi_1"``) or the φ_2 weights
    (``"phi_2"``); the noise of the two pieces is chained so the step's noise is one path's.
    ``eta = 0`` is a deterministic exponential integrator of order 2.  2 NFE per step.
    """

    def __init__(
        self, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5, solver_type: str = "phi_1"
    ):
        super().__init__(eta, s_noise)
        if not 0.0 < r <= 1.0:
            raise ArgumentError(f"r must lie in (0, 1], got {r!r}")
        if solver_type not in ("phi_1", "phi_2"):
            raise ArgumentError(f"solver_type must be 'phi_1' or 'phi_2', got {solver_type!r}")
        self.r, self.solver_type = float(r), solver_type
        self.fractions = (self.r,)

    def options(self):
        return {"eta": self.eta, "s_noise": self.s_noise, "r": self.r,
                "solver_type": self.solver_type}  # fmt: skip

    @property
    def order(self) -> float:
        return 1.0 if self.stochastic else 2.0

    def step(self, process, t0, t1, x, state, noise):
        x0 = process.denoise(x, t0)
        if t1 == 0.0:
            return x0, state
        (t_r,) = state[t0]
        r = self.r
        h = process.at(t1).log_snr - process.at(t0).log_snr
        h_eta = h * (1 + self.eta)
        first = [(math.expm1(-r * h_eta), x0)]
        u, h_r, xi = self.advance(process, t0, t0, t_r, x, first, noise, 0.0, None)
        x0_r = process.denoise(u, t_r)
        if self.solver_type == "phi_1":
            terms = [(math.expm1(-h_eta), torch.lerp(x0, x0_r, 1 / (2 * r)))]
        else:
            b2 = ei_phi_2(-h_eta) / r
            terms = [(math.expm1(-h_eta) - b2, x0), (b2, x0_r)]
        x_new, _, _ = self.advance(process, t0, t_r, t1, x, terms, noise, h_r, xi)
        return x_new, state


@register_solver(
    "seeds_3",
    kind="sde",
    order=1.0,
    nfe_per_step=3,
    stochastic=True,
    reference="Gonzalez et al. 2023, SEEDS (NeurIPS), VP data prediction, stage 3; ComfyUI",
)
class SEEDS3(_Seeds):
    """SEEDS-3: stages at ``r_1 h`` and ``r_2 h`` (1/3, 2/3), data prediction in λ:

    ``u_1`` as in SEEDS-2 at ``r_1``; ``u_2 = (σ_2/σ_t) e^{−r_2 hη} x − α_2 (a_1 x̂_0 + a_2
    x̂_0(u_1))`` with ``a_2 = (r_2/r_1) z φ_2(z)``, ``z = −r_2 h_η``, ``a_1 = e^z − 1 − a_2``;
    ``x_s = (σ_s/σ_t) e^{−hη} x − α_s (b_1 x̂_0 + b_3 x̂_0(u_2))``, ``b_3 = (−h_η) φ_2(−h_η)/r_2``,
    ``b_1 = e^{−h_η} − 1 − b_3``; the stage noises chained along one path.  ``eta = 0`` is a
    deterministic exponential integrator of order 3.  3 NFE per step.
    """

    fractions = (1 / 3, 2 / 3)

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0):
        super().__init__(eta, s_noise)

    @property
    def order(self) -> float:
        return 1.0 if self.stochastic else 3.0

    def step(self, process, t0, t1, x, state, noise):
        x0 = process.denoise(x, t0)
        if t1 == 0.0:
            return x0, state
        t_1, t_2 = state[t0]
        r1, r2 = self.fractions
        h = process.at(t1).log_snr - process.at(t0).log_snr
        h_eta = h * (1 + self.eta)
        first = [(math.expm1(-r1 * h_eta), x0)]
        u1, h1, xi = self.advance(process, t0, t0, t_1, x, first, noise, 0.0, None)
        x0_1 = process.denoise(u1, t_1)
        a2 = r2 / r1 * ei_phi_2(-r2 * h_eta)
        second = [(math.expm1(-r2 * h_eta) - a2, x0), (a2, x0_1)]
        u2, h2, xi = self.advance(process, t0, t_1, t_2, x, second, noise, h1, xi)
        x0_2 = process.denoise(u2, t_2)
        b3 = ei_phi_2(-h_eta) / r2
        last = [(math.expm1(-h_eta) - b3, x0), (b3, x0_2)]
        x_new, _, _ = self.advance(process, t0, t_2, t1, x, last, noise, h2, xi)
        return x_new, state


@register_solver(
    "exp_heun_2_x0",
    kind="ode",
    order=2.0,
    nfe_per_step=2,
    stochastic=False,
    reference="ComfyUI sample_exp_heun_2_x0: SEEDS-2 at r = 1, φ_2 weights, η = 0",
)
class ExpHeun2(SEEDS2):
    """The exponential Heun method in data prediction and log-SNR: ``seeds_2`` with the
    stage at the step's end (``r = 1``) and φ_2 weights, no noise.  2 NFE per step."""

    def __init__(self, eta: float = 0.0, s_noise: float = 1.0, r: float = 1.0,
                 solver_type: str = "phi_2"):  # fmt: skip
        super().__init__(eta, s_noise, r, solver_type)


@register_solver(
    "exp_heun_2_x0_sde",
    kind="sde",
    order=1.0,
    nfe_per_step=2,
    stochastic=True,
    reference="ComfyUI sample_exp_heun_2_x0_sde: SEEDS-2 at r = 1, φ_2 weights, η = 1",
)
class ExpHeun2SDE(SEEDS2):
    """``exp_heun_2_x0`` on the reverse SDE (``eta = 1``).  2 NFE per step."""

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, r: float = 1.0,
                 solver_type: str = "phi_2"):  # fmt: skip
        super().__init__(eta, s_noise, r, solver_type)
