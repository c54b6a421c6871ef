"""The reverse-time process of ``(sde, model)`` for one solve.

For a forward SDE ``dx = f x dt + g dW`` with marginals ``p_t``, both

    reverse SDE:  dx = [f x - g^2 score(x, t)] dt + g dW_bar   (dt < 0)
    PF-ODE:       dx/dt = f x - g^2 score(x, t) / 2

carry ``p_T`` back to ``p_0`` (Anderson 1982; Song et al. 2021, eqs. 6 and 13).
``solve`` builds one :class:`ReverseProcess` per call.  It owns the SDE's
coefficients (alpha, sigma, lambda, f, g^2) as plain floats, computed for the
whole grid in one batched op each, and converts the model's prediction lazily
into what a solver asks for (``denoise``, ``eps``, ``score``, ``velocity``,
``drift``) through the one conversion of :mod:`sde_diffusion.parametrization`.
It counts model calls (``nfe``) and network passes (each call adds the model's
``passes_per_call``, which guidance sets per call).
The state keeps the dtype of ``x`` whatever the model computes in: the model's
output is cast back at this boundary.  Every model call is counted.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .errors import ArgumentError
from .models import Cond, as_model, check_cond, slice_cond
from .parametrization import Coefficients, coefficients, convert_at
from .sdes import SDE, Time

__all__ = ["ModelOutputError", "ReverseProcess", "ScoreFn"]

ScoreFn = Any
"""What the solvers accept: a model ``model(x, t, cond)`` with a ``prediction``, or a
plain ``score_fn(x, t)`` returning the score (wrapped by :func:`sde_diffusion.as_model`)."""


class ModelOutputError(ArgumentError):
    """A model returned something that does not match ``x``."""


class ReverseProcess:
    """Reverse SDE and PF-ODE of ``(sde, model)`` on a batch shaped like ``x``.

    Times are Python floats (from the validated grid, or a solver's own
    intermediate times); coefficients of a time are computed once and cached.
    """

    def __init__(
        self,
        model: ScoreFn,
        sde: SDE,
        x: Tensor,
        *,
        cond: Cond = None,
        grid: list[float] | None = None,
    ):
        self.model, self.sde = as_model(model), sde
        self.prediction = self.model.prediction
        self.cond = check_cond(cond, x.shape[0], x.device)
        self.batch, self.dtype, self.device = x.shape[0], x.dtype, x.device
        self.nfe = self.network_passes = 0
        self._coefficients: dict[float, Coefficients] = {}
        self._times: dict[float, Tensor] = {}
        if grid:
            self.precompute(grid)

    def precompute(self, times: list[float]) -> None:
        """Coefficients and ``(B,)`` time tensors of ``times``, in one batched op each."""
        times = [t for t in dict.fromkeys(map(float, times)) if t not in self._coefficients]
        if not times:
            return
        t = torch.tensor(times, dtype=torch.float64)
        values = zip(
            *(
                v.expand(len(times)).tolist()
                for v in (
                    self.sde.alpha(t),
                    self.sde.sigma(t),
                    self.sde.drift_coefficient(t),
                    self.sde.diffusion(t) ** 2,
                    self.sde.log_snr(t),
                )
            ),
            strict=True,
        )
        for time, (alpha, sigma, f, g2, lam) in zip(times, values, strict=True):
            self._coefficients[time] = Coefficients(alpha, sigma, f, g2, lam)
        rows = torch.tensor(times, dtype=self.dtype, device=self.device)
        self._times.update(zip(times, rows[:, None].repeat(1, self.batch).unbind(0), strict=True))

    def at(self, t: Time) -> Coefficients:
        """``alpha, sigma, f, g^2, log_snr`` at ``t`` as floats."""
        t = float(t)
        if t not in self._coefficients:
            self.precompute([t])
        return self._coefficients[t]

    def times_at_log_snr(self, lams: list[float]) -> list[float]:
        """The times whose ``log(alpha/sigma)`` are ``lams`` (a solver's stage points),
        with their coefficients computed in one batched op each."""
        if not lams:
            return []
        times = self.sde.t_from_log_snr(torch.tensor(lams, dtype=torch.float64)).tolist()
        self.precompute(times)
        return times

    def batch_time(self, t: Time) -> Tensor:
        """``t`` as shape ``(B,)`` on ``x``'s device and dtype."""
        t = float(t)
        if t not in self._times:
            self.precompute([t])
        return self._times[t]

    def evaluate(self, x: Tensor, t: Time) -> Tensor:
        """The model's raw prediction (``self.prediction``) at ``(x, t)``, in ``x``'s dtype."""
        return self._call(x, self.batch_time(t), self.cond)

    def predict_rows(self, kind: str, x: Tensor, t: Tensor, rows: Tensor | slice) -> Tensor:
        """The prediction ``kind`` for the batch rows ``rows`` (indices or a slice), ``x`` holding
        those rows, each at its own time ``t`` (shape ``(len(rows),)``): what solvers with
        per-sample step sizes call.  Counted as one model call."""
        out = self._call(x, t.to(x.dtype), slice_cond(self.cond, rows))
        return convert_at(out, x, self.prediction, kind, coefficients(self.sde, t, x))

    def _call(self, x: Tensor, t: Tensor, cond: Cond) -> Tensor:
        out = self.model(x, t, cond)
        if self.nfe == 0:
            _check_output(out, x)
        self.nfe += 1
        self.network_passes += getattr(self.model, "passes_per_call", 1)  # what this call cost
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def predict(self, kind: str, x: Tensor, t: Time) -> Tensor:
        """The model's prediction at ``(x, t)`` converted to ``kind``."""
        return convert_at(self.evaluate(x, t), x, self.prediction, kind, self.at(t))

    def denoise(self, x: Tensor, t: Time) -> Tensor:
        """``E[x_0 | x_t = x]`` (the denoiser)."""
        return self.predict("x0", x, t)

    def denoise_guided(self, x: Tensor, t: Time) -> tuple[Tensor, Tensor]:
        """``(x̂_0, x̂_0 of the unconditional branch)`` at ``(x, t)`` in one model call: what
        CFG++ samplers ask for (they step along the unconditional noise and land on the
        guided estimate).  A model without such a branch (no
        :class:`~sde_diffusion.guidance.ClassifierFreeGuidance`, or a call it made without
        guidance) gives the same tensor twice, and a CFG++ sampler is its base sampler."""
        model, c = self.model, self.at(t)
        asks = hasattr(model, "keep_unconditional")  # guidance computes it even at scale 1
        if asks:
            before, model.keep_unconditional = model.keep_unconditional, True
        try:
            out = self.evaluate(x, t)
        finally:
            if asks:
                model.keep_unconditional = before
        guided = convert_at(out, x, self.prediction, "x0", c)
        unconditional = getattr(self.model, "unconditional", None)
        if unconditional is None:
            return guided, guided
        return guided, convert_at(unconditional.to(x.dtype), x, self.prediction, "x0", c)

    def eps(self, x: Tensor, t: Time) -> Tensor:
        """The noise estimate ``(x - alpha x̂_0) / sigma``."""
        return self.predict("eps", x, t)

    def score(self, x: Tensor, t: Time) -> Tensor:
        """``grad_x log p_t(x)``."""
        return self.predict("score", x, t)

    def velocity(self, x: Tensor, t: Time) -> Tensor:
        """PF-ODE velocity ``dx/dt = f x - g^2 score / 2``."""
        return self.predict("velocity", x, t)

    def drift(self, x: Tensor, t: Time) -> Tensor:
        """Reverse-SDE drift ``f x - g^2 score``."""
        c = self.at(t)
        return torch.add(x * c.f, self.score(x, t), alpha=-c.g2)

    def diffusion(self, t: Time) -> float:
        """``g(t)``."""
        return self.at(t).g2 ** 0.5


def _check_output(out: Any, x: Tensor) -> None:
    if not isinstance(out, Tensor):
        raise ModelOutputError(f"the model must return a tensor, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ModelOutputError(
            f"the model returned shape {tuple(out.shape)} for x of shape "
            f"{tuple(x.shape)}; it must return its prediction with x's shape"
        )
    if out.device != x.device or not out.is_floating_point():
        raise ModelOutputError(
            f"the model returned {out.dtype} on {out.device} for x of {x.dtype} on "
            f"{x.device}; it must return floating-point values on x's device"
        )
