"""What a model predicts, and the one conversion between predictions.

For ``x_t = alpha x_0 + sigma eps`` under a linear SDE ``dx = f x dt + g dW`` the
usual network targets are one quantity in different coordinates, each affine in
``(x_t, eps)``: ``value = p x_t + q eps`` with

    eps       p = 0                 q = 1
    x0        p = 1 / alpha         q = -sigma / alpha
    score     p = 0                 q = -1 / sigma                      (Tweedie)
    v         p = -sigma / alpha    q = (alpha^2 + sigma^2) / alpha     (Salimans & Ho 2022)
    velocity  p = f                 q = g^2 / (2 sigma)

``velocity`` is the probability-flow ODE's ``dx/dt = f x - g^2 score / 2`` in the
SDE's own time (a flow-matching network's output).  Converting ``source -> target``
recovers ``eps = (value - p_s x_t) / q_s`` and applies the target's row: one formula
(:func:`convert_at`) for every pair, with per-sample tensors or plain floats.  The
``eps`` basis keeps the usual conversions free of cancellation as ``sigma -> 0``.

Every parametrisation of :class:`ScoreModel` feeds the network ``c_in x_t`` with
``c_in = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2)`` (unit input variance) and
conditions it on ``c_noise = log(sigma / alpha) / 4`` (EDM's, for any SDE), so a
network never sees raw time ranges.  ``"edm"`` is EDM's preconditioning
(Karras et al. 2022, table 1) in the scaled variables ``x / alpha`` and
``nu = sigma / alpha``: ``D = c_skip x~ + c_out F(c_in x~, c_noise)``; it predicts ``x0``.
``"consistency"`` is the same with the boundary moved to the SDE's ``nu_min = nu(t_min)``:
``c_skip = sigma_data^2 / ((nu - nu_min)^2 + sigma_data^2)``, ``c_out = (nu - nu_min)
sigma_data / sqrt(nu^2 + sigma_data^2)``, so ``D(x, t_min) = x / alpha`` exactly: the
boundary condition of a consistency model (Song et al. 2023, eq. 5 and appendix C).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .errors import ArgumentError
from .sdes import SDE, Time, append_dims

__all__ = [
    "PARAMETRIZATIONS",
    "PREDICTIONS",
    "Coefficients",
    "ScoreModel",
    "convert",
    "convert_at",
    "edm_coefficients",
]

Parametrization = Literal["eps", "x0", "v", "score", "edm", "consistency"]
Prediction = Literal["eps", "x0", "v", "score", "velocity"]
PARAMETRIZATIONS = ("eps", "x0", "v", "score", "velocity", "edm", "consistency")
PREDICTIONS = ("eps", "x0", "v", "score", "velocity")
"""What a model may declare it predicts (its ``prediction`` attribute)."""
SKIP_PARAMETRIZATIONS = ("edm", "consistency")  # c_skip x + c_out F: they predict x0


@dataclass(frozen=True)
class Coefficients:
    """``alpha, sigma, f, g^2`` (and ``log_snr``) at one time: floats, or tensors
    that broadcast against ``x``."""

    alpha: Any
    sigma: Any
    f: Any = 0.0
    g2: Any = 0.0
    log_snr: Any = None

    def weights(self, kind: str) -> tuple[Any, Any]:
        """``(p, q)`` with ``prediction = p x_t + q eps`` for prediction ``kind``."""
        a, s = self.alpha, self.sigma
        if kind == "eps":
            return 0.0, 1.0
        if kind == "x0":
            return 1 / a, -s / a
        if kind == "score":
            return 0.0, -1 / s
        if kind == "v":
            return -s / a, (a**2 + s**2) / a
        if kind == "velocity":
            return self.f, self.g2 / (2 * s)
        raise ArgumentError(f"unknown prediction {kind!r}; choose one of {', '.join(PREDICTIONS)}")


def check_prediction(kind: str) -> str:
    """``kind`` if it names a prediction, else a clear error."""
    if kind not in PREDICTIONS:
        raise ArgumentError(f"unknown prediction {kind!r}; choose one of {', '.join(PREDICTIONS)}")
    return kind


def convert_at(value: Tensor, x_t: Tensor, source: str, target: str, c: Coefficients) -> Tensor:
    """Convert a prediction at ``x_t`` from ``source`` to ``target`` with coefficients ``c``."""
    if source == target:
        return value
    p_s, q_s = c.weights(source)
    p_t, q_t = c.weights(target)
    on_value = q_t / q_s
    on_x = p_t if _is_zero(p_s) else p_t - on_value * p_s
    if _is_zero(on_x):
        return value * on_value
    if isinstance(on_value, float) and isinstance(on_x, float):
        return torch.add(x_t * on_x, value, alpha=on_value)
    return value * on_value + x_t * on_x


def _is_zero(v: Any) -> bool:
    return isinstance(v, float) and v == 0.0


def coefficients(sde: SDE, t: Time, x: Tensor) -> Coefficients:
    """Per-sample coefficients of ``sde`` at ``t`` (a number or ``(B,)``), shaped for ``x``."""

    def shaped(v: Tensor) -> Tensor:
        return append_dims(v.to(x).expand(x.shape[0]), x.ndim)

    return Coefficients(
        shaped(sde.alpha(t)),
        shaped(sde.sigma(t)),
        shaped(sde.drift_coefficient(t)),
        shaped(sde.diffusion(t) ** 2),
    )


def convert(value: Tensor, x_t: Tensor, t: Time, sde: SDE, source: str, target: str) -> Tensor:
    """Convert a prediction at ``(x_t, t)`` between ``eps``, ``x0``, ``v``, ``score``, ``velocity``.

    ``t`` is a number or a tensor of shape ``(B,)``.
    """
    return convert_at(value, x_t, source, target, coefficients(sde, t, x_t))


def edm_coefficients(nu: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``c_skip, c_out, c_in, c_noise`` of EDM at noise level ``nu`` (table 1)."""
    total = nu**2 + sigma_data**2
    return sigma_data**2 / total, nu * sigma_data / total.sqrt(), 1 / total.sqrt(), nu.log() / 4


class ScoreModel(nn.Module):
    """A network as a model: ``model(x, t, cond)`` returns its prediction.

    ``net(x_in, c_noise)`` (or ``net(x_in, c_noise, cond)`` when a condition is
    given) takes the preconditioned input and noise conditioning of shape ``(B,)``;
    its output means ``parametrization``.  ``prediction`` says what ``forward``
    returns (``"edm"`` and ``"consistency"`` yield ``"x0"``).
    """

    def __init__(
        self,
        net: nn.Module,
        sde: SDE,
        parametrization: Parametrization = "eps",
        sigma_data: float = 0.5,
    ):
        super().__init__()
        if parametrization not in PARAMETRIZATIONS:
            raise ArgumentError(
                f"unknown parametrization {parametrization!r}; choose one of "
                f"{', '.join(PARAMETRIZATIONS)}"
            )
        if not sigma_data > 0:
            raise ArgumentError(f"sigma_data must be positive, got {sigma_data!r}")
        self.net, self.sde = net, sde
        self.parametrization, self.sigma_data = parametrization, float(sigma_data)

    @property
    def prediction(self) -> str:
        """What ``forward`` returns: the parametrisation, ``x0`` for ``edm`` and
        ``consistency``."""
        return "x0" if self.parametrization in SKIP_PARAMETRIZATIONS else self.parametrization

    @property
    def dtype(self) -> torch.dtype | None:
        """The network's parameter dtype (``None`` for a network without parameters)."""
        return next((p.dtype for p in self.net.parameters()), None)

    def _net(self, x_in: Tensor, c_noise: Tensor, extra: tuple) -> Tensor:
        """The network in its own dtype; the output comes back in the input's."""
        dtype = self.dtype or x_in.dtype
        return self.net(x_in.to(dtype), c_noise.to(dtype), *extra).to(x_in.dtype)

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """The prediction (``self.prediction``) at ``(x, t)``, in ``x``'s dtype.

        Time coefficients, preconditioning and EDM's skip term are computed in
        ``x``'s dtype; only the network runs in its own (float32 state, bf16 network).
        """
        extra = () if cond is None else (cond,)
        alpha_b = self.sde.alpha(t).to(x).expand(x.shape[0])
        sigma_b = self.sde.sigma(t).to(x).expand(x.shape[0])
        nu = sigma_b / alpha_b
        c_noise = nu.log() / 4
        alpha, sigma = append_dims(alpha_b, x.ndim), append_dims(sigma_b, x.ndim)
        if self.parametrization in SKIP_PARAMETRIZATIONS:
            c_skip, c_out, c_in, _ = edm_coefficients(nu, self.sigma_data)
            if self.parametrization == "consistency":
                c_skip, c_out = self._boundary(nu)
            c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in (c_skip, c_out, c_in))
            x_scaled = x / alpha
            return c_skip * x_scaled + c_out * self._net(c_in * x_scaled, c_noise, extra)
        c_in = 1 / (alpha**2 * self.sigma_data**2 + sigma**2).sqrt()
        return self._net(c_in * x, c_noise, extra)

    def _boundary(self, nu: Tensor) -> tuple[Tensor, Tensor]:
        """The consistency parametrisation's ``c_skip, c_out``: 1 and 0 at ``t_min``."""
        nu_min = (-self.sde.log_snr(self.sde.t_min)).exp().to(nu)
        shifted = (nu - nu_min).clamp(min=0)
        c_skip = self.sigma_data**2 / (shifted**2 + self.sigma_data**2)
        return c_skip, shifted * self.sigma_data / (nu**2 + self.sigma_data**2).sqrt()

    def score(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """The score ``grad_x log p_t(x)`` as the network sees it."""
        return convert(self(x, t, cond), x, t, self.sde, self.prediction, "score")

    def denoise(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """``E[x_0 | x_t = x]`` as the network sees it."""
        return convert(self(x, t, cond), x, t, self.sde, self.prediction, "x0")
