"""The SDE base class and the helpers every SDE file shares.

Every SDE here is linear in ``x``: the forward process

    dx = f(t) x dt + g(t) dW,   t in [0, T],

has Gaussian transition kernels, so its marginals have the closed form
``x_t = alpha(t) x_0 + sigma(t) eps`` with ``eps ~ N(0, I)``.  The moment
equations ``d alpha / dt = f alpha`` and ``d sigma^2 / dt = 2 f sigma^2 + g^2``
tie the four coefficients together (Song et al. 2021, "Score-Based Generative
Modeling through SDEs", eqs. 5.50-5.51; Karras et al. 2022, "EDM", eq. 4).

Time arguments may be Python numbers (returned as float64 CPU scalars, which
broadcast against tensors on any device without a host sync) or tensors of
any shape.  Coefficients broadcast against ``x`` with :func:`append_dims`.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import ArgumentError

__all__ = [
    "SDE",
    "Time",
    "append_dims",
    "as_time",
    "broadcast_coefficient",
    "init_parameters",
    "positive",
    "positive_range",
]

Time = float | Tensor


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton axes to ``v`` until it has ``ndim`` dimensions."""
    if v.ndim > ndim:
        raise ArgumentError(f"cannot broadcast a tensor of rank {v.ndim} to rank {ndim}")
    return v.reshape(*v.shape, *([1] * (ndim - v.ndim)))


def broadcast_coefficient(value: Tensor, x: Tensor) -> Tensor:
    """A time coefficient ready to multiply ``x``.

    A 0-d CPU value stays a CPU scalar (it broadcasts against tensors on any
    device with no copy and no host sync); a per-sample value of shape ``(B,)``
    moves to ``x`` and gains trailing axes.
    """
    if value.ndim == 0 and value.device.type == "cpu":
        return value
    return append_dims(value.to(x), x.ndim)


def as_time(t: Time) -> Tensor:
    """A time as a tensor: Python numbers become float64 CPU scalars."""
    if isinstance(t, Tensor):
        return t
    return torch.tensor(float(t), dtype=torch.float64)


def positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ArgumentError(f"{name} must be a positive finite number, got {value!r}")
    return value


def positive_range(low_name: str, low: float, high_name: str, high: float) -> tuple[float, float]:
    """``(low, high)`` checked to be positive, finite and ``low < high``."""
    low, high = positive(low_name, low), positive(high_name, high)
    if low >= high:
        raise ArgumentError(
            f"{low_name} must be smaller than {high_name}, got {low_name}={low!r} "
            f"and {high_name}={high!r}"
        )
    return low, high


def init_parameters(cls: type) -> list[str]:
    """Names of the keyword arguments ``cls.__init__`` takes (what a config holds)."""
    params = inspect.signature(cls.__init__).parameters.values()
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in params if p.name != "self" and p.kind not in variadic]


class SDE(ABC):
    """A linear forward SDE ``dx = f(t) x dt + g(t) dW`` on ``[0, T]``.

    A subclass defines :meth:`drift`, :meth:`diffusion`, :meth:`alpha` and
    :meth:`sigma` (and may set ``T`` and ``t_min``); marginals, the prior, the
    log-SNR and its inverse follow.  The prior is ``N(0, sigma(T)^2 I)``, the
    marginal ``p_T`` for data that ``alpha(T)`` has washed out.
    """

    T: float = 1.0
    t_min: float = 1e-3
    name: ClassVar[str] = ""
    """The registry name (``register_sde``), what ``--sde`` and checkpoints call it."""

    @abstractmethod
    def drift(self, x: Tensor, t: Time) -> Tensor:
        """``f(x, t)``, the forward drift, same shape as ``x``."""

    @abstractmethod
    def diffusion(self, t: Time) -> Tensor:
        """``g(t)``, the diffusion coefficient, shape of ``t``."""

    @abstractmethod
    def alpha(self, t: Time) -> Tensor:
        """Signal scale of the marginal: ``x_t = alpha(t) x_0 + sigma(t) eps``."""

    @abstractmethod
    def sigma(self, t: Time) -> Tensor:
        """Noise scale of the marginal: ``x_t = alpha(t) x_0 + sigma(t) eps``."""

    # -- derived quantities -------------------------------------------------

    def drift_coefficient(self, t: Time) -> Tensor:
        """``f(t)`` of the linear drift ``f(x, t) = f(t) x``, shape of ``t``."""
        t = as_time(t)
        return self.drift(torch.ones_like(t), t)

    def check_time(self, t: Time) -> Tensor:
        """``t`` as a tensor, checked to lie in ``[0, T]``.

        Accelerator tensors are not checked (that would synchronise the host);
        the sampling driver validates its whole grid once instead.
        """
        upper = self.T * (1 + 1e-6)
        if not isinstance(t, Tensor):
            if not 0.0 <= t <= upper:
                raise ArgumentError(
                    f"time t={t!r} is outside [0, T] = [0, {self.T!r}] for {self!r}"
                )
            return torch.tensor(float(t), dtype=torch.float64)
        if t.device.type == "cpu" and t.numel():
            outside = (t < 0) | (t > upper)
            if bool(outside.any()):
                bad = t[outside].flatten()[0].item()
                raise ArgumentError(
                    f"time t={bad!r} is outside [0, T] = [0, {self.T!r}] for {self!r}"
                )
        return t

    def marginal(self, x0: Tensor, t: Time) -> tuple[Tensor, Tensor]:
        """Mean ``alpha(t) x0`` and std ``sigma(t)`` of ``p(x_t | x_0)``.

        A ``t`` of shape ``(B,)`` gives one time per sample; the std is
        returned broadcastable against ``x0``.
        """
        alpha = broadcast_coefficient(self.alpha(t), x0)
        sigma = broadcast_coefficient(self.sigma(t), x0)
        return alpha * x0, sigma

    def log_snr(self, t: Time) -> Tensor:
        """``lambda(t) = log(alpha / sigma)``, strictly decreasing in ``t``."""
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def t_from_log_snr(self, lam: Tensor | float) -> Tensor:
        """Inverse of :meth:`log_snr` on ``[0, T]``, by bisection in float64.

        Values of ``lam`` beyond the range of ``log_snr`` clamp to ``0`` or ``T``.
        """
        lam = as_time(lam).to(torch.float64)
        lo = torch.zeros_like(lam)
        hi = torch.full_like(lam, self.T)
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam  # log_snr decreases: the root lies later
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior ``N(0, prior_std^2 I)``."""
        return float(self.sigma(self.T))

    def prior_sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Draw ``x_T`` from the prior ``N(0, prior_std^2 I)``."""
        if generator is not None and device is None:
            device = generator.device
        z = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
        return z * self.prior_std

    def prior_logp(self, z: Tensor) -> Tensor:
        """Per-sample log-density of the prior, shape ``(B,)``: ``z`` is ``(B, *event)``."""
        if z.ndim < 1:
            raise ArgumentError("prior_logp expects a batch of shape (B, *event), got a scalar")
        s2 = self.prior_std**2
        n = z[0].numel()
        sq = z.flatten(1).pow(2).sum(-1) if z.ndim > 1 else z.pow(2)
        return -0.5 * n * math.log(2 * math.pi * s2) - 0.5 * sq / s2

    def params(self) -> dict[str, Any]:
        """The constructor's arguments, read from ``__init__``'s parameters (tensors as lists)."""
        values = {p: getattr(self, p) for p in init_parameters(type(self))}
        return {k: v.tolist() if isinstance(v, Tensor) else v for k, v in values.items()}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({params})"
