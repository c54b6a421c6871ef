"""Adaptive Runge–Kutta on the PF-ODE through ``scipy.integrate.solve_ivp``."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from scipy.integrate import solve_ivp

from .base import NonFiniteError, Solver
from .registry import register_solver


class ScipyIVP(Solver):
    """Integrates the whole batch as one vector in float64 with error control.

    The method chooses its own steps, so ``expected_nfe`` is ``None`` and it
    overrides ``integrate``; the observer sees the state at every grid time
    (read off the dense solution).  The state crosses to the host (NumPy) at
    every evaluation: this is the reference method, not the fast one.  A grid
    ending at t = 0 is solved to its last positive time and finished with the
    Tweedie step (1 NFE).
    """

    method: ClassVar[str]

    def __init__(self, rtol: float = 1e-5, atol: float = 1e-5):
        floor = 100 * np.finfo(np.float64).eps  # what scipy can honour
        if not (floor <= rtol <= 0.1 and 0 < atol < math.inf):
            raise ValueError(
                f"rtol must lie in [{floor:.3g}, 0.1] and atol be positive and finite, "
                f"got rtol={rtol}, atol={atol}"
            )
        self.rtol, self.atol = float(rtol), float(atol)

    def expected_nfe(self, grid):
        return None

    def integrate(self, process, grid, x, noise, observe):
        t_end = grid[-1] if grid[-1] > 0 else grid[-2]
        inner = [t for t in grid[1:] if t != 0.0 or grid[-1] != 0.0]

        def velocity(t: float, y: np.ndarray) -> np.ndarray:
            xt = torch.from_numpy(y).reshape(x.shape).to(device=x.device, dtype=x.dtype)
            v = process.velocity(xt, float(t)).detach().to("cpu", torch.float64).numpy().ravel()
            if not np.isfinite(v).all():  # scipy would shrink its step until it gives up
                raise NonFiniteError(
                    f"solver {self.info.name!r}: the PF-ODE velocity is not finite at "
                    f"t={float(t):.6g}; check the model"
                )
            return v

        y0 = x.detach().to("cpu", torch.float64).numpy().ravel()
        sol = solve_ivp(
            velocity,
            (grid[0], t_end),
            y0,
            method=self.method,
            rtol=self.rtol,
            atol=self.atol,
            t_eval=inner,
        )
        if not sol.success:
            raise RuntimeError(f"solver {self.info.name!r} failed: {sol.message}")
        states = torch.from_numpy(sol.y.T.copy()).reshape(-1, *x.shape).to(x)
        for i, state in enumerate(states):
            observe(i, grid[i], grid[i + 1], state)
        out = states[-1]
        if grid[-1] == 0.0:
            out = process.denoise(out, t_end)
            observe(len(grid) - 2, t_end, 0.0, out)
        return out


@register_solver(
    "rk45",
    aliases=("dopri5",),
    kind="ode",
    order=5.0,
    nfe_per_step=6,
    stochastic=False,
    adaptive=True,
    batch_invariant=False,  # one error norm over the whole batch
    reference="Dormand & Prince 1980 (scipy RK45)",
)
class RK45(ScipyIVP):
    """Adaptive Dormand–Prince 5(4) on the PF-ODE (scipy), rtol/atol error control."""

    method = "RK45"


@register_solver(
    "dop853",
    kind="ode",
    order=8.0,
    nfe_per_step=12,
    stochastic=False,
    adaptive=True,
    batch_invariant=False,  # one error norm over the whole batch
    reference="Hairer, Nørsett & Wanner (scipy DOP853)",
)
class DOP853(ScipyIVP):
    """Adaptive Dormand–Prince 8(5,3) on the PF-ODE (scipy): the tight reference."""

    method = "DOP853"
