"""Linear multistep (Adams–Bashforth) with variable step sizes on the PF-ODE."""

from __future__ import annotations

import numpy as np
from numpy.polynomial import polynomial as P

from .base import Solver
from .registry import register_solver

STARTUPS = ("lower_order", "rk")

# explicit Runge–Kutta tableaus (c, A, b) of orders 2-4 for the exact-order start-up
_RK = {
    2: ([0.0, 1.0], [[], [1.0]], [0.5, 0.5]),
    3: ([0.0, 0.5, 1.0], [[], [0.5], [-1.0, 2.0]], [1 / 6, 2 / 3, 1 / 6]),
    4: (
        [0.0, 0.5, 0.5, 1.0],
        [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]],
        [1 / 6, 1 / 3, 1 / 3, 1 / 6],
    ),
}


def adams_bashforth_weights(times: list[float], t1: float) -> list[float]:
    """Weights ``w_j = int_{t_0}^{t_1} l_j(tau) d tau`` of the Lagrange basis on
    ``times`` (newest first, ``times[0] = t_0``): ``x_1 = x_0 + sum_j w_j d_j``.

    Computed in the scaled variable ``u = (tau - t_0) / (t_1 - t_0)`` on [0, 1].
    """
    h = t1 - times[0]
    nodes = [(tau - times[0]) / h for tau in times]
    weights = []
    for j, node in enumerate(nodes):
        others = [m for i, m in enumerate(nodes) if i != j]
        basis = (
            P.polyfromroots(others) / np.prod([node - m for m in others])
            if others
            else np.array([1.0])
        )
        antiderivative = P.polyint(basis)
        weights.append(h * float(P.polyval(1.0, antiderivative) - P.polyval(0.0, antiderivative)))
    return weights


@register_solver(
    "lms",
    aliases=("linear_multistep", "adams"),
    kind="ode",
    order=2.0,
    nfe_per_step=1,
    stochastic=False,
    reference="Hairer, Nørsett & Wanner, sec. III.5; Karras et al. 2022 (k-diffusion)",
)
class LinearMultistep(Solver):
    """Variable-step Adams–Bashforth of ``order`` 1-4 on the PF-ODE, 1 NFE per step.

    ``x_s = x_t + sum_j w_j v(x_{t_j}, t_j)`` over the last ``order`` velocities,
    ``w_j`` the integral of the Lagrange basis over ``[t, s]``.  Start-up:
    ``"lower_order"`` (default) uses the orders the history allows (global
    order ``min(order, 2)``, 1 NFE per step throughout); ``"rk"`` takes the
    first ``order - 1`` steps with an explicit Runge–Kutta method of ``order``
    (global order ``order``, ``order - 1`` extra NFE per start-up step).
    """

    def __init__(self, order: int = 4, startup: str = "lower_order"):
        if order not in (1, 2, 3, 4):
            raise ValueError(f"order must be 1, 2, 3 or 4, got {order!r}")
        if startup not in STARTUPS:
            raise ValueError(f"startup must be one of {STARTUPS}, got {startup!r}")
        self.method_order, self.startup = int(order), startup

    def options(self):
        return {"order": self.method_order, "startup": self.startup}

    @property
    def order(self) -> float:
        return float(self.method_order if self.startup == "rk" else min(self.method_order, 2))

    def _uses_rk(self, index: int, t1: float) -> bool:
        return (
            self.startup == "rk"
            and self.method_order > 1
            and index < self.method_order - 1
            and t1 != 0.0
        )

    def expected_nfe(self, grid):
        pairs = enumerate(grid[1:])
        return len(grid) - 1 + sum(self.method_order - 1 for i, t1 in pairs if self._uses_rk(i, t1))

    def init(self, process, grid, x, noise):
        return (0, [], [])  # step index, times (newest first), velocities

    def step(self, process, t0, t1, x, state, noise):
        index, times, velocities = state
        d0 = process.velocity(x, t0)
        times = [t0, *times][: self.method_order]
        velocities = [d0, *velocities][: self.method_order]
        if self._uses_rk(index, t1):
            x1 = self._runge_kutta(process, t0, t1, x, d0)
        else:
            weights = adams_bashforth_weights(times, t1)
            x1 = x + sum(w * d for w, d in zip(weights, velocities, strict=True))
        return x1, (index + 1, times, velocities)

    def _runge_kutta(self, process, t0, t1, x, d0):
        c, a, b = _RK[self.method_order]
        h = t1 - t0
        stages = [d0]
        for ci, ai in zip(c[1:], a[1:], strict=True):
            xi = x + h * sum(aij * k for aij, k in zip(ai, stages, strict=False))
            stages.append(process.velocity(xi, t0 + ci * h))
        return x + h * sum(bi * k for bi, k in zip(b, stages, strict=True))
