"""Multistep methods on the scaled PF-ODE ``dy/dρ = ε̂`` (``y = x/α``, ``ρ = σ/α``)."""

from __future__ import annotations

from typing import ClassVar

import torch

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
    ``lower_order_final`` lowers the order of the last steps to the steps left (the last
    is a DDIM step) on grids of fewer than 15 steps, as diffusers does: it steadies very
    short runs and leaves longer ones alone.
    """

    uses = frozenset({"eps"})
    max_order: ClassVar[int]

    def __init__(self, order: int, afs: bool = False, lower_order_final: bool = False):
        if order not in range(1, self.max_order + 1):
            raise ValueError(f"order must be 1 to {self.max_order}, got {order!r}")
        self.method_order, self.afs = int(order), bool(afs)
        self.lower_order_final = bool(lower_order_final)

    @staticmethod
    def weights(nodes: list[float], rho_next: float) -> list[float]:
        raise NotImplementedError

    def options(self):
        return {
            "order": self.method_order,
            "afs": self.afs,
            "lower_order_final": self.lower_order_final,
        }

    @property
    def order(self) -> float:
        return float(self.method_order)

    def expected_nfe(self, grid):
        return super().expected_nfe(grid) - (self.afs and len(grid) > 2)

    def init(self, process, grid, x, noise):
        rho = [process.at(t).sigma / process.at(t).alpha for t in grid]
        steps = len(grid) - 1
        final = self.lower_order_final and steps < 15
        orders = [
            min(self.method_order, i + 1, steps - i if final else steps) for i in range(steps)
        ]
        weights = [
            self.weights(rho[i + 1 - k : i + 1][::-1], r) if r else []
            for i, (k, r) in enumerate(zip(orders, rho[1:], strict=True))
        ]
        return 0, weights, []  # step index, weights per step, predictions newest first

    def step(self, process, t0, t1, x, state, noise):
        i, weights, history = state
        c0 = process.at(t0)
        y = x / c0.alpha
        if t1 == 0.0:
            return process.denoise(x, t0), (i + 1, weights, history)
        eps = y * (c0.alpha / c0.sigma) if self.afs and i == 0 else process.eps(x, t0)
        history = [eps, *history][: self.method_order]
        for w, e in zip(weights[i], history, strict=False):  # the step's order may be lower
            y = torch.add(y, e, alpha=w)
        return y * process.at(t1).alpha, (i + 1, weights, history)
