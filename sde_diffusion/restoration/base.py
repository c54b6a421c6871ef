"""What every restoration method shares: its options, the loop it runs, its result.

A method is built with its options (checked at once) and ``run`` on a model, an
:class:`~sde_diffusion.restoration.observation.Observation`, a starting batch ``x_T`` and
a grid.  Methods that wrap the model or correct the state after each step run on any
registered (fixed-grid) solver through :func:`~sde_diffusion.sampling.solve`; methods with
an update rule of their own step through :class:`OwnLoop`, which counts the network calls
the same way (:class:`~sde_diffusion.reverse.ReverseProcess`).
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import ArgumentError, NonFiniteError
from ..models import Cond
from ..reverse import ReverseProcess, ScoreFn
from ..sampling import SampleResult
from ..sdes import SDE
from ..solvers.base import Solver
from .observation import Observation

__all__ = ["Method", "OwnLoop", "number", "split_measurement", "whole", "with_measurement"]

MEASUREMENT_KEY = "_measurement"
_TENSOR_KEY = "_cond"


def with_measurement(y: Tensor, cond: Cond) -> dict[str, Tensor]:
    """``y`` and the model's ``cond`` as one per-sample condition, so that a solver that
    evaluates some rows only (the adaptive ones) hands a model wrapper the matching rows
    of ``y`` too."""
    if cond is None:
        return {MEASUREMENT_KEY: y}
    if isinstance(cond, dict):
        return {MEASUREMENT_KEY: y, **cond}
    return {MEASUREMENT_KEY: y, _TENSOR_KEY: cond}


def split_measurement(cond: dict[str, Tensor]) -> tuple[Tensor, Cond]:
    """The rows of ``y`` and the model's own ``cond`` back from :func:`with_measurement`."""
    rest = {k: v for k, v in cond.items() if k != MEASUREMENT_KEY}
    if not rest:
        return cond[MEASUREMENT_KEY], None
    if set(rest) == {_TENSOR_KEY}:
        return cond[MEASUREMENT_KEY], rest[_TENSOR_KEY]
    return cond[MEASUREMENT_KEY], rest


def number(name: str, value: Any, lo: float, hi: float, *, open_lo: bool = False) -> float:
    """``value`` as a float in ``[lo, hi]`` (``(lo, hi]`` with ``open_lo``), else a sentence."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentError(f"{name} must be a number, got {value!r}")
    inside = (lo < value if open_lo else lo <= value) and value <= hi
    if not (math.isfinite(value) and inside):
        bracket = "(" if open_lo else "["
        raise ArgumentError(f"{name} must lie in {bracket}{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def whole(name: str, value: Any, lo: int, hi: int) -> int:
    """``value`` as a whole number in ``[lo, hi]``, else a sentence."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ArgumentError(f"{name} must be a whole number in [{lo}, {hi}], got {value!r}")
    return value


class Method:
    """A way to sample ``p(x | y)`` with a model of ``p(x)``; see the module."""

    name: ClassVar[str]
    reference: ClassVar[str]
    needs_svd: ClassVar[bool] = False
    default_solver: ClassVar[str | None] = None
    """The registered solver run by default; ``None``: the method's own update rule."""
    default_solver_options: ClassVar[dict[str, Any]] = {}
    takes_solver: ClassVar[bool] = True
    """Whether a registered solver may run the method (else only its own rule)."""
    through_decoder: ClassVar[bool] = False
    """Whether the method needs only ``A``'s forward map and its gradient, so that on a
    latent model it measures the decoded images (else it needs a linear operator)."""

    def options(self) -> dict[str, Any]:
        """The method's settings, as results and reports show them."""
        return dict(vars(self))

    def run(
        self,
        model: ScoreFn,
        sde: SDE,
        obs: Observation,
        x_T: Tensor,
        grid: list[float],
        solver: Solver | None,
        generator: torch.Generator,
        cond: Cond = None,
    ) -> SampleResult:
        raise NotImplementedError

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({settings})"


class OwnLoop:
    """The bookkeeping of a method with its own update: the process (calls counted), VE
    coordinates ``u = x/α`` with noise level ``ν = σ/α``, fresh noise, the result."""

    def __init__(self, method: Method, model: ScoreFn, sde: SDE, x_T: Tensor, grid, generator,
                 cond: Cond = None):  # fmt: skip
        self.method, self.grid, self.generator = method, grid, generator
        self.process = ReverseProcess(model, sde, x_T, cond=cond, grid=grid)
        self.start = time.perf_counter()

    def alpha(self, t: float) -> float:
        return self.process.at(t).alpha

    def nu(self, t: float) -> float:
        """The noise level ``σ(t)/α(t)`` of ``x_t/α(t) = x_0 + ν ε``."""
        c = self.process.at(t)
        return c.sigma / c.alpha

    def denoise(self, x: Tensor, t: float) -> Tensor:
        return self.process.denoise(x, t)

    def noise(self, like: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=self.generator, device=like.device,
                           dtype=like.dtype)  # fmt: skip

    def result(self, x: Tensor, solver: str | None = None) -> SampleResult:
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError(
                f"{self.method.name} produced non-finite values; try more steps or a smaller "
                "step size"
            )
        return SampleResult(
            x=x, nfe=self.process.nfe, network_passes=self.process.network_passes,
            solver=solver or self.method.name, ts=torch.tensor(self.grid),
            wall_time=time.perf_counter() - self.start, options=self.method.options(),
        )  # fmt: skip
