"""Heun++ (ComfyUI's ``heunpp2``): Euler with a look-ahead over the next two grid points."""

from __future__ import annotations

import torch

from .base import Solver
from .cfg_pp import scaled
from .registry import register_solver


@register_solver(
    "heunpp2",
    kind="ode",
    order=1.0,
    nfe_per_step=3,
    stochastic=False,
    reference="Carzit, sd-webui-samplers-scheduler (MIT); ComfyUI sample_heunpp2",
)
class HeunPP2(Solver):
    """Heun++ in scaled units ``y = x/α``, ``ν = σ/α``, ``d(y, ν) = (y − x̂_0)/ν``.

    From grid point ``i``: Euler predictions to the next two grid points,
    ``y' = y + (ν_{i+1} − ν_i) d``, ``y'' = y' + (ν_{i+2} − ν_{i+1}) d'``, and the step
    ``y_{i+1} = y + (ν_{i+1} − ν_i)(w_1 d + w_2 d' + w_3 d'')`` with ``w_2 = ν_{i+1}/(3ν_0)``,
    ``w_3 = ν_{i+2}/(3ν_0)``, ``w_1 = 1 − w_2 − w_3`` (``ν_0`` the grid's first level); the
    second-to-last step drops ``d''`` (``w_2 = ν_{i+1}/(2ν_0)``), the last one is Euler.  The
    weights shrink with the noise level, so it is Euler's order 1 with a smaller error
    constant at high noise.  3 NFE per step (2 and 1 on the last two).
    """

    uses = frozenset({"denoise"})

    def init(self, process, grid, x, noise):
        return {"grid": grid, "index": {t: i for i, t in enumerate(grid)}}

    def expected_nfe(self, grid):
        steps = len(grid) - 1
        return 1 if steps == 1 else 3 * steps - 3

    def step(self, process, t0, t1, x, state, noise):
        grid, i = state["grid"], state["index"][t0]
        nu_first = scaled(process, grid[0])[1]
        a0, nu0, _ = scaled(process, t0)
        y = x / a0

        def direction(y_at, t):
            alpha, nu, _ = scaled(process, t)
            return (y_at - process.denoise(y_at * alpha, t)) / nu

        d = direction(y, t0)
        a1, nu1, _ = scaled(process, t1)
        dt = nu1 - nu0
        y1 = torch.add(y, d, alpha=dt)
        if i + 2 < len(grid):  # look ahead: Heun (second to last) or Heun++
            d1 = direction(y1, t1)
            if i + 3 == len(grid):
                w2 = nu1 / (2 * nu_first)
                mix = torch.add(d * (1 - w2), d1, alpha=w2)
            else:
                t2 = grid[i + 2]
                nu2 = scaled(process, t2)[1]
                d2 = direction(torch.add(y1, d1, alpha=nu2 - nu1), t2)
                w2, w3 = nu1 / (3 * nu_first), nu2 / (3 * nu_first)
                mix = torch.add(d * (1 - w2 - w3), d1, alpha=w2).add_(d2, alpha=w3)
            y1 = torch.add(y, mix, alpha=dt)
        return y1 * a1, state
