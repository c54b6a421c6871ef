"""The one driver: ``solve`` (a grid and a start point) and ``sample`` (from the prior).

``solve`` validates the grid once, builds the per-solve :class:`ReverseProcess`
(coefficients on the grid, conversions, NFE counting, the condition), lets the
solver ``integrate`` over the grid, tracks the first non-finite step on the
device (one host read at the end, none per step), optionally appends a Tweedie
denoising step, and returns a :class:`SampleResult`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor

from .acceleration import accelerate, compile_seconds
from .devices import checked_device, checked_dtype
from .distributed import map_batches, stream_batches, sum_over_ranks
from .errors import ArgumentError, NonFiniteError
from .latent import latent_model_of
from .loop import StepHook, integrate
from .models import Cond, slice_cond
from .noise import GeneratorNoise, NoiseSource, PerSampleNoise, seeded_generator
from .reverse import ReverseProcess, ScoreFn
from .sdes import SDE
from .solvers.base import Solver
from .solvers.registry import get_solver
from .timesteps import timesteps, validate_grid

__all__ = [
    "DEFAULT_STEPS",
    "NonFiniteError",
    "SampleResult",
    "StepInfo",
    "check_sampling_grid",
    "default_steps",
    "sample",
    "sample_batched",
    "solve",
]

DEFAULT_STEPS = 25  # grid intervals of a fixed-grid solver when none are asked for


def default_steps(solver: Solver) -> int:
    """Grid intervals when ``steps`` is not given: ``DEFAULT_STEPS``, or 1 for an adaptive
    solver (it chooses its own steps; grid times are only where it must stop)."""
    return 1 if solver.adaptive else DEFAULT_STEPS


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
    """What ``solve`` and ``sample`` return: the end point and how it was made.

    ``nfe`` counts model calls, ``network_passes`` network forward passes (more
    than ``nfe`` for models that run their network twice a call, as guidance
    does), both totals over the ``batches`` solved (of every rank, under ``torchrun``);
    ``nfe_per_batch`` is what one batch took on average.  ``wall_time`` is the whole
    run's; ``compile_time`` the part of it spent in network calls that compiled (see
    :mod:`~sde_diffusion.acceleration`), so ``sampling_time`` is what the rate is made of.
    ``trajectory`` (with
    ``return_trajectory=True``) holds the state at every time of ``times``: the grid,
    plus the denoising step's time again if one was appended.
    """

    x: Tensor | None
    nfe: int
    network_passes: int
    solver: str
    ts: Tensor
    wall_time: float
    trajectory: Tensor | None = None
    times: list[float] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    batches: int = 1
    compile_time: float = 0.0
    latent: Tensor | None = None

    @property
    def sampling_time(self) -> float:
        """Wall time less compile time: what a samples/s figure divides by."""
        return self.wall_time - self.compile_time

    @property
    def nfe_per_batch(self) -> float:
        """Model calls per batch (the NFE of one sample's solve, for fixed grids)."""
        return self.nfe / max(1, self.batches)


def _resolve(solver: str | Solver, options: dict[str, Any]) -> Solver:
    if isinstance(solver, Solver):
        if options:
            raise ArgumentError(
                "solver options go to get_solver; pass them with a solver name, "
                "not with a Solver instance"
            )
        return solver
    if not isinstance(solver, str):
        raise TypeError(f"solver must be a registry name or a Solver, got {type(solver).__name__}")
    return get_solver(solver, **options)


class _Recorder:
    """The observer of a solve: non-finite tracking, trajectory, callback."""

    def __init__(self, process, callback, trajectory: bool, x: Tensor, t: float):
        self.process, self.callback = process, callback
        self.sums: list[Tensor] = []
        self.states = [x] if trajectory else None
        self.times = [t] if trajectory else None

    def __call__(self, i: int, t0: float, t1: float, x: Tensor) -> None:
        self.sums.append(x.sum())  # non-finite iff some entry is; read once at the end
        if self.states is not None:
            self.states.append(x)
            self.times.append(t1)
        if self.callback is not None:
            self.callback(StepInfo(i, t0, t1, x, self.process.nfe))


def solve(
    model: ScoreFn,
    sde: SDE,
    x_T: Tensor,
    ts: Tensor,
    solver: str | Solver = "heun",
    *,
    cond: Cond = None,
    generator: torch.Generator | None = None,
    noise: NoiseSource | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    denoise: bool = False,
    return_trajectory: bool = False,
    after_step: StepHook | None = None,
    compile: bool | str = False,
    precision: str = "fp32",
    **options: Any,
) -> SampleResult:
    """Integrate from ``x_T`` at ``ts[0]`` to ``ts[-1]``; returns a :class:`SampleResult`.

    ``model`` is a model (``model(x, t, cond)`` with a ``prediction``) or a plain
    ``score_fn(x, t)``; ``cond`` (labels, embeddings or a dict of tensors, one row
    per sample) reaches it unchanged.  ``solver`` is a registry name (``options``
    go to it) or a ``Solver``.  Noise comes from ``noise`` or else from
    ``generator``.  ``denoise`` appends one Tweedie step ``x <- x̂_0(x, ts[-1])``.
    The state keeps ``x_T``'s dtype whatever the model computes in.  ``after_step(t0, t1,
    x)`` replaces the state after each step of a fixed-grid solver (see
    :func:`~sde_diffusion.loop.integrate`).  ``compile`` and ``precision`` run the
    network compiled and/or autocast (:func:`~sde_diffusion.acceleration.accelerate`);
    the state keeps its dtype.
    """
    solver = _resolve(solver, options)
    model = accelerate(model, compile, precision)
    if not isinstance(x_T, Tensor) or x_T.ndim < 1 or not x_T.is_floating_point():
        raise ArgumentError("x_T must be a floating-point tensor of shape (B, *event)")
    grid = validate_grid(sde, ts)
    if denoise and grid[-1] == 0.0:
        raise ArgumentError(
            "the grid already ends at t=0, whose last step is the denoising step; use denoise=False"
        )
    start, compiling = time.perf_counter(), compile_seconds()
    process = ReverseProcess(model, sde, x_T, cond=cond, grid=grid)
    noise = noise if noise is not None else GeneratorNoise(generator)
    recorder = _Recorder(process, callback, return_trajectory, x_T, grid[0])
    x = integrate(solver, process, grid, x_T, noise, recorder, after_step)
    _raise_if_not_finite(x, solver, grid, recorder.sums)
    if denoise:
        x = process.denoise(x, grid[-1])
        _raise_if_not_finite(x, solver, None, [])
        recorder(len(grid) - 1, grid[-1], grid[-1], x)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return SampleResult(
        x=x,
        nfe=process.nfe,
        network_passes=process.network_passes,
        solver=solver.name,
        ts=torch.as_tensor(ts),
        wall_time=time.perf_counter() - start,
        trajectory=torch.stack(recorder.states) if return_trajectory else None,
        times=recorder.times,
        options=solver.options(),
        compile_time=compile_seconds() - compiling,
    )


def _raise_if_not_finite(
    x: Tensor, solver: Solver, grid: list[float] | None, sums: list[Tensor]
) -> None:
    if bool(torch.isfinite(x).all()):  # the one host read of the run
        return
    where = " at the final denoising step" if grid is None else ""
    if sums:
        step = int((~torch.isfinite(torch.stack(sums))).nonzero()[0, 0])
        where = f" at step {step} (t={grid[step]:.6g} -> {grid[step + 1]:.6g})"
    raise NonFiniteError(
        f"solver {solver.name!r} produced non-finite values{where}; "
        "try more steps, a smaller step near the data, or check the model"
    )


def sample(
    model: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    solver: str | Solver = "heun",
    steps: int | None = None,
    schedule: str = "karras",
    *,
    cond: Cond = None,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    noise: NoiseSource | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    denoise: bool = False,
    to_zero: bool = False,
    rho: float | None = None,
    grid: Tensor | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    return_trajectory: bool = False,
    batch_size: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    sink: Callable[[int, int, Tensor], None] | None = None,
    compile: bool | str = False,
    precision: str = "fp32",
    decode: bool = True,
    **options: Any,
) -> SampleResult:
    """Draw ``x_T`` from the prior and solve down to the data side: in one batch, or in
    batches of ``batch_size`` (sharded over ``torchrun`` ranks, optionally streamed to
    ``sink``); the one sampling path.

    The grid is ``timesteps(sde, steps, schedule, rho=rho, to_zero=to_zero)`` (``steps``
    by default :func:`default_steps`: 25, or 1 for adaptive solvers), or
    ``grid`` itself when given (a tuned grid, ``TunedGrid.tensor()``), which must start
    at ``sde.T``.  ``dtype`` is the state's precision (float32 or float64), whatever the
    model's.  ``res.nfe`` is counted: the model calls of all batches (``res.batches`` of
    them; ``res.nfe_per_batch`` what one batch took).

    In one batch (``batch_size=None``, no ``sink``), randomness (``x_T`` included) comes
    from ``noise`` if given, else from ``generator``, else from a ``torch.Generator``
    seeded with ``seed``: a seeded call is reproducible.  With
    ``noise=PerSampleNoise(seed)`` each sample is also independent of the batch size
    (unless the solver's ``batch_invariant`` is ``False``: ``pc``).

    In batches, sample ``i`` draws its noise from ``PerSampleNoise(seed)`` at index ``i``
    and its condition from row ``i`` of ``cond``; batches are the global ``[k b, (k+1) b)``
    and rank ``r`` of ``W`` solves batches ``r, r + W, ...``, so the samples are the same
    bit for bit on any number of processes (for a given ``batch_size`` and thread count),
    and for batch-free solvers for any ``batch_size`` up to the float rounding of the
    model's batched arithmetic.  Rank 0 gets every sample in ``x`` and the totals of all
    ranks; other ranks get ``x = None``.  ``on_batch(start, stop)`` follows each finished
    batch of this rank.  With ``sink``, rank 0 hands each batch to ``sink(start, stop,
    rows)`` in global order as it arrives and keeps nothing (``x = None``): memory holds a
    batch per rank, whatever ``shape[0]``.  ``compile`` and ``precision``: see :func:`solve`
    (the network compiles once, for the first batch; ``res.compile_time`` says how long).

    A latent model (:class:`~sde_diffusion.latent.LatentModel`, or a guidance wrapper of
    one) samples ``shape`` in its latent space (``(B, *model.latent_shape)``) and ``x`` is
    the decoded images (``res.latent`` the latents in one batch); ``decode=False`` returns
    the latents as ``x``.
    """
    device, dtype = checked_device(device), checked_dtype(dtype)
    shape = _sample_shape(shape)
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63
    ):
        raise ArgumentError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    latent = latent_model_of(model) if decode else None
    model = accelerate(model, compile, precision)
    solver = _resolve(solver, options)
    steps = default_steps(solver) if steps is None else steps
    ts = _grid(sde, steps, schedule, rho, to_zero, grid)
    run = partial(
        _sample_once,
        model,
        sde,
        solver=solver,
        ts=ts,
        device=device,
        dtype=dtype,
        denoise=denoise,
        callback=callback,
        decoder=None if latent is None else latent.decode,
    )
    if batch_size is None and sink is None and on_batch is None:
        if noise is None and generator is None:
            if seed is None:
                generator = torch.Generator(device=device)
                generator.seed()
            else:
                generator = seeded_generator(seed, device)
        return run(shape, cond, noise, generator, return_trajectory)
    if noise is not None or generator is not None or return_trajectory or seed is None:
        raise ArgumentError(
            "batched sampling draws per-sample noise from seed: give a seed, and no noise, "
            "generator or return_trajectory"
        )
    return _sample_in_batches(
        run, shape, cond, seed, batch_size or shape[0], on_batch, sink, solver, ts
    )


def _sample_once(
    model, sde, shape, cond, noise, generator, return_trajectory, *, solver, ts, device, dtype,
    denoise, callback, decoder,
) -> SampleResult:  # fmt: skip
    """One batch: ``x_T`` from ``noise`` or ``generator``, then :func:`solve` (and the
    latent model's ``decoder``)."""
    if noise is None:
        noise = GeneratorNoise(generator)
        x_T = sde.prior_sample(tuple(shape), generator=generator, device=device, dtype=dtype)
    else:
        x_T = noise.fresh(torch.empty(tuple(shape), device=device, dtype=dtype)) * sde.prior_std
    res = solve(
        model,
        sde,
        x_T,
        ts,
        solver,
        cond=cond,
        noise=noise,
        callback=callback,
        denoise=denoise,
        return_trajectory=return_trajectory,
    )
    if decoder is not None:
        start = time.perf_counter()
        res.latent, res.x = res.x, decoder(res.x)
        res.wall_time += time.perf_counter() - start
    return res


def _sample_in_batches(
    run, shape, cond, seed, batch_size, on_batch, sink, solver, ts
) -> SampleResult:
    """``shape[0]`` samples in global batches of ``batch_size``, this rank's share solved."""
    if batch_size < 1:
        raise ArgumentError(f"batch_size must be >= 1, got {batch_size}")
    start_time, counts = time.perf_counter(), [0, 0, 0]
    compiling = compile_seconds()

    def one(start: int, stop: int) -> Tensor:
        rows = None if cond is None else slice_cond(cond, slice(start, stop))
        res = run((stop - start, *shape[1:]), rows, PerSampleNoise(seed, start), None, False)
        counts[:] = [counts[0] + res.nfe, counts[1] + res.network_passes, counts[2] + 1]
        if on_batch is not None:
            on_batch(start, stop)
        return res.x

    if sink is None:
        x = map_batches(one, shape[0], batch_size)
    else:
        x = None
        for start, stop, rows in stream_batches(one, shape[0], batch_size):
            sink(start, stop, rows)
    nfe, passes, batches = sum_over_ranks(counts)
    return SampleResult(
        x=x,
        nfe=int(nfe),
        network_passes=int(passes),
        solver=solver.name,
        ts=ts,
        wall_time=time.perf_counter() - start_time,
        options=solver.options(),
        batches=int(batches),
        compile_time=compile_seconds() - compiling,
    )


def _sample_shape(shape) -> tuple[int, ...]:
    """``shape`` as ``(B, *event)`` of positive ints, or a ``ValueError`` that says why."""
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    ok = isinstance(shape, (tuple, list)) and len(shape) >= 1
    ok = ok and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)
    if not ok:
        raise ArgumentError(f"shape must be (batch, *event) with positive integers, got {shape!r}")
    if math.prod(shape) > 2**40:
        raise ArgumentError(
            f"shape {tuple(shape)} holds more than 2**40 numbers; sample in batches"
        )
    return tuple(shape)


def _grid(sde: SDE, steps: int, schedule: str, rho: float, to_zero: bool, grid) -> Tensor:
    """The standard grid, or ``grid`` checked by :func:`check_sampling_grid`."""
    if grid is None:
        return timesteps(sde, steps, schedule, rho=rho, to_zero=to_zero)
    return check_sampling_grid(sde, grid)


def check_sampling_grid(sde: SDE, grid: Tensor) -> Tensor:
    """``grid`` as float64 if it runs from the prior (``t = T``) to the data (``t_min`` or
    0) as a valid time grid, else an ``ArgumentError`` that says which end is wrong."""
    grid = torch.as_tensor(grid, dtype=torch.float64)
    if grid.ndim != 1 or len(grid) < 2 or not math.isclose(float(grid[0]), sde.T, rel_tol=1e-9):
        raise ArgumentError(
            f"a sampling grid must start at the prior, t = T = {sde.T:g}; got "
            f"{grid.tolist()[:3]}... (a grid tuned for another SDE?)"
        )
    end = validate_grid(sde, grid)[-1]
    if not (end == 0.0 or math.isclose(end, sde.t_min, rel_tol=1e-9)):
        raise ArgumentError(
            f"a sampling grid must end at the data, t = {sde.t_min:g} or 0; it ends at {end:g}, "
            "which would return noisy samples (sd.solve integrates part of the way)"
        )
    return grid


def sample_batched(
    model: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    solver: str | Solver = "heun",
    steps: int | None = None,
    schedule: str = "karras",
    *,
    batch_size: int = 256,
    seed: int = 0,
    **kwargs: Any,
) -> SampleResult:
    """:func:`sample` in batches of ``batch_size`` (its batched mode, with that default)."""
    return sample(
        model, sde, shape, solver, steps, schedule, batch_size=batch_size, seed=seed, **kwargs
    )
