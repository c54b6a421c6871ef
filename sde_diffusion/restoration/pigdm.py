"""Pseudoinverse-guided diffusion, ΠGDM (Song, Vahdat, Mardani & Kautz 2023, eq. 7–8).

ΠGDM models ``p(x_0 | x_t)`` as ``N(x̂_0(x_t), r_t² I)`` with ``r_t² = ν_t² s_d² / (ν_t²
+ s_d²)`` (the posterior variance of data of standard deviation ``s_d`` at noise level
``ν = σ/α``), so that ``p(y | x_t) ≈ N(A x̂_0, r_t² A Aᵀ + σ_y² I)`` and

    ∇ log p(y | x_t) ≈ (∂x̂_0/∂x_t)ᵀ Aᵀ (r_t² A Aᵀ + σ_y² I)⁻¹ (y − A x̂_0),

a vector–Jacobian product through the network, added with weight ``scale`` to the score:
a model wrapper, so any registered solver runs it (DDIM with ``η = 1`` by default).  Each
call costs 2 network passes (forward and backward).  The inverse uses the SVD of ``A``.
For a Gaussian prior ``N(μ, s_d² I)`` the approximation is exact and ΠGDM samples the
true posterior (tested).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ..models import as_model
from ..parametrization import convert
from ..sampling import SampleResult, solve
from .base import Method, number, split_measurement, with_measurement
from .observation import Observation

__all__ = ["PiGDM"]


class _Guided:
    """The score of ``model`` plus ``scale`` times ΠGDM's ``∇ log p(y | x_t)``."""

    prediction = "score"
    passes_per_call = 2

    def __init__(self, model: Any, sde, obs: Observation, scale: float, data_std: float):
        self.model, self.sde, self.obs = as_model(model), sde, obs
        self.scale, self.data_var = scale, data_std**2

    def __call__(self, x: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        y, cond = split_measurement(cond)
        obs, sigma_y2 = self.obs, self.obs.sigma_y**2
        spectrum = obs.spectrum(x)
        nu2 = (self.sde.sigma(t) / self.sde.alpha(t)).to(x) ** 2
        r2 = (nu2 * self.data_var / (nu2 + self.data_var))[:, None]  # (B, 1)
        with torch.enable_grad(), torch.inference_mode(False):
            x_in = x.detach().clone().requires_grad_(True)
            out = self.model(x_in, t.clone(), cond)
            x0 = convert(out, x_in, t, self.sde, self.model.prediction, "x0")
            measured = obs.forward(x0)
            error = (y.to(x) - measured).detach()
            on_u = error @ spectrum.u
            weighted = (on_u / (r2 * spectrum.s**2 + sigma_y2)) @ spectrum.u.T
            if sigma_y2 > 0:  # directions of y that A cannot reach: noise alone
                weighted = weighted + (error - on_u @ spectrum.u.T) / sigma_y2
            (grad,) = torch.autograd.grad((measured * weighted).sum(), x_in)
        score = convert(out.detach(), x, t, self.sde, self.model.prediction, "score")
        return score + self.scale * grad.to(score.dtype)

    def __repr__(self) -> str:
        return f"PiGDM({self.model!r}, scale={self.scale})"


class PiGDM(Method):
    """The score plus ΠGDM's measurement guidance (see the module)."""

    name = "pigdm"
    reference = "Song, Vahdat, Mardani & Kautz 2023, eq. 7-8"
    needs_svd = True
    default_solver = "ddim"
    default_solver_options: ClassVar[dict[str, Any]] = {"eta": 1.0}

    def __init__(self, scale: float = 1.0, data_std: float = 1.0):
        self.scale = number("scale", scale, 0.0, 1e4)
        self.data_std = number("data_std", data_std, 0.0, 1e6, open_lo=True)

    def run(self, model, sde, obs, x_T, grid, solver, generator, cond=None) -> SampleResult:
        guided = _Guided(model, sde, obs, self.scale, self.data_std)
        cond = with_measurement(obs.y.to(x_T), cond)
        return solve(guided, sde, x_T, grid, solver, cond=cond, generator=generator)
