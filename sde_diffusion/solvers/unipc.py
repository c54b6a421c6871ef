"""UniPC: multistep predictor (UniP) with a free corrector (UniC), data prediction."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ArgumentError
from .base import Solver
from .registry import register_solver


def unipc_weights(ratios: list[float], h: float, variant: str) -> tuple[list[float], float]:
    """Weights ``ρ`` and scale ``B(h)`` of a UniPC update with the given node ratios.

    With ``z = −h`` the ``k = len(ratios)`` weights solve
    ``Σ_j ρ_j r_j^{i−1} = i! z φ_{i+1}(z) / B(h)`` for ``i = 1..k``, where
    ``φ_{i+1}(z) = (φ_i(z) − 1/i!)/z``, ``φ_1(z) = (e^z − 1)/z`` and
    ``B(h) = e^{−h} − 1`` ("bh2") or ``−h`` ("bh1").  A single node takes
    ``ρ = 1/2``, the paper's choice, which keeps order 2 for either ``B``.
    """
    z = -h
    scale = math.expm1(z) if variant == "bh2" else z
    if len(ratios) == 1:
        return [0.5], scale
    psi, factorial, rhs = math.expm1(z) / z - 1, 1.0, []  # psi_i = z φ_{i+1}(z)
    for i in range(1, len(ratios) + 1):
        rhs.append(psi * factorial / scale)
        factorial *= i + 1
        psi = psi / z - 1 / factorial
    powers = np.arange(len(ratios))[:, None]
    return np.linalg.solve(np.asarray(ratios)[None, :] ** powers, rhs).tolist(), scale


@register_solver(
    "unipc",
    aliases=("uni_pc_bh2",),
    kind="ode",
    order=3.0,
    nfe_per_step=1,
    stochastic=False,
    reference="Zhao et al. 2023, UniPC, alg. 1 and 2 (data prediction, B(h) = e^{-h} - 1)",
)
class UniPC(Solver):
    """UniPC on the PF-ODE in log-SNR λ: a UniP predictor and a UniC corrector, variable steps.

    A step ``t → s`` with ``h = λ_s − λ_t`` and the last ``k − 1`` denoised
    values at ratios ``r_j = (λ_j − λ_t)/h`` predicts
    ``x_s = (σ_s/σ_t) x − α_s (e^{−h} − 1) x̂_0 − α_s B(h) Σ_j ρ_j D_j``,
    ``D_j = (x̂_0^{(j)} − x̂_0)/r_j`` (``unipc_weights``).  The next step first
    evaluates ``x̂_0`` at the predicted ``x_s``, then repeats the update with that
    value as one more node (``r = 1``): the corrected ``x_s`` costs no evaluation,
    and the evaluation at the predicted point is reused as the next step's
    history.  Predictor order ``order`` (1-3), corrector one higher: order
    ``order + 1`` with ``corrector=True``.  A step to t = 0 returns ``x̂_0``.
    """

    def __init__(self, order: int = 2, corrector: bool = True, variant: str = "bh2"):
        if order not in (1, 2, 3):
            raise ArgumentError(f"order must be 1, 2 or 3, got {order!r}")
        if variant not in ("bh1", "bh2"):
            raise ArgumentError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
        self.method_order, self.corrector, self.variant = int(order), bool(corrector), variant

    def options(self):
        return {"order": self.method_order, "corrector": self.corrector, "variant": self.variant}

    @property
    def order(self) -> float:
        return float(self.method_order + self.corrector)

    uses = frozenset({"denoise"})

    def _update(self, process, x, t0, t1, x0, lam0, history, x0_new=None):
        """UniP (``x0_new is None``) or UniC step from ``(x, t0)`` to ``t1``."""
        c0, c1 = process.at(t0), process.at(t1)
        h = c1.log_snr - lam0
        ratios = [(lam - lam0) / h for _, lam in history]
        diffs = [(old - x0) / r for (old, _), r in zip(history, ratios, strict=True)]
        if x0_new is not None:
            ratios, diffs = [*ratios, 1.0], [*diffs, x0_new - x0]
        x1 = torch.add(x * (c1.sigma / c0.sigma), x0, alpha=-c1.alpha * math.expm1(-h))
        if diffs:
            weights, scale = unipc_weights(ratios, h, self.variant)
            for w, d in zip(weights, diffs, strict=True):
                x1 = torch.add(x1, d, alpha=-c1.alpha * scale * w)
        return x1

    def step(self, process, t0, t1, x, state, noise):
        x0 = process.denoise(x, t0)
        history = []  # (x̂_0, λ) of earlier points, newest first
        if state is not None:
            x_prev, t_prev, x0_prev, lam_prev, older = state
            history = [(x0_prev, lam_prev), *older]
            if self.corrector:
                x = self._update(process, x_prev, t_prev, t0, x0_prev, lam_prev, older, x0)
        if t1 == 0.0:
            return x0, state
        lam0 = process.at(t0).log_snr
        used = history[: self.method_order - 1]
        x1 = self._update(process, x, t0, t1, x0, lam0, used)
        return x1, (x, t0, x0, lam0, used)


@register_solver(
    "uni_pc",
    kind="ode",
    order=3.0,
    nfe_per_step=1,
    stochastic=False,
    reference="Zhao et al. 2023, UniPC with B(h) = h (bh1); ComfyUI uni_pc",
)
class UniPCBh1(UniPC):
    """UniPC with ``B(h) = h`` ("bh1", ComfyUI's ``uni_pc``); ``unipc`` (alias
    ``uni_pc_bh2``) has ``B(h) = e^{h} − 1``, diffusers' default."""

    def __init__(self, order: int = 2, corrector: bool = True, variant: str = "bh1"):
        super().__init__(order, corrector, variant)
