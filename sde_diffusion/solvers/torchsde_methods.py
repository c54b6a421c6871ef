"""Reverse-SDE methods of torchsde, stepped exactly on our grid.

The reverse SDE is written in reversed time ``u = -t`` (torchsde integrates
forwards): ``dx = -[f - g^2 score] du + g dW_u`` with diagonal noise
``g(t) * ones``.  g depends on t only (additive noise), so Itô and Stratonovich
forms coincide and Stratonovich methods apply unchanged.  torchsde's method
object steps interval by interval, so the grid is honoured exactly and the
method's own state (reversible Heun's) carries over between steps.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torchsde._brownian.brownian_base import BaseBrownian
from torchsde._core import methods as torchsde_methods
from torchsde._core.sdeint import check_contract

from ..errors import ArgumentError
from ..noise import BrownianNoise
from .base import Solver
from .registry import register_solver


class _ReverseTimeSDE(torch.nn.Module):
    noise_type = "diagonal"

    def __init__(self, process, shape, sde_type):
        super().__init__()
        self.process, self.shape, self.sde_type = process, shape, sde_type

    def f(self, u, y):
        x = y.reshape(self.shape)
        return -self.process.drift(x, -u).flatten(1)

    def g(self, u, y):
        return self.process.diffusion(-u) * torch.ones_like(y)


class _AdditiveReverseSDE(torch.nn.Module):
    """The reverse SDE as torchsde's additive-noise type: ``g(t) I`` applied to a vector
    without forming the matrix, and the drift of the last call kept, so the tableau's
    repeated evaluation at the same point (``f(t0, y0)`` in SRA1) costs no model call."""

    noise_type = "additive"

    def __init__(self, process, shape, sde_type):
        super().__init__()
        self.process, self.shape, self.sde_type = process, shape, sde_type
        self.last: tuple | None = None  # (u, y, f(u, y)); y is held, so it cannot be reused

    def f(self, u, y):
        if self.last is not None and self.last[1] is y and self.last[0] == float(u):
            return self.last[2]
        drift = -self.process.drift(y.reshape(self.shape), -u).flatten(1)
        self.last = (float(u), y, drift)
        return drift

    def g_prod(self, u, y, v):
        return self.process.diffusion(-u) * v


class _IntervalBrownian(BaseBrownian):
    """Brownian increments ``W`` and space-time Lévy areas ``U`` of the intervals asked for.

    Each new interval ``[ua, ub]`` (``h = ub - ua``) draws ``W = sqrt(h) z1`` and
    ``U = h (W / 2 + sqrt(h / 12) z2)`` (torchsde's convention) from the noise source,
    so a ``PerSampleNoise`` makes every sample's path its own, whatever the batch.
    A fixed-step method asks for each grid interval once (again: the same answer); it
    cannot refine an interval, which an adaptive torchsde solve would need.
    """

    def __init__(self, noise, template: torch.Tensor, levy_area_approximation: str):
        self.noise, self.template, self.levy = noise, template, levy_area_approximation
        self.last: tuple | None = None

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if tb is None or return_A:
            raise ArgumentError("only increments and space-time Levy areas of intervals are drawn")
        key = (float(ta), float(tb))
        if self.last is None or self.last[0] != key:
            h = key[1] - key[0]
            w = self.noise.fresh(self.template) * math.sqrt(h)
            u = h * (0.5 * w + math.sqrt(h / 12) * self.noise.fresh(self.template))
            self.last = (key, w, u)
        return (self.last[1], self.last[2]) if return_U else self.last[1]

    def __repr__(self) -> str:
        return f"_IntervalBrownian(shape={tuple(self.shape)}, levy={self.levy!r})"

    dtype = property(lambda self: self.template.dtype)
    device = property(lambda self: self.template.device)
    shape = property(lambda self: self.template.shape)
    levy_area_approximation = property(lambda self: self.levy)


class TorchSDESolver(Solver):
    """A torchsde method on the reverse SDE (additive noise), one grid step at a time."""

    uses = frozenset({"drift"})

    method: ClassVar[str]
    sde_type: ClassVar[str] = "ito"
    noise: ClassVar[type[torch.nn.Module]] = _ReverseTimeSDE
    levy_areas: ClassVar[tuple[str, ...]] = ("none", "space-time", "davie", "foster")

    def init(self, process, grid, x, noise):
        if isinstance(noise, BrownianNoise):
            if noise.interval.levy_area_approximation not in self.levy_areas:
                raise ArgumentError(
                    f"solver {self.info.name!r} needs a BrownianNoise built with "
                    f"levy_area_approximation in {self.levy_areas}"
                )
            bm = noise.interval
        else:  # the grid's intervals only, drawn from the noise source (per sample if it is)
            bm = _IntervalBrownian(noise, x.flatten(1), self.levy_areas[0])
        ours = self.noise(process, x.shape, self.sde_type)
        y0 = x.flatten(1)
        ts = torch.tensor([-grid[0], -grid[-1]], dtype=x.dtype, device=x.device)
        sde, y0, ts, bm, method, options = check_contract(
            ours, y0, ts, bm, self.method, False, {}, None, False
        )
        ours.last = None  # the shape probe's drift is not reused: one extra call, always
        solver = torchsde_methods.select(method=method, sde_type=sde.sde_type)(
            sde=sde,
            bm=bm,
            dt=grid[0] - grid[1],
            adaptive=False,
            rtol=0.0,
            atol=0.0,
            dt_min=0.0,
            options=options,
        )
        return solver, solver.init_extra_solver_state(-grid[0], y0)

    def expected_nfe(self, grid):
        return super().expected_nfe(grid) + 1  # torchsde probes the drift once for its shape

    def step(self, process, t0, t1, x, state, noise):
        solver, extra = state
        if t1 == 0.0:  # start point only: an Euler–Maruyama step on the same path
            increment = solver.bm(
                torch.tensor(-t0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
            ).reshape(x.shape)
            x = torch.add(x, process.drift(x, t0), alpha=t1 - t0)
            x = torch.add(x, increment, alpha=process.diffusion(t0))
            return x, state
        u0, u1 = (torch.tensor(-t, dtype=torch.float64) for t in (t0, t1))
        y, extra = solver.step(u0, u1, x.flatten(1), extra)
        return y.reshape(x.shape), (solver, extra)


@register_solver(
    "srk",
    kind="sde",
    order=1.5,
    nfe_per_step=2,
    stochastic=True,
    reference="Rößler 2010, SRA1 (torchsde SRK on additive noise), strong order 1.5",
)
class StochasticRungeKutta(TorchSDESolver):
    """Stochastic Runge–Kutta for additive noise (Rößler's SRA1), strong order 1.5; torchsde.

    The reverse SDE's noise ``g(t) dW`` is additive, so SRA1 applies: two drift
    evaluations a step (at ``t0`` and at ``t0 + 3h/4``) and the increment's space-time
    Lévy area.  (torchsde's diagonal-noise tableau, SRID2, evaluates the drift 10 times a
    step, which left 2–5 steps at NFE ≤ 50: too few for any SDE method, and it diverged.)
    """

    method = "srk"
    noise = _AdditiveReverseSDE
    levy_areas = ("space-time", "davie", "foster")


@register_solver(
    "milstein",
    kind="sde",
    order=1.0,
    nfe_per_step=1,
    stochastic=True,
    reference="Milstein 1974 (torchsde, derivative-free form)",
)
class Milstein(TorchSDESolver):
    """Milstein (Itô), strong order 1; equals Euler–Maruyama on additive noise; torchsde."""

    method = "milstein"
