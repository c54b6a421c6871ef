"""The one loop: integrate a solver over a grid under its step-size controller.

Every solve (sampling, likelihoods, tuning) runs here.  A fixed-grid solver steps each
interval of each of its ``legs`` (restart sampling re-noises between legs).  An adaptive
solver moves every sample from grid time to grid time with its own step sizes: each
attempt evaluates only the rows still short of the next grid time, and the controller
accepts or rejects each row's step.  The row selection is the one host read per attempt;
a sample whose error is not finite or whose step vanishes drops out and the loop stops
with a sentence at the end of the grid interval.  ``observe(i, t0, t1, x)`` sees the
state at every grid time; ``after_step(t0, t1, x)``, when given, replaces the state after
each fixed-grid step (a measurement's replacement or correction: inverse problems).  A
grid ending at ``t = 0`` is solved adaptively to its last positive time and finished with
the Tweedie step (1 NFE).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import torch
from torch import Tensor

from .errors import ArgumentError, NonFiniteError
from .noise import NoiseSource
from .reverse import ReverseProcess
from .solvers.base import AdaptiveSolver, Leg, Observer, Solver

__all__ = ["StepHook", "integrate"]

StepHook = Callable[[float, float, Tensor], Tensor]  # (t0, t1, x after the step) -> new x


def integrate(
    solver: Solver,
    process: ReverseProcess,
    grid: list[float],
    x: Tensor,
    noise: NoiseSource,
    observe: Observer,
    after_step: StepHook | None = None,
) -> Tensor:
    """Integrate ``x`` from ``grid[0]`` through ``grid``; returns the end state."""
    if solver.adaptive:
        if after_step is not None:
            raise ArgumentError(
                f"{solver.name!r} chooses its own steps; a method that corrects the state "
                "after each step needs a fixed-grid solver"
            )
        return _AdaptiveRun(solver, process, grid, x).run(observe)
    end = grid[0]
    for leg in solver.legs(process, grid):
        if leg.renoise:
            y = torch.add(x / process.at(end).alpha, noise.fresh(x), alpha=leg.renoise)
            x = y * process.at(leg.times[0]).alpha
        x = _steps(solver, process, leg, x, noise, observe, after_step)
        end = leg.times[-1]
    return x


def _steps(
    solver: Solver,
    process: ReverseProcess,
    leg: Leg,
    x: Tensor,
    noise: NoiseSource,
    observe: Observer,
    after_step: StepHook | None = None,
) -> Tensor:
    state = solver.init(process, leg.times, x, noise) if leg.plan is None else leg.plan
    for i, (t0, t1) in enumerate(pairwise(leg.times)):
        x, state = solver.step(process, t0, t1, x, state, noise)
        if after_step is not None:
            x = after_step(t0, t1, x)
        if leg.first_index is not None:
            observe(leg.first_index + i, t0, t1, x)
    return x


_NOT_FINITE, _VANISHED = 1, 2


class _AdaptiveRun:
    """Per-sample state of one adaptive solve: coordinate ``s``, step size ``|h|``, ``y``,
    the solver's state, the controller's history and why a sample stopped, if it did."""

    def __init__(self, solver: AdaptiveSolver, process, grid: list[float], x: Tensor):
        self.solver, self.process, self.grid = solver, process, grid
        self.controller = controller = solver.controller
        self.stops = [t for t in grid if t > 0.0]
        self.to_zero = len(self.stops) < len(grid)
        least = solver.setup_nfe + (len(self.stops) - 1) * solver.nfe_per_step + self.to_zero
        if controller.max_nfe and controller.max_nfe < least:
            raise ArgumentError(
                f"max_nfe={controller.max_nfe} is below the {least} evaluations needed to "
                f"reach the {len(self.stops) - 1} grid times (order {solver.order:g}) of this grid"
            )
        self.coords = [solver.coordinate(process, t) for t in self.stops]
        self.direction = 1.0 if self.coords[-1] > self.coords[0] else -1.0
        batch, device = x.shape[0], x.device
        self.s = torch.full((batch,), self.coords[0], dtype=torch.float64, device=device)
        self.y = solver.enter(process, self.stops[0], x)
        controller.check_dtype(self.y.dtype)
        span = abs(self.coords[-1] - self.coords[0])
        self.h, self.state = solver.start(process, self.y, self.s, self.direction, span)
        self.history = controller.init(batch, device)
        self.failure = torch.zeros(batch, dtype=torch.int8, device=device)
        self.failed_at = torch.zeros_like(self.s)

    def run(self, observe: Observer) -> Tensor:
        solver, process, grid = self.solver, self.process, self.grid
        for i, target in enumerate(self.coords[1:]):
            reserve = (len(self.coords) - 2 - i) * solver.nfe_per_step + self.to_zero
            while self._attempt(target, reserve):
                pass
            self._raise_if_failed()
            observe(i, grid[i], grid[i + 1], solver.leave(process, self.stops[i + 1], self.y))
        out = solver.leave(process, self.stops[-1], self.y)
        if self.to_zero:
            out = process.denoise(out, self.stops[-1])
            observe(len(grid) - 2, self.stops[-1], 0.0, out)
        return out

    def _attempt(self, target: float, reserve: int) -> bool:
        """One attempted step of every sample short of ``target``; ``False`` when none is."""
        solver, direction = self.solver, self.direction
        short = (target - self.s) * direction > solver.coordinate_tolerance
        rows = (short & (self.failure == 0)).nonzero().squeeze(1)  # the one sync per attempt
        if rows.numel() == 0:
            return False
        every = rows.numel() == self.s.numel()
        if every:  # no gathering and scattering while every sample moves
            rows = slice(None)
        s = self.s[rows]
        cap = self.controller.max_nfe
        forced = bool(cap) and self.process.nfe + 2 * solver.nfe_per_step + reserve > cap
        if forced:
            s_next = torch.full_like(s, target)
        else:
            step = s + direction * self.h[rows]
            s_next = step.clamp(max=target) if direction > 0 else step.clamp(min=target)
        state = {k: v[rows] for k, v in self.state.items()}
        y_new, error, state_new = solver.attempt(self.process, self.y[rows], s, s_next, rows, state)
        control = self.controller
        accept, factor, history = control.adapt(self.history[rows], error, solver.error_order)
        taken = (s_next - s).abs() if control.resize_taken_step else self.h[rows]
        h = taken * factor
        failure = torch.where(
            ~error.isfinite(),
            _NOT_FINITE,
            torch.where(h < solver.min_step, _VANISHED, 0),
        ).to(torch.int8)
        accept = (accept | forced) & (failure == 0)
        self.h[rows] = h
        self.history[rows] = history
        self.failure[rows] = failure
        self.failed_at[rows] = s
        self.s[rows] = torch.where(accept, s_next, s)
        shape = (-1,) + (1,) * (self.y.ndim - 1)
        y = torch.where(accept.view(shape), y_new, self.y[rows])
        self.y = y if every else self.y.index_put((rows,), y)
        for key, value in state_new.items():
            keep = accept.view((-1,) + (1,) * (value.ndim - 1))
            self.state[key][rows] = torch.where(keep, value, self.state[key][rows])
        return True

    def _raise_if_failed(self) -> None:
        failed = self.failure.nonzero()
        if failed.numel() == 0:
            return
        i = int(failed[0, 0])
        t = float(self.solver.time_of(self.process, self.failed_at[i]))
        name = self.solver.name
        if int(self.failure[i]) == _NOT_FINITE:
            raise NonFiniteError(
                f"{name}: the error estimate of the step from t = {t:.4g} is not finite (the "
                "model returned inf or NaN); check the model there"
            )
        raise NonFiniteError(
            f"{name}: the step size vanished at t = {t:.4g}; rtol={self.controller.rtol:g} and "
            f"atol={self.controller.atol:g} are too tight for this model"
        )
