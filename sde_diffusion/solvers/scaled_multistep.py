"""Multistep methods on the scaled PF-ODE ``dy/dρ = ε̂`` (``y = x/α``, ``ρ = σ/α``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ..errors import ArgumentError
from .base import Solver


class ScaledMultistep(Solver):
    """``y_s = y_t + Σ_j w_j ε̂_j`` over the last ``order`` noise predictions, with the
    weights ``weights(ρ_nodes, ρ_s)`` of a subclass (nodes newest first) computed for the
    whole grid in ``init``.  The first steps use the orders their history allows; a
    step to t = 0 returns x̂_0.  1 NFE per step.

    ``afs`` (analytical first step, Zhou et al. 2024) takes the first ε̂ as ``y/ρ``, its
    value for any data of bounded spread as ρ → ∞, instead of a model call: one NFE fewer,
    for an error that does not shrink with the step (about the data's spread over ρ_max),
    so it is for short runs.
    ``corrections`` (one row of ``order`` numbers per step that is not the final step to
    t = 0) adds ``(ρ_s − ρ_t) c_ij`` to the weights: fitted to a model with its grid by
    ``sd.tune_timesteps(..., fit_weights=True)``, after the learned multistep solvers of
    Shaul et al. 2024 and Frankel et al. 2025; entries past a step's history are unused.
    ``lower_order_final`` lowers the order of the last steps to the steps left (the last
    is a DDIM step) on grids of fewer than 15 steps, as diffusers does: it steadies very
    short runs and leaves longer ones alone.
    """

    uses = frozenset({"eps"})
    max_order: ClassVar[int]
    log_nodes: ClassVar[bool]
    """Whether ``weights`` interpolates ε̂ in ``log ρ`` (else in ρ): what
    ``quadrature_weights`` needs to give the same weights."""

    def __init__(
        self,
        order: int,
        afs: bool = False,
        lower_order_final: bool = False,
        corrections: Sequence[Sequence[float]] | None = None,
    ):
        if order not in range(1, self.max_order + 1):
            raise ArgumentError(f"order must be 1 to {self.max_order}, got {order!r}")
        self.method_order, self.afs = int(order), bool(afs)
        self.lower_order_final = bool(lower_order_final)
        self.corrections = None if corrections is None else _rows(corrections, self.method_order)

    @staticmethod
    def weights(nodes: list[float], rho_next: float) -> list[float]:
        raise NotImplementedError

    def options(self):
        return {
            "order": self.method_order,
            "afs": self.afs,
            "lower_order_final": self.lower_order_final,
            **({} if self.corrections is None else {"corrections": self.corrections}),
        }

    @property
    def order(self) -> float:
        return float(self.method_order)

    def expected_nfe(self, grid):
        return super().expected_nfe(grid) - (self.afs and len(grid) > 2)

    def step_orders(self, steps: int) -> list[int]:
        """The order of each of ``steps`` steps: what the history allows, lowered at the
        end with ``lower_order_final``."""
        final = self.lower_order_final and steps < 15
        return [min(self.method_order, i + 1, steps - i if final else steps) for i in range(steps)]

    def init(self, process, grid, x, noise):
        rho = [process.at(t).sigma / process.at(t).alpha for t in grid]
        steps = len(grid) - 1
        orders = self.step_orders(steps)
        weights = [
            self.weights(rho[i + 1 - k : i + 1][::-1], r) if r else []
            for i, (k, r) in enumerate(zip(orders, rho[1:], strict=True))
        ]
        if self.corrections is not None:
            updates = steps - (grid[-1] == 0.0)
            if len(self.corrections) != updates:
                raise ArgumentError(
                    f"the corrections have {len(self.corrections)} rows, one per step; this "
                    f"grid takes {updates} steps before t = 0 (use them with their own grid)"
                )
            weights = [
                [w + (rho[i + 1] - rho[i]) * c for w, c in zip(row, fix, strict=False)]
                for i, (row, fix) in enumerate(zip(weights, self.corrections, strict=False))
            ] + weights[updates:]
        return 0, weights, []  # step index, weights per step, predictions newest first

    def step(self, process, t0, t1, x, state, noise):
        i, weights, history = state
        c0 = process.at(t0)
        y = x / c0.alpha
        if t1 == 0.0:
            return process.denoise(x, t0), (i + 1, weights, history)
        first = self.afs and i == 0 and len(weights) > 1  # one step alone asks the model
        eps = y * (c0.alpha / c0.sigma) if first else process.eps(x, t0)
        y, history = self.advance(y, eps, history, weights[i])
        return y * process.at(t1).alpha, (i + 1, weights, history)

    def advance(
        self, y: Tensor, eps: Tensor, history: list[Tensor], weights: Sequence[float | Tensor]
    ) -> tuple[Tensor, list[Tensor]]:
        """The update ``y ← y + Σ_j w_j ε̂_j`` with ``eps`` the newest prediction, and the new
        history.  ``weights`` are numbers when sampling and tensors when the grid is fitted
        through the solver (``sd.tune_timesteps(method="gradient")``): one update for both."""
        history = [eps, *history][: self.method_order]
        for w, e in zip(weights, history, strict=False):  # the step's order may be lower
            y = torch.add(y, e, alpha=w) if isinstance(w, float) else y + w.to(y.dtype) * e
        return y, history


GAUSS_LEGENDRE = np.polynomial.legendre.leggauss(16)


def quadrature_weights(nodes: Tensor, rho_next: Tensor, log_nodes: bool) -> Tensor:
    """The weights of ``ScaledMultistep.weights`` as a differentiable function of the
    nodes (``(k,)``, newest first) and ``ρ_next``: ``w_j = ∫ ℓ_j dρ`` over ``[ρ_0, ρ_next]``
    for the Lagrange basis ``ℓ_j`` through the nodes in ``v = log ρ`` (``log_nodes``) or
    ``v = ρ``, by 16-point Gauss–Legendre in ``v`` (exact for polynomials of degree < 32;
    for ``e^v`` times one, to rounding on any interval a grid step spans)."""
    g, gw = (torch.tensor(a, dtype=nodes.dtype, device=nodes.device) for a in GAUSS_LEGENDRE)
    v = nodes.log() if log_nodes else nodes
    end = rho_next.log() if log_nodes else rho_next
    points = v[0] + (end - v[0]) * (g + 1) / 2
    measure = (end - v[0]) / 2 * gw * (points.exp() if log_nodes else 1.0)
    weights = []
    for j in range(len(v)):
        basis = torch.ones_like(points)
        for m in range(len(v)):
            if m != j:
                basis = basis * (points - v[m]) / (v[j] - v[m])
        weights.append((measure * basis).sum())
    return torch.stack(weights)


def _rows(corrections: Sequence[Sequence[float]], order: int) -> list[list[float]]:
    """``corrections`` as rows of ``order`` finite floats, or a clear ``ValueError``."""
    try:
        rows = [[float(c) for c in row] for row in corrections]
    except (TypeError, ValueError):
        raise ArgumentError("corrections must be rows of numbers, one row per step") from None
    if not rows or any(len(row) != order or not all(map(math.isfinite, row)) for row in rows):
        raise ArgumentError(f"corrections must be rows of {order} finite numbers, one per step")
    return rows
