"""Time grids for the samplers, and the one grid validator of the library.

A grid is 1-D and strictly decreasing from the prior side (``sde.T``) to the
data side (``sde.t_min``, or exactly 0 for SDEs with ``sigma(0) = 0``).  ``ν = σ/α``
is the noise-to-signal ratio (k-diffusion's and ComfyUI's "sigma"; ``ν = t`` on EDM).

Schedules spanning ``[t_min, T]`` (``N`` points, ``u = i / (N − 1)``), with ``to_zero`` a
final 0 appended:

- ``uniform`` (ComfyUI ``normal``): ``t_i = T + u (t_min − T)``
- ``quadratic``: ``t_i = t_min + (T − t_min) (1 − u)²`` (Song et al. 2020, DDIM)
- ``karras``: ``ν_i = (ν_max^(1/ρ) + u (ν_min^(1/ρ) − ν_max^(1/ρ)))^ρ``, ρ = 7 (Karras et al.
  2022, eq. 5)
- ``logsnr`` (ComfyUI ``exponential``): ``λ = log(α/σ)`` uniform (Lu et al. 2022)
- ``polyexponential``: ``log ν_i = log ν_min + (1 − u)^ρ (log ν_max − log ν_min)``, ρ = 1
  (k-diffusion); ρ = 1 is ``logsnr``
- ``kl_optimal``: ``ν_i = tan((1 − u) atan ν_max + u atan ν_min)`` (Sabour et al. 2024,
  Align Your Steps, thm. 3.1)
- ``laplace``: ``log ν`` at the quantiles ``1 − u`` of a Laplace(μ = 0, b = 1/2) truncated to
  ``[log ν_min, log ν_max]`` (Tiankai et al. 2024; k-diffusion clips instead of truncating)

Schedules written for ComfyUI's ``steps`` points plus a final 0 (with ``to_zero``: the
points ``i = 0 … N − 1`` of ``u = i/N`` and then 0, so the last point before 0 is not
``t_min``; without it, ``u = i/N`` for ``i = 0 … N``, ending at ``t_min``):

- ``simple``: ``t = T + u (t_end − T)`` with ``t_end = 0`` (``to_zero``) or ``t_min``
- ``sgm_uniform``: ``t = T + u (t_min − T)``
- ``ddim_uniform``: times ``t_min + j (T − t_min)/N``, ``j = N − 1 … 0`` (DDIM's "leading"
  spacing), the first replaced by ``T`` where sampling starts (without ``to_zero``: ``uniform``)
- ``beta``: ``t = t_min + (T − t_min) F⁻¹(1 − u)`` with ``F`` the Beta(0.6, 0.6) CDF
  (Lee et al. 2024)
- ``linear_quadratic``: ``t = t_end + (T − t_end)(1 − f_i)`` with Mochi's ``f``: linear to
  0.025 over the first half of the steps, quadratic after (Genmo 2024; made for
  rectified flow, where ``t`` is its ``σ``)
- ``ays``, ``ays_sdxl``: the Align Your Steps noise levels of Stable Diffusion 1.5 and XL
  (Sabour et al. 2024), ``gits``: the GITS levels of SD 1.5 at coefficient 1.20 (Chen et
  al. 2024), as positions in ``log ν`` stretched onto this SDE's ``[ν_min, ν_max]`` and
  interpolated log-linearly to other step counts (as ComfyUI does)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise

import numpy as np
import torch
from scipy import stats
from torch import Tensor

from .errors import ArgumentError
from .sdes import SDE

__all__ = ["SCHEDULES", "SCHEDULE_ALIASES", "timesteps", "validate_grid"]


MAX_STEPS = 1_000_000  # grid intervals: beyond this a run is a mistake, not a setting

SCHEDULE_ALIASES = {"normal": "uniform", "exponential": "logsnr"}
"""ComfyUI's names of schedules registered under another name."""

# Align Your Steps, 10 steps (Sabour et al. 2024; NVIDIA's published noise levels)
AYS_LEVELS = {
    "ays": [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177,
            1.3943805092, 0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582],
    "ays_sdxl": [14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945,
                 0.8620721141, 0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177,
                 0.0291671582],
}  # fmt: skip

# GITS at coefficient 1.20 (Chen et al. 2024), 2 to 20 steps: Stable Diffusion 1.5's
# discrete timesteps (noise levels of its scaled-linear β table, 0.00085 to 0.012)
GITS_TIMESTEPS = [
    [999, 290, 0], [999, 490, 180, 0], [999, 609, 330, 110, 0], [999, 659, 420, 210, 60, 0],
    [999, 829, 569, 340, 150, 30, 0], [999, 829, 619, 420, 230, 80, 10, 0],
    [999, 829, 619, 450, 290, 150, 60, 10, 0], [999, 829, 659, 500, 340, 210, 110, 40, 10, 0],
    [999, 829, 659, 509, 380, 270, 170, 90, 40, 10, 0],
    [999, 829, 669, 539, 420, 300, 210, 130, 70, 30, 10, 0],
    [999, 829, 679, 559, 450, 340, 250, 170, 110, 60, 30, 10, 0],
    [999, 859, 709, 609, 490, 380, 290, 210, 150, 100, 60, 30, 10, 0],
    [999, 859, 709, 619, 500, 400, 310, 230, 170, 120, 80, 50, 30, 10, 0],
    [999, 879, 779, 679, 579, 480, 380, 300, 230, 170, 120, 80, 50, 30, 10, 0],
    [999, 879, 779, 679, 579, 480, 380, 300, 230, 170, 130, 90, 60, 40, 20, 10, 0],
    [999, 879, 779, 679, 579, 480, 380, 300, 230, 170, 130, 100, 70, 50, 30, 20, 10, 0],
    [999, 879, 779, 679, 589, 500, 410, 330, 260, 200, 150, 110, 80, 60, 40, 30, 20, 10, 0],
    [999, 879, 779, 679, 589, 500, 420, 340, 270, 210, 160, 120, 90, 70, 50, 40, 30, 20, 10, 0],
    [999, 879, 779, 679, 589, 500, 420, 340, 270, 210, 170, 130, 100, 80, 60, 50, 40, 30, 20,
     10, 0],
]  # fmt: skip

_Spanning = Callable[[SDE, Tensor, float], Tensor]  # (sde, u in [0, 1], rho) -> times
_Comfy = Callable[[SDE, int, bool], Tensor]  # (sde, steps, to_zero) -> times before the 0


def _nu_range(sde: SDE) -> tuple[float, float]:
    """``(ν_min, ν_max)``: the noise-to-signal ratios at ``t_min`` and ``T``."""
    return math.exp(-float(sde.log_snr(sde.t_min))), math.exp(-float(sde.log_snr(sde.T)))


def _at_nu(sde: SDE, nu: Tensor) -> Tensor:
    return sde.t_from_log_snr(-torch.log(nu))


def _uniform(sde, u, rho):
    return sde.T + u * (sde.t_min - sde.T)


def _quadratic(sde, u, rho):
    return sde.t_min + (sde.T - sde.t_min) * (1 - u) ** 2


def _karras(sde, u, rho):
    lo, hi = (nu ** (1 / (rho or 7.0)) for nu in _nu_range(sde))
    return _at_nu(sde, (hi + u * (lo - hi)) ** (rho or 7.0))


def _logsnr(sde, u, rho):
    return _polyexponential(sde, u, 1.0)


def _polyexponential(sde, u, rho):
    lo, hi = (math.log(nu) for nu in _nu_range(sde))
    return _at_nu(sde, torch.exp(lo + (1 - u) ** (rho or 1.0) * (hi - lo)))


def _kl_optimal(sde, u, rho):
    lo, hi = (math.atan(nu) for nu in _nu_range(sde))
    return _at_nu(sde, torch.tan((1 - u) * hi + u * lo))


def _laplace(sde, u, rho, mu: float = 0.0, b: float = 0.5):
    law = stats.laplace(loc=mu, scale=b)
    p_lo, p_hi = (law.cdf(math.log(nu)) for nu in _nu_range(sde))
    p = p_hi + u.numpy() * (p_lo - p_hi)
    return _at_nu(sde, torch.from_numpy(np.exp(law.ppf(p))))


SPANNING: dict[str, _Spanning] = {
    "uniform": _uniform,
    "quadratic": _quadratic,
    "karras": _karras,
    "logsnr": _logsnr,
    "polyexponential": _polyexponential,
    "kl_optimal": _kl_optimal,
    "laplace": _laplace,
}


def _fractions(steps: int, to_zero: bool) -> Tensor:
    """ComfyUI's positions: ``u = i/N`` for ``i < N`` (then a 0 follows), or ``i ≤ N``."""
    return torch.arange(steps + (0 if to_zero else 1), dtype=torch.float64) / steps


def _simple(sde, steps, to_zero):
    end = 0.0 if to_zero else sde.t_min
    return sde.T + _fractions(steps, to_zero) * (end - sde.T)


def _sgm_uniform(sde, steps, to_zero):
    return sde.T + _fractions(steps, to_zero) * (sde.t_min - sde.T)


def _ddim_uniform(sde, steps, to_zero):
    if not to_zero:
        return _sgm_uniform(sde, steps, to_zero)
    stride = (sde.T - sde.t_min) / steps  # "leading": from t_min up, a stride short of T
    return sde.t_min + (steps - 1 - torch.arange(steps, dtype=torch.float64)) * stride


def _beta(sde, steps, to_zero, a: float = 0.6, b: float = 0.6):
    quantile = torch.from_numpy(stats.beta.ppf(1 - _fractions(steps, to_zero).numpy(), a, b))
    return sde.t_min + (sde.T - sde.t_min) * quantile


def _linear_quadratic(sde, steps, to_zero, threshold: float = 0.025):
    if steps == 1:
        f = torch.tensor([0.0, 1.0], dtype=torch.float64)
    else:
        linear = steps // 2
        rest = steps - linear
        gap = linear - threshold * steps
        quadratic = gap / (linear * rest**2)
        slope = threshold / linear - 2 * gap / rest**2
        const = quadratic * linear**2
        i = torch.arange(steps + 1, dtype=torch.float64)
        f = torch.where(i < linear, i * threshold / linear, quadratic * i**2 + slope * i + const)
        f[-1] = 1.0
    end = 0.0 if to_zero else sde.t_min
    t = end + (sde.T - end) * (1 - f)
    return t[:-1] if to_zero else t


def _loglinear(levels: list[float], points: int) -> np.ndarray:
    """Decreasing ``levels`` resampled to ``points`` values, linearly in ``log`` (ComfyUI's
    ``loglinear_interp``)."""
    logs = np.log(np.asarray(levels, dtype=np.float64))[::-1]
    where = np.linspace(0, 1, points)
    return np.interp(where, np.linspace(0, 1, len(logs)), logs)[::-1]


def _stretched(sde: SDE, logs: np.ndarray, to_zero: bool) -> Tensor:
    """Table levels (``log ν``, first the largest) placed at the same relative positions of
    this SDE's ``[log ν_min, log ν_max]``; with ``to_zero`` the last one makes way for 0."""
    lo, hi = (math.log(nu) for nu in _nu_range(sde))
    position = (logs - logs[-1]) / (logs[0] - logs[-1])
    nu = torch.from_numpy(np.exp(lo + position * (hi - lo)))
    return _at_nu(sde, nu[:-1] if to_zero else nu)


def _table(levels: list[float]) -> _Comfy:
    def schedule(sde, steps, to_zero):
        return _stretched(sde, _loglinear(levels, steps + 1), to_zero)

    return schedule


def _sd15_levels(timesteps: list[int]) -> list[float]:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    alpha_bar = np.cumprod(1 - betas)
    return list(np.sqrt((1 - alpha_bar) / alpha_bar)[timesteps])


def _gits(sde, steps, to_zero):
    row = GITS_TIMESTEPS[min(max(steps, 2), len(GITS_TIMESTEPS) + 1) - 2]
    return _table(_sd15_levels(row))(sde, steps, to_zero)


COMFY: dict[str, _Comfy] = {
    "simple": _simple,
    "sgm_uniform": _sgm_uniform,
    "ddim_uniform": _ddim_uniform,
    "beta": _beta,
    "linear_quadratic": _linear_quadratic,
    **{name: _table(levels) for name, levels in AYS_LEVELS.items()},
    "gits": _gits,
}

SCHEDULES = (*SPANNING, *COMFY)
"""The grid families of :func:`timesteps` (``SCHEDULE_ALIASES`` name some of them too)."""


def schedule_name(schedule: str) -> str:
    """The registered name of ``schedule`` (an alias resolved); unknown names are an error."""
    if not isinstance(schedule, str):
        raise ArgumentError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    name = schedule.strip().lower().replace("-", "_")
    name = SCHEDULE_ALIASES.get(name, name)
    if name not in SCHEDULES:
        raise ArgumentError(
            f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)} "
            f"(or {', '.join(SCHEDULE_ALIASES)})"
        )
    return name


def timesteps(
    sde: SDE,
    steps: int,
    schedule: str = "uniform",
    *,
    rho: float | None = None,
    to_zero: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """A grid of ``steps + 1`` times from ``sde.T`` down to ``sde.t_min``.

    With ``to_zero=True`` the grid's last point is ``0`` (the EDM / k-diffusion / ComfyUI
    convention; only for SDEs with ``sigma(0) = 0``): still ``steps`` intervals.  ``rho``
    shapes ``karras`` (default 7) and ``polyexponential`` (default 1).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ArgumentError(f"steps must be an integer in [1, {MAX_STEPS:,}], got {steps!r}")
    name = schedule_name(schedule)
    if rho is not None and not (
        isinstance(rho, (int, float)) and math.isfinite(rho) and 0 < rho <= 1e3
    ):
        raise ArgumentError(f"rho must be a positive number (at most 1000), got {rho!r}")
    if to_zero:
        _check_zero_end(sde)
        if steps < 2:
            raise ArgumentError("a grid with to_zero=True needs steps >= 2")
    if name in SPANNING:
        n = steps - 1 if to_zero else steps
        u = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
        t = SPANNING[name](sde, u, rho).to(torch.float64)
        t[-1] = float(sde.t_min)  # exact end, free of round-off (1 + (1e-5 - 1) != 1e-5)
    else:
        t = COMFY[name](sde, steps, to_zero).to(torch.float64)
        if not to_zero:
            t[-1] = float(sde.t_min)
    t[0] = float(sde.T)
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
