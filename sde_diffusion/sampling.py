"""The one driver loop: ``solve`` (a grid and a start point) and ``sample``.

``solve`` validates the grid once, wraps the score function to count
evaluations and to check the first output's shape, dtype and device, runs the
solver's steps, tracks the first non-finite step on the device (one host read
at the end, none per step) and optionally appends a Tweedie denoising step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import torch
from torch import Tensor

from .noise import GeneratorNoise, NoiseSource
from .reverse import ProbabilityFlowODE, ReverseSDE, ScoreFn
from .sdes import SDE
from .solvers.base import Solver
from .solvers.registry import get_solver
from .timesteps import timesteps, validate_grid

__all__ = ["CountingScore", "NonFiniteError", "SampleResult", "StepInfo", "sample", "solve"]


class NonFiniteError(FloatingPointError):
    """The state became NaN or infinite during a solve."""


class ScoreShapeError(ValueError):
    """``score_fn`` returned something that does not match ``x``."""


class CountingScore:
    """Wraps ``score_fn``: counts calls (NFE) and checks the first output."""

    def __init__(self, score_fn: ScoreFn):
        self.score_fn = score_fn
        self.nfe = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        out = self.score_fn(x, t)
        if self.nfe == 0:
            _check_score_output(out, x)
        self.nfe += 1
        return out


def _check_score_output(out: Any, x: Tensor) -> None:
    if not isinstance(out, Tensor):
        raise ScoreShapeError(f"score_fn must return a tensor, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ScoreShapeError(
            f"score_fn returned shape {tuple(out.shape)} for x of shape "
            f"{tuple(x.shape)}; it must return the score with x's shape"
        )
    if out.dtype != x.dtype or out.device != x.device:
        raise ScoreShapeError(
            f"score_fn returned {out.dtype} on {out.device} for x of "
            f"{x.dtype} on {x.device}; it must follow x's dtype and device"
        )


@dataclass(frozen=True)
class StepInfo:
    """Passed to ``callback`` after every step."""

    index: int
    t0: float
    t1: float
    x: Tensor
    nfe: int


@dataclass
class SampleResult:
    """What ``sample`` returns: the samples and how they were made."""

    x: Tensor
    nfe: int
    solver: str
    ts: Tensor
    wall_time: float
    trajectory: Tensor | None = None
    options: dict[str, Any] = field(default_factory=dict)


def _resolve(solver: str | Solver, options: dict[str, Any]) -> Solver:
    if isinstance(solver, Solver):
        if options:
            raise ValueError(
                "solver options go to get_solver; pass them with a solver name, "
                "not with a Solver instance"
            )
        return solver
    if not isinstance(solver, str):
        raise TypeError(f"solver must be a registry name or a Solver, got {type(solver).__name__}")
    return get_solver(solver, **options)


def solve(
    score_fn: ScoreFn,
    sde: SDE,
    x_T: Tensor,
    ts: Tensor,
    solver: str | Solver = "heun",
    *,
    generator: torch.Generator | None = None,
    noise: NoiseSource | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    denoise: bool = False,
    return_trajectory: bool = False,
    **options: Any,
) -> Tensor:
    """Integrate from ``x_T`` at ``ts[0]`` to ``ts[-1]``; returns the end point.

    ``solver`` is a registry name (``options`` go to it) or a ``Solver``.
    Noise comes from ``noise`` or else from ``generator``.  ``denoise`` appends
    one Tweedie step ``x <- (x + sigma^2 score) / alpha`` at ``ts[-1]``.
    """
    return _integrate(
        score_fn,
        sde,
        x_T,
        ts,
        solver,
        generator=generator,
        noise=noise,
        callback=callback,
        denoise=denoise,
        return_trajectory=return_trajectory,
        options=options,
    )[0]


def _integrate(
    score_fn: ScoreFn,
    sde: SDE,
    x_T: Tensor,
    ts: Tensor,
    solver: str | Solver,
    *,
    generator: torch.Generator | None,
    noise: NoiseSource | None,
    callback: Callable[[StepInfo], None] | None,
    denoise: bool,
    return_trajectory: bool,
    options: dict[str, Any],
) -> tuple[Tensor, int, Tensor | None]:
    solver = _resolve(solver, options)
    if not isinstance(x_T, Tensor) or x_T.ndim < 1 or not x_T.is_floating_point():
        raise ValueError("x_T must be a floating-point tensor of shape (B, *event)")
    grid = validate_grid(sde, ts)
    if denoise and grid[-1] == 0.0:
        raise ValueError(
            "the grid already ends at t=0, whose last step is the denoising step; use denoise=False"
        )
    counter = CountingScore(score_fn)
    process = (ReverseSDE if solver.info.kind == "sde" else ProbabilityFlowODE)(sde, counter)
    noise = noise if noise is not None else GeneratorNoise(generator)
    if solver.info.adaptive:  # adaptive methods own their loop
        x, trajectory = solver.solve(process, grid, x_T, noise, return_trajectory)
        _raise_if_not_finite(x, solver, None)
    else:
        x, trajectory = _fixed_grid_loop(
            solver, process, grid, x_T, noise, callback, counter, return_trajectory
        )
    if denoise:
        x = process.denoise(x, grid[-1])
        _raise_if_not_finite(x, solver, "the final denoising step")
        if trajectory is not None:
            trajectory = torch.cat([trajectory, x[None]])
    return x, counter.nfe, trajectory


def _fixed_grid_loop(
    solver: Solver,
    process,
    grid: list[float],
    x: Tensor,
    noise: NoiseSource,
    callback,
    counter: CountingScore,
    return_trajectory: bool,
) -> tuple[Tensor, Tensor | None]:
    state = solver.init(process, grid, x, noise)
    first_bad = torch.full((), -1, dtype=torch.long, device=x.device)
    trajectory = [x] if return_trajectory else None
    for i, (t0, t1) in enumerate(pairwise(grid)):
        x, state = solver.step(process, t0, t1, x, state, noise)
        bad_now = ~torch.isfinite(x).all() & (first_bad < 0)
        first_bad = torch.where(bad_now, i, first_bad)  # on the device: no host sync
        if trajectory is not None:
            trajectory.append(x)
        if callback is not None:
            callback(StepInfo(i, t0, t1, x, counter.nfe))
    step = int(first_bad)  # the one host read of the run
    if step >= 0:
        _raise_if_not_finite(
            x, solver, f"step {step} (t={grid[step]:.6g} -> {grid[step + 1]:.6g})", known_bad=True
        )
    return x, (torch.stack(trajectory) if trajectory is not None else None)


def _raise_if_not_finite(
    x: Tensor, solver: Solver, where: str | None, known_bad: bool = False
) -> None:
    if known_bad or not bool(torch.isfinite(x).all()):
        place = f" at {where}" if where else ""
        raise NonFiniteError(
            f"solver {solver.info.name!r} produced non-finite values{place}; "
            "try more steps, a smaller step near the data, or check score_fn"
        )


def sample(
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    solver: str | Solver = "heun",
    steps: int = 50,
    schedule: str = "karras",
    *,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    noise: NoiseSource | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    denoise: bool = False,
    to_zero: bool = False,
    rho: float = 7.0,
    callback: Callable[[StepInfo], None] | None = None,
    return_trajectory: bool = False,
    **options: Any,
) -> SampleResult:
    """Draw ``x_T`` from the prior and solve down to the data side.

    The grid is ``timesteps(sde, steps, schedule, rho=rho, to_zero=to_zero)``.
    Randomness (``x_T`` included) comes from ``noise`` if given, else from
    ``generator``, else from a ``torch.Generator`` seeded with ``seed``: a
    seeded call is reproducible.  With ``noise=PerSampleNoise(seed)`` each
    sample is also independent of the batch size.  ``res.nfe`` is counted.
    """
    device = torch.device(device)
    if noise is None and generator is None:
        generator = torch.Generator(device=device)
        if seed is not None:
            generator.manual_seed(seed)
        else:
            generator.seed()
    solver = _resolve(solver, options)
    ts = timesteps(sde, steps, schedule, rho=rho, to_zero=to_zero, device=device)
    if noise is None:
        noise = GeneratorNoise(generator)
        x_T = sde.prior_sample(tuple(shape), generator=generator, device=device, dtype=dtype)
    else:
        x_T = noise.fresh(torch.empty(tuple(shape), device=device, dtype=dtype)) * sde.prior_std
    start = time.perf_counter()
    x, nfe, trajectory = _integrate(
        score_fn,
        sde,
        x_T,
        ts,
        solver,
        generator=None,
        noise=noise,
        callback=callback,
        denoise=denoise,
        return_trajectory=return_trajectory,
        options={},
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return SampleResult(
        x=x,
        nfe=nfe,
        solver=solver.info.name,
        ts=ts,
        wall_time=time.perf_counter() - start,
        trajectory=trajectory,
        options=solver.options(),
    )
