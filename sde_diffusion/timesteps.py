"""Time grids for the samplers, and the one grid validator of the library.

A grid is 1-D and strictly decreasing from the prior side (``sde.T``) to the
data side (``sde.t_min``, or exactly 0 for SDEs with ``sigma(0) = 0``).

Schedules (``N = steps``, ``i = 0..N``, ``u = i / N``):

- ``uniform``:   ``t_i = T + u (t_min - T)``
- ``quadratic``: ``t_i = t_min + (T - t_min) (1 - u)^2`` (Song et al. 2020, DDIM)
- ``karras``:    noise-to-signal ratio ``nu = sigma / alpha`` spaced as
  ``nu_i = (nu_max^(1/rho) + u (nu_min^(1/rho) - nu_max^(1/rho)))^rho``
  (Karras et al. 2022, eq. 5; ``nu = t`` for ``EDMSDE``)
- ``logsnr``:    ``lambda = log(alpha / sigma)`` uniform (Lu et al. 2022, DPM-Solver)
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import Tensor

from .errors import ArgumentError
from .sdes import SDE

__all__ = ["SCHEDULES", "timesteps", "validate_grid"]

SCHEDULES = ("uniform", "quadratic", "karras", "logsnr")
"""The grid families of :func:`timesteps`."""


MAX_STEPS = 1_000_000  # grid intervals: beyond this a run is a mistake, not a setting


def timesteps(
    sde: SDE,
    steps: int,
    schedule: str = "uniform",
    *,
    rho: float = 7.0,
    to_zero: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """A grid of ``steps + 1`` times from ``sde.T`` down to ``sde.t_min``.

    With ``to_zero=True`` the schedule spans ``steps`` points from ``T`` to
    ``t_min`` and a final ``0`` is appended (the EDM / k-diffusion convention;
    only for SDEs with ``sigma(0) = 0``): still ``steps`` intervals.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ArgumentError(f"steps must be an integer in [1, {MAX_STEPS:,}], got {steps!r}")
    if not isinstance(schedule, str):
        raise ArgumentError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    name = schedule.lower()
    if name not in SCHEDULES:
        raise ArgumentError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if not (math.isfinite(rho) and rho > 0):
        raise ArgumentError(f"rho must be a positive number, got {rho!r}")
    if to_zero:
        _check_zero_end(sde)
        if steps < 2:
            raise ArgumentError("a grid with to_zero=True needs steps >= 2")
    n = steps - 1 if to_zero else steps
    u = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
    t_max, t_min = float(sde.T), float(sde.t_min)
    if name == "uniform":
        t = t_max + u * (t_min - t_max)
    elif name == "quadratic":
        t = t_min + (t_max - t_min) * (1 - u) ** 2
    else:
        lam_max, lam_min = float(sde.log_snr(t_min)), float(sde.log_snr(t_max))
        if name == "karras":
            hi, lo = math.exp(-lam_min / rho), math.exp(-lam_max / rho)
            lam = -rho * torch.log(hi + u * (lo - hi))
        else:
            lam = lam_min + u * (lam_max - lam_min)
        t = sde.t_from_log_snr(lam)
    t[0], t[-1] = t_max, t_min  # exact ends, free of round-off (1 + (1e-5 - 1) != 1e-5)
    if to_zero:
        t = torch.cat([t, t.new_zeros(1)])
    return t.to(device=device, dtype=dtype)


def _check_zero_end(sde: SDE) -> None:
    sigma0 = float(sde.sigma(0.0))
    if sigma0 != 0.0:
        raise ArgumentError(
            f"a grid may end at t=0 only when sigma(0) = 0, but {sde!r} has "
            f"sigma(0) = {sigma0:.3g}; end at sde.t_min instead"
        )


def validate_grid(sde: SDE, ts: Tensor) -> list[float]:
    """Check a time grid once and return it as Python floats.

    Rules: 1-D with at least 2 points, finite, strictly decreasing, inside
    ``[0, sde.T]``, ending at 0 only if ``sigma(0) = 0``.  Errors say what was
    received and what was expected.
    """
    if not isinstance(ts, Tensor):
        ts = torch.as_tensor(ts, dtype=torch.float64)
    if ts.ndim != 1 or ts.numel() < 2:
        raise ArgumentError(
            f"a time grid must be 1-D with at least 2 points, got shape "
            f"{tuple(ts.shape)}; build one with sd.timesteps(sde, steps)"
        )
    grid = ts.detach().to("cpu", torch.float64).tolist()
    if not all(math.isfinite(t) for t in grid):
        raise ArgumentError(f"a time grid must be finite, got {_short(grid)}")
    if any(b >= a for a, b in pairwise(grid)):
        raise ArgumentError(
            f"a time grid must be strictly decreasing (from T towards 0), got {_short(grid)}"
        )
    if grid[0] > sde.T * (1 + 1e-6) or grid[-1] < 0:
        raise ArgumentError(
            f"a time grid must lie in [0, T] = [0, {sde.T!r}] for {sde!r}, got {_short(grid)}"
        )
    if grid[-1] == 0.0:
        _check_zero_end(sde)
    return grid


def _short(grid: list[float]) -> str:
    if len(grid) <= 6:
        return "[" + ", ".join(f"{t:.6g}" for t in grid) + "]"
    head = ", ".join(f"{t:.6g}" for t in grid[:3])
    tail = ", ".join(f"{t:.6g}" for t in grid[-2:])
    return f"[{head}, ..., {tail}] ({len(grid)} points)"
