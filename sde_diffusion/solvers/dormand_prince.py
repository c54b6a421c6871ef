"""Adaptive Dormand–Prince Runge–Kutta on the PF-ODE, batched in torch, per-sample control."""

from __future__ import annotations

import functools
import math
from typing import ClassVar

import numpy as np
import scipy.integrate
import torch
from torch import Tensor

from ..controllers import PIDController
from ..errors import ArgumentError
from .base import AdaptiveSolver
from .registry import register_solver


class EmbeddedRungeKutta(AdaptiveSolver):
    """An explicit embedded Runge–Kutta pair with FSAL, the tableau read from scipy's class.

    A step of size ``h`` from ``(t, y)`` with ``k_0 = v(t, y)`` (kept from the last
    accepted step) takes ``k_i = v(t + c_i h, y + h Σ_j a_ij k_j)``,
    ``y_new = y + h Σ_i b_i k_i`` and ``k_S = v(t + h, y_new)``; the error estimate is
    ``h Σ_i e_i k_i`` scaled by ``atol + rtol·max(|y|, |y_new|)``, per sample.  The first
    step size is Hairer's (*Solving ODEs I*, sec. II.4, two evaluations), as scipy's.  The
    state is integrated in float64 whatever ``x``'s dtype (the model sees its own dtype),
    so this is the tight reference; unlike scipy's ``solve_ivp`` over the flattened batch,
    every sample has its own steps and error norm (batch-free) and nothing leaves the
    device but the controller's row selection.  A grid ending at ``t = 0`` is solved to
    its last positive time and finished with the Tweedie step (1 NFE).
    """

    tableau: ClassVar[type]  # a scipy.integrate.RungeKutta subclass
    error_weights: ClassVar[np.ndarray]  # e_i of the error estimate h Σ e_i k_i
    error_order: ClassVar[float]  # the estimate is O(h^error_order)
    setup_nfe = 2

    def __init__(self, rtol: float = 1e-5, atol: float = 1e-5, max_nfe: int = 0):
        floor = 100 * np.finfo(np.float64).eps
        if not (floor <= rtol <= 0.1 and 0 < atol < math.inf):
            raise ArgumentError(
                f"rtol must lie in [{floor:.3g}, 0.1] and atol be positive and finite, "
                f"got rtol={rtol}, atol={atol}"
            )
        if not (isinstance(max_nfe, int) and (max_nfe == 0 or max_nfe >= self.info.nfe_per_step)):
            raise ArgumentError(
                f"max_nfe must be 0 (no cap) or a whole number >= {self.info.nfe_per_step} "
                f"(one step), got {max_nfe!r}"
            )
        self.controller = PIDController(rtol=float(rtol), atol=float(atol), max_nfe=max_nfe)

    def options(self):
        c = self.controller
        return {"rtol": c.rtol, "atol": c.atol, "max_nfe": c.max_nfe}

    def enter(self, process, t, x):
        return x.to(torch.float64)

    def leave(self, process, t, y):
        return y.to(process.dtype)

    @staticmethod
    def _velocity(process, t: Tensor, y: Tensor, rows: Tensor) -> Tensor:
        return process.predict_rows("velocity", y.to(process.dtype), t, rows).to(y.dtype)

    def start(self, process, y, s, direction, span):
        rows = slice(None)
        f0 = self._velocity(process, s, y, rows)
        scale = self.controller.scale(y, y)
        d0, d1 = _rms(y / scale), _rms(f0 / scale)
        h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1).clamp(max=span)
        f1 = self._velocity(process, s + direction * h0, y + _col(direction * h0, y) * f0, rows)
        d2 = _rms((f1 - f0) / scale) / h0
        h1 = torch.where(
            (d1 <= 1e-15) & (d2 <= 1e-15),
            torch.clamp(h0 * 1e-3, min=1e-6),
            (0.01 / torch.maximum(d1, d2)) ** (1 / self.error_order),
        )
        return torch.minimum(torch.minimum(100 * h0, h1), torch.full_like(h0, span)), {"f": f0}

    def attempt(self, process, y, s, s_next, rows, state):
        tab = self.tableau
        n = tab.n_stages
        h = s_next - s
        hy = _col(h, y)
        k = y.new_empty((n + 1, *y.shape))
        k[0] = state["f"]
        a, b, e = _weights(type(self), y.dtype, y.device)
        for i in range(1, n):
            stage = y + hy * torch.tensordot(a[i, :i], k[:i], dims=1)
            k[i] = self._velocity(process, s + float(tab.C[i]) * h, stage, rows)
        y_new = y + hy * torch.tensordot(b[:n], k[:n], dims=1)
        k[n] = self._velocity(process, s_next, y_new, rows)
        error = self.controller.error(hy * torch.tensordot(e, k, dims=1), y, y_new)
        return y_new, error, {"f": k[n]}


@functools.lru_cache(maxsize=32)
def _weights(cls: type[EmbeddedRungeKutta], dtype: torch.dtype, device: torch.device):
    """The tableau's ``A``, ``B`` and error weights as tensors, made once per dtype and device
    (not copied to the device at every attempt)."""
    values = (cls.tableau.A, cls.tableau.B, cls.error_weights)
    return tuple(torch.as_tensor(v, dtype=dtype, device=device) for v in values)


def _rms(v: Tensor) -> Tensor:
    return v.flatten(1).pow(2).mean(1).sqrt()


def _col(v: Tensor, like: Tensor) -> Tensor:
    return v.to(like.dtype).view((-1,) + (1,) * (like.ndim - 1))


@register_solver(
    "rk45",
    aliases=("dopri5",),
    kind="ode",
    order=5.0,
    nfe_per_step=6,
    stochastic=False,
    adaptive=True,
    reference="Dormand & Prince 1980; Hairer, Nørsett & Wanner, Solving ODEs I (tableau: "
    "scipy.integrate.RK45)",
)
class RK45(EmbeddedRungeKutta):
    """Adaptive Dormand–Prince 5(4) on the PF-ODE, per-sample rtol/atol error control."""

    tableau = scipy.integrate.RK45
    error_weights = scipy.integrate.RK45.E
    error_order = 5.0


@register_solver(
    "dop853",
    kind="ode",
    order=8.0,
    nfe_per_step=12,
    stochastic=False,
    adaptive=True,
    reference="Hairer, Nørsett & Wanner, Solving ODEs I, sec. II.10 (tableau: "
    "scipy.integrate.DOP853)",
)
class DOP853(EmbeddedRungeKutta):
    """Adaptive Dormand–Prince 8(5) on the PF-ODE, per-sample error control: the tight
    reference.

    Each sample's error is the 5th-order embedded estimate alone (``error_order`` 6).
    Hairer's combined 5(3) estimate ``|h| ‖e₅‖² / √((‖e₅‖² + 0.01 ‖e₃‖²) D)``, made for one
    norm over a long vector, let a tail of single samples through (on the ring at
    rtol 1e-6: 66 of 1024 endpoints off by more than 1e-5, the worst by 1e-3); this
    estimate leaves none, at about 1.3x the evaluations.
    """

    tableau = scipy.integrate.DOP853
    error_weights = scipy.integrate.DOP853.E5
    error_order = 6.0
