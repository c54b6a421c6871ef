"""DEIS: the exponential integrator with ε̂ extrapolated by a polynomial in log σ̃."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .registry import register_solver
from .scaled_multistep import ScaledMultistep


def log_rho_weights(rhos: list[float], rho_next: float) -> list[float]:
    """Weights with ``∫_{ρ_0}^{ρ_next} ε(ρ) dρ = Σ_j w_j ε_j`` when ε is a polynomial of
    degree < k in ``u = log ρ`` through the ``k`` nodes ``rhos`` (newest first).

    ``w_j = ∫ ℓ_j(u) e^u du`` over ``[log ρ_0, log ρ_next]`` for the Lagrange basis
    ``ℓ_j``, exactly: an antiderivative of ``p(u) e^u`` is ``e^u Σ_m (−1)^m p^{(m)}(u)``.
    """
    u = np.log(np.asarray(rhos, dtype=np.float64))
    a, b = u[0], math.log(rho_next)
    weights = []
    for j in range(len(u)):
        others = np.delete(u, j)
        basis = np.poly1d(others, r=True) / np.prod(u[j] - others)

        def antiderivative(v: float, p: np.poly1d = basis) -> float:
            total, term, sign = 0.0, p, 1.0
            for _ in range(p.order + 1):
                total += sign * term(v)
                term, sign = term.deriv(), -sign
            return math.exp(v) * total

        weights.append(antiderivative(b) - antiderivative(a))
    return weights


@register_solver(
    "deis",
    kind="ode",
    order=3.0,
    nfe_per_step=1,
    stochastic=False,
    reference="Zhang & Chen 2023, DEIS (ρAB in log ρ, as diffusers' DEISMultistepScheduler)",
)
class DEIS(ScaledMultistep):
    """DEIS of ``order`` 1–3: ``y_s = y_t + Σ_j w_j ε̂_j`` in ``y = x/α``, ``ρ = σ/α``.

    The PF-ODE reads ``dy/dρ = ε̂`` exactly; DEIS extrapolates ε̂ from the last ``order``
    steps by a polynomial in ``log ρ`` and integrates it over ``[ρ_t, ρ_s]`` in closed form
    (``log_rho_weights``).  Order 1 is DDIM.  1 NFE per step; a step to t = 0 returns x̂_0.
    """

    max_order = 3
    log_nodes = True
    weights = staticmethod(log_rho_weights)

    def __init__(
        self,
        order: int = 3,
        afs: bool = False,
        lower_order_final: bool = False,
        corrections: Sequence[Sequence[float]] | None = None,
    ):
        super().__init__(order, afs, lower_order_final, corrections)
