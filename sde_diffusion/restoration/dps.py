"""Diffusion posterior sampling, DPS (Chung et al. 2023, Algorithm 1, Gaussian noise).

After each solver step from ``x_i`` the state moves down the gradient of the measurement
error of the denoised estimate, ``x_{i−1} ← x_{i−1} − ζ' ∇_{x_i} ‖y − A x̂_0(x_i)‖`` (per
sample), as the authors' code does (Algorithm 1 writes ``ζ_i ∇‖y − A x̂_0‖²`` with ``ζ_i =
ζ'/‖y − A x̂_0‖``, twice that step).  The step has length about ``ζ'`` whatever the error,
so DPS does not meet the measurement exactly: it hovers within about ``ζ'`` of it.  The
gradient is a vector–Jacobian product through the network at the step's first model call
(the solver's own evaluation there, so no extra forward pass): that call costs 2 network
passes, a forward and a backward.  ``ζ' = 1`` by default, with DDPM (``ddim``,
``η = 1``) as in the paper; the correction is per step, so its strength depends on the
number of steps (the paper uses 1000).  DPS needs no SVD and works with any operator.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ..loop import StepHook
from ..models import as_model
from ..parametrization import convert
from ..sampling import SampleResult, solve
from .base import Method, number, split_measurement, with_measurement
from .observation import Observation

__all__ = ["DPS", "DataGradient"]


class DataGradient:
    """The model, also computing DPS's correction at the first call of each step."""

    def __init__(self, model: Any, sde, obs: Observation, scale: float):
        self.model, self.sde, self.obs, self.scale = as_model(model), sde, obs, scale
        self.prediction = self.model.prediction
        self.passes_per_call = 1
        self.pending: Tensor | None = None

    def __call__(self, x: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        y, cond = split_measurement(cond)
        if self.pending is not None:  # later stages of the step: the plain model
            self.passes_per_call = 1
            return self.model(x, t, cond)
        self.passes_per_call = 2
        with torch.enable_grad(), torch.inference_mode(False):
            x_in = x.detach().clone().requires_grad_(True)
            out = self.model(x_in, t.clone(), cond)
            x0 = convert(out, x_in, t, self.sde, self.prediction, "x0")
            error = self.obs.residual(x0, y).flatten(1).norm(dim=1)
            (grad,) = torch.autograd.grad(error.sum(), x_in)
        self.pending = self.scale * grad.to(x.dtype)
        return out.detach()

    def take(self) -> Tensor:
        pending, self.pending = self.pending, None
        return pending


class DPS(Method):
    """Gradient steps on ``‖y − A x̂_0‖`` after each solver step (see the module)."""

    name = "dps"
    reference = "Chung et al. 2023, Algorithm 1"
    default_solver = "ddim"
    default_solver_options: ClassVar[dict[str, Any]] = {"eta": 1.0}
    through_decoder = True

    def __init__(self, scale: float = 1.0):
        self.scale = number("scale", scale, 0.0, 1e4)

    def run(self, model, sde, obs, x_T, grid, solver, generator, cond=None) -> SampleResult:
        guided = DataGradient(model, sde, obs, self.scale)
        after_step = self.hook(guided, sde, obs, x_T, generator)
        cond = with_measurement(obs.y.to(x_T), cond)
        return solve(guided, sde, x_T, grid, solver, cond=cond, generator=generator,
                     after_step=after_step)  # fmt: skip

    def hook(self, guided: DataGradient, sde, obs, x_T, generator) -> StepHook:
        """What follows each solver step: DPS's gradient step."""

        def after_step(t0: float, t1: float, x: Tensor) -> Tensor:
            return x - guided.take()

        return after_step
