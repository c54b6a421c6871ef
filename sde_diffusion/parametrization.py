"""What a network predicts, and how that becomes a score.

For ``x_t = alpha x_0 + sigma eps`` the four usual targets are one quantity in
different coordinates (Tweedie: ``E[x_0 | x_t] = (x_t + sigma^2 score) / alpha``):

    score = -eps / sigma
    x_0   = (x_t - sigma eps) / alpha
    v     = alpha eps - sigma x_0                 (Salimans & Ho 2022)

and ``(x_0, eps) = ((alpha x_t - sigma v), (sigma x_t + alpha v)) / (alpha^2 + sigma^2)``.

Every parametrisation feeds the network ``c_in x_t`` with
``c_in = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2)`` (unit input variance) and
conditions it on ``c_noise = log(sigma / alpha) / 4`` (EDM's, for any SDE), so a
network never sees raw time ranges.  ``"edm"`` is EDM's preconditioning
(Karras et al. 2022, table 1) in the scaled variables ``x / alpha`` and
``nu = sigma / alpha``: ``D = c_skip x~ + c_out F(c_in x~, c_noise)``.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from .sdes import SDE, Time, append_dims

__all__ = ["PARAMETRIZATIONS", "ScoreModel", "convert", "edm_coefficients"]

Parametrization = Literal["eps", "x0", "v", "score", "edm"]
PARAMETRIZATIONS = ("eps", "x0", "v", "score", "edm")
TARGETS = ("eps", "x0", "v", "score")


def _to_eps(kind: str, value: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    if kind == "eps":
        return value
    if kind == "score":
        return -sigma * value
    if kind == "x0":
        return (x_t - alpha * value) / sigma
    if kind == "v":
        return (sigma * x_t + alpha * value) / (alpha**2 + sigma**2)
    raise ValueError(f"unknown prediction kind {kind!r}; choose one of {', '.join(TARGETS)}")


def _from_eps(kind: str, eps: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    if kind == "eps":
        return eps
    if kind == "score":
        return -eps / sigma
    x0 = (x_t - sigma * eps) / alpha
    if kind == "x0":
        return x0
    if kind == "v":
        return alpha * eps - sigma * x0
    raise ValueError(f"unknown prediction kind {kind!r}; choose one of {', '.join(TARGETS)}")


def convert(value: Tensor, x_t: Tensor, t: Time, sde: SDE, source: str, target: str) -> Tensor:
    """Convert a prediction at ``(x_t, t)`` between ``eps``, ``x0``, ``v`` and ``score``.

    ``t`` is a number or a tensor of shape ``(B,)``.
    """
    alpha, sigma = (append_dims(c, x_t.ndim) for c in _per_sample(sde, t, x_t))
    return _from_eps(target, _to_eps(source, value, x_t, alpha, sigma), x_t, alpha, sigma)


def _per_sample(sde: SDE, t: Time, x: Tensor) -> tuple[Tensor, Tensor]:
    """``alpha(t)`` and ``sigma(t)`` as ``(B,)`` tensors on ``x``'s device and dtype."""
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    return alpha.to(x).expand(x.shape[0]), sigma.to(x).expand(x.shape[0])


def edm_coefficients(nu: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``c_skip, c_out, c_in, c_noise`` of EDM at noise level ``nu`` (table 1)."""
    total = nu**2 + sigma_data**2
    return sigma_data**2 / total, nu * sigma_data / total.sqrt(), 1 / total.sqrt(), nu.log() / 4


class ScoreModel(nn.Module):
    """A network wrapped as ``score_fn(x, t)`` for every solver, plus ``denoise``.

    ``net(x_in, c_noise, *extra)`` takes the preconditioned input and noise
    conditioning of shape ``(B,)``; its output means ``parametrization``.
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
            raise ValueError(
                f"unknown parametrization {parametrization!r}; choose one of "
                f"{', '.join(PARAMETRIZATIONS)}"
            )
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data!r}")
        self.net, self.sde = net, sde
        self.parametrization, self.sigma_data = parametrization, float(sigma_data)

    def prediction(self, x: Tensor, t: Tensor, *extra) -> tuple[str, Tensor]:
        """The network's raw output and what it means (``"edm"`` yields ``x0``)."""
        alpha_b, sigma_b = _per_sample(self.sde, t, x)
        nu = sigma_b / alpha_b
        c_noise = nu.log() / 4
        alpha, sigma = append_dims(alpha_b, x.ndim), append_dims(sigma_b, x.ndim)
        if self.parametrization == "edm":
            c_skip, c_out, c_in, _ = (
                append_dims(c, x.ndim) for c in edm_coefficients(nu, self.sigma_data)
            )
            x_scaled = x / alpha
            out = self.net(c_in * x_scaled, c_noise, *extra)
            return "x0", c_skip * x_scaled + c_out * out
        c_in = 1 / (alpha**2 * self.sigma_data**2 + sigma**2).sqrt()
        return self.parametrization, self.net(c_in * x, c_noise, *extra)

    def forward(self, x: Tensor, t: Tensor, *extra) -> Tensor:
        """The score ``grad_x log p_t(x)``."""
        kind, value = self.prediction(x, t, *extra)
        return convert(value, x, t, self.sde, kind, "score")

    def denoise(self, x: Tensor, t: Tensor, *extra) -> Tensor:
        """``E[x_0 | x_t = x]`` as the network sees it."""
        kind, value = self.prediction(x, t, *extra)
        return convert(value, x, t, self.sde, kind, "x0")
