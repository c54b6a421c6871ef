"""iPNDM: Adams–Bashforth in the noise level ρ = σ/α of the scaled PF-ODE, variable steps."""

from __future__ import annotations

from collections.abc import Sequence

from .lms import adams_bashforth_weights
from .registry import register_solver
from .scaled_multistep import ScaledMultistep


@register_solver(
    "ipndm",
    aliases=("ipndm_v",),
    kind="ode",
    order=4.0,
    nfe_per_step=1,
    stochastic=False,
    reference="Zhang & Chen 2023 (DEIS, iPNDM); Zhou et al. 2024 (iPNDM-v)",
)
class IPNDM(ScaledMultistep):
    """iPNDM in its variable-step form: Adams–Bashforth of ``order`` 1–4 on
    ``dy/dρ = ε̂`` with ``y = x/α``, ``ρ = σ/α``.

    ``y_s = y_t + Σ_j w_j ε̂_j`` over the last ``order`` noise predictions, ``w_j`` the
    integral over ``[ρ_t, ρ_s]`` of their Lagrange basis in ρ (the weights of ``lms``,
    taken in ρ rather than in the SDE's time; this is also ρAB-DEIS).  On the EDM
    formulation (α = 1, σ = t) it is ``lms``.  1 NFE per step; a step to t = 0 returns x̂_0.
    """

    max_order = 4
    log_nodes = False
    weights = staticmethod(adams_bashforth_weights)

    def __init__(
        self,
        order: int = 4,
        afs: bool = False,
        lower_order_final: bool = False,
        corrections: Sequence[Sequence[float]] | None = None,
    ):
        super().__init__(order, afs, lower_order_final, corrections)
