"""Manifold-constrained gradients, MCG (Chung, Sim, Ryu & Ye 2022, Algorithm 1).

DPS's gradient step followed by replacement: after each solver step from ``x_i``, the
state moves by ``−ζ' ∇_{x_i} ‖y − A x̂_0(x_i)‖`` (the gradient keeps the update on the
data manifold, the paper's point), then its measured part is replaced by a fresh draw of
the forward marginal, ``α_t ȳ + σ_t z`` (as :mod:`.replacement`).  The gradient costs a
backward pass at the step's first model call; DDPM (``ddim``, ``η = 1``) by default; any
fixed-grid solver runs it.  The paper's step is on ``‖·‖²`` with a weight; we use DPS's
normalised step so that ``ζ'`` means the same in both.
"""

from __future__ import annotations

from torch import Tensor

from ..loop import StepHook
from .dps import DPS, DataGradient
from .replacement import replacer

__all__ = ["MCG"]


class MCG(DPS):
    """A DPS step, then replacement, after every solver step (see the module)."""

    name = "mcg"
    reference = "Chung, Sim, Ryu & Ye 2022, Algorithm 1"
    needs_svd = True
    through_decoder = False

    def hook(self, guided: DataGradient, sde, obs, x_T, generator) -> StepHook:
        """What follows each solver step: DPS's gradient step, then replacement."""
        replace = replacer(sde, obs, x_T, generator)

        def after_step(t0: float, t1: float, x: Tensor) -> Tensor:
            return replace(t0, t1, x - guided.take())

        return after_step
