"""Linear SDEs of score-based diffusion.

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

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

__all__ = [
    "EDMSDE",
    "SDE",
    "SDE_TYPES",
    "VESDE",
    "VPSDE",
    "DiscreteVPSDE",
    "RectifiedFlow",
    "SubVPSDE",
    "append_dims",
    "as_time",
    "broadcast_coefficient",
    "sde_config",
    "sde_from_config",
]

Time = float | Tensor


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton axes to ``v`` until it has ``ndim`` dimensions."""
    if v.ndim > ndim:
        raise ValueError(f"cannot broadcast a tensor of rank {v.ndim} to rank {ndim}")
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


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def _positive_range(low_name: str, low: float, high_name: str, high: float) -> tuple[float, float]:
    """``(low, high)`` checked to be positive, finite and ``low < high``."""
    low, high = _positive(low_name, low), _positive(high_name, high)
    if low >= high:
        raise ValueError(
            f"{low_name} must be smaller than {high_name}, got {low_name}={low!r} "
            f"and {high_name}={high!r}"
        )
    return low, high


class SDE(ABC):
    """A linear forward SDE ``dx = f(t) x dt + g(t) dW`` on ``[0, T]``.

    A subclass defines :meth:`drift`, :meth:`diffusion`, :meth:`alpha` and
    :meth:`sigma` (and may set ``T`` and ``t_min``); marginals, the prior, the
    log-SNR and its inverse follow.  The prior is ``N(0, sigma(T)^2 I)``, the
    marginal ``p_T`` for data that ``alpha(T)`` has washed out.
    """

    T: float = 1.0
    t_min: float = 1e-3

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
                raise ValueError(f"time t={t!r} is outside [0, T] = [0, {self.T!r}] for {self!r}")
            return torch.tensor(float(t), dtype=torch.float64)
        if t.device.type == "cpu" and t.numel():
            outside = (t < 0) | (t > upper)
            if bool(outside.any()):
                bad = t[outside].flatten()[0].item()
                raise ValueError(f"time t={bad!r} is outside [0, T] = [0, {self.T!r}] for {self!r}")
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
            raise ValueError("prior_logp expects a batch of shape (B, *event), got a scalar")
        s2 = self.prior_std**2
        n = z[0].numel()
        sq = z.flatten(1).pow(2).sum(-1) if z.ndim > 1 else z.pow(2)
        return -0.5 * n * math.log(2 * math.pi * s2) - 0.5 * sq / s2

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({params})"

    def _params(self) -> dict[str, float]:
        return {}


class _LinearBetaSDE(SDE):
    """Shared schedule of VP and sub-VP: ``beta(t) = beta_min + t (beta_max - beta_min)``."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, t_min: float = 1e-3):
        self.beta_min, self.beta_max = _positive_range("beta_min", beta_min, "beta_max", beta_max)
        self.t_min = _positive_range("t_min", t_min, "T", self.T)[0]

    def beta(self, t: Time) -> Tensor:
        t = self.check_time(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: Time) -> Tensor:
        """``log alpha(t) = -(1/2) int_0^t beta = -t^2 (bmax - bmin)/4 - t bmin / 2``."""
        t = self.check_time(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t: Time) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def drift(self, x: Tensor, t: Time) -> Tensor:
        return -0.5 * broadcast_coefficient(self.beta(t), x) * x

    def t_from_log_alpha(self, log_alpha: Tensor) -> Tensor:
        """Root of ``(bmax - bmin) t^2 / 4 + bmin t / 2 + log alpha = 0`` in ``[0, T]``."""
        a, b = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
        t = (-b + torch.sqrt(b**2 - 4 * a * log_alpha)) / (2 * a)
        return t.clamp(0.0, self.T)

    def _params(self) -> dict[str, float]:
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "t_min": self.t_min}


class VPSDE(_LinearBetaSDE):
    """Variance preserving SDE (DDPM in continuous time), Song et al. 2021 eq. 11.

    ``dx = -beta(t)/2 x dt + sqrt(beta(t)) dW``; ``alpha^2 + sigma^2 = 1``.
    """

    def diffusion(self, t: Time) -> Tensor:
        return torch.sqrt(self.beta(t))

    def sigma(self, t: Time) -> Tensor:
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def t_from_log_snr(self, lam: Tensor | float) -> Tensor:
        """Closed form: ``alpha^2 = sigmoid(2 lambda)``."""
        lam = as_time(lam).to(torch.float64)
        return self.t_from_log_alpha(-0.5 * torch.nn.functional.softplus(-2 * lam))


class SubVPSDE(_LinearBetaSDE):
    """Sub-variance preserving SDE, Song et al. 2021 eq. 29.

    ``dx = -beta/2 x dt + sqrt(beta (1 - alpha^4)) dW``; ``sigma = 1 - alpha^2``.
    """

    def diffusion(self, t: Time) -> Tensor:
        return torch.sqrt(self.beta(t) * -torch.expm1(4 * self.log_alpha(t)))

    def sigma(self, t: Time) -> Tensor:
        return -torch.expm1(2 * self.log_alpha(t))

    def t_from_log_snr(self, lam: Tensor | float) -> Tensor:
        """Closed form: ``alpha / (1 - alpha^2) = e^lambda`` is a quadratic in alpha."""
        lam = as_time(lam).to(torch.float64)
        alpha = 2 / (torch.sqrt(1 + 4 * torch.exp(2 * lam)) + 1) * torch.exp(lam)
        return self.t_from_log_alpha(torch.log(alpha))


class VESDE(SDE):
    """Variance exploding SDE (SMLD in continuous time), Song et al. 2021 eq. 9.

    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, ``f = 0``,
    ``g = sigma(t) sqrt(2 log(sigma_max / sigma_min))``, ``alpha = 1``.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, *, t_min: float = 1e-5):
        self.sigma_min, self.sigma_max = _positive_range(
            "sigma_min", sigma_min, "sigma_max", sigma_max
        )
        self.t_min = _positive_range("t_min", t_min, "T", self.T)[0]
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def drift(self, x: Tensor, t: Time) -> Tensor:
        self.check_time(t)
        return torch.zeros_like(x)

    def diffusion(self, t: Time) -> Tensor:
        return self.sigma(t) * math.sqrt(2 * self._log_ratio)

    def alpha(self, t: Time) -> Tensor:
        return torch.ones_like(self.check_time(t))

    def sigma(self, t: Time) -> Tensor:
        return self.sigma_min * torch.exp(self.check_time(t) * self._log_ratio)

    def t_from_log_snr(self, lam: Tensor | float) -> Tensor:
        lam = as_time(lam).to(torch.float64)
        return ((-lam - math.log(self.sigma_min)) / self._log_ratio).clamp(0.0, self.T)

    def _params(self) -> dict[str, float]:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "t_min": self.t_min}


class EDMSDE(SDE):
    """The EDM formulation, Karras et al. 2022: ``sigma(t) = t``, ``alpha = 1``.

    ``dx = sqrt(2 t) dW`` on ``[0, sigma_max]``; the PF-ODE velocity is
    ``-t * score = (x - D(x, t)) / t``.  ``t_min = sigma_min``, ``T = sigma_max``.
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.sigma_min, self.sigma_max = _positive_range(
            "sigma_min", sigma_min, "sigma_max", sigma_max
        )
        self.T = self.sigma_max
        self.t_min = self.sigma_min

    def drift(self, x: Tensor, t: Time) -> Tensor:
        self.check_time(t)
        return torch.zeros_like(x)

    def diffusion(self, t: Time) -> Tensor:
        return torch.sqrt(2 * self.check_time(t))

    def alpha(self, t: Time) -> Tensor:
        return torch.ones_like(self.check_time(t))

    def sigma(self, t: Time) -> Tensor:
        return self.check_time(t).clone()

    def t_from_log_snr(self, lam: Tensor | float) -> Tensor:
        return torch.exp(-as_time(lam).to(torch.float64)).clamp(0.0, self.T)

    def _params(self) -> dict[str, float]:
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class RectifiedFlow(SDE):
    """Rectified flow / flow matching: the straight path ``x_t = (1 - t) x_0 + t eps``.

    ``alpha = 1 - t``, ``sigma = t`` (Liu et al. 2023; Lipman et al. 2023; Stable
    Diffusion 3 and Flux).  As a linear SDE ``f = -1/(1 - t)`` and
    ``g^2 = d sigma^2/dt - 2 f sigma^2 = 2 t / (1 - t)``; the PF-ODE velocity is
    ``eps - x_0``, what a flow-matching network predicts (the ``velocity`` kind).
    ``f`` and ``g`` are singular at ``t = 1``, where ``alpha = 0``, so the process
    runs on ``[t_min, T]`` with ``T = 1 - 1e-3`` by default: the prior ``N(0, T^2 I)``
    differs from ``p_T`` by the ``alpha(T) = 1e-3`` of the data left in it.
    """

    def __init__(self, t_min: float = 1e-3, T: float = 0.999):
        self.t_min, self.T = _positive_range("t_min", t_min, "T", T)
        if self.T >= 1:
            raise ValueError(f"T must be below 1 (alpha(1) = 0), got {T!r}")

    def drift(self, x: Tensor, t: Time) -> Tensor:
        return broadcast_coefficient(-1.0 / (1.0 - self.check_time(t)), x) * x

    def diffusion(self, t: Time) -> Tensor:
        t = self.check_time(t)
        return torch.sqrt(2 * t / (1 - t))

    def alpha(self, t: Time) -> Tensor:
        return 1.0 - self.check_time(t)

    def sigma(self, t: Time) -> Tensor:
        return self.check_time(t).clone()

    def t_from_log_snr(self, lam: Tensor | float) -> Tensor:
        """Closed form: ``(1 - t)/t = e^lambda``, so ``t = sigmoid(-lambda)``."""
        return torch.sigmoid(-as_time(lam).to(torch.float64)).clamp(0.0, self.T)

    def _params(self) -> dict[str, float]:
        return {"t_min": self.t_min, "T": self.T}


class DiscreteVPSDE(SDE):
    """A VP SDE from a discrete DDPM schedule ``alphas_cumprod`` (ᾱ_0 … ᾱ_{N-1}).

    Level ``k`` sits at ``t_k = (k + 1) / N``; ``log ᾱ`` is piecewise linear in
    ``t`` between levels, as in DPM-Solver's ``NoiseScheduleVP("discrete")``, and 0
    at ``t = 0`` (clean data).  So ``alpha = sqrt(ᾱ)`` and ``sigma = sqrt(1 - ᾱ)``
    are exact at every level, ``f = (1/2) d log ᾱ / dt`` and ``g^2 = -2 f``.
    ``t_min = 1/N`` (level 0), ``T = 1`` (level N - 1).
    """

    def __init__(self, alphas_cumprod: Tensor | list[float]):
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if abar.numel() < 2 or not bool(((abar > 0) & (abar <= 1)).all()):
            raise ValueError("alphas_cumprod must hold at least 2 values in (0, 1]")
        if not bool((abar.diff() < 0).all()):
            raise ValueError("alphas_cumprod must decrease strictly")
        self.num_levels = abar.numel()
        self.t_min = 1.0 / self.num_levels
        self._times = torch.arange(self.num_levels + 1, dtype=torch.float64) / self.num_levels
        self._log_abar = torch.cat([torch.zeros(1, dtype=torch.float64), abar.log()])
        self._on: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _table(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._on:
            self._on[device] = (self._times.to(device), self._log_abar.to(device))
        return self._on[device]

    def _segment(self, t: Time) -> tuple[Tensor, Tensor, Tensor]:
        """``(t as float64, log ᾱ at the segment's left end, slope)`` for each time."""
        t = self.check_time(t)
        t64 = t.to(torch.float64)
        times, log_abar = self._table(t.device)
        i = torch.searchsorted(times, t64.contiguous(), right=True).clamp(1, self.num_levels)
        slope = (log_abar[i] - log_abar[i - 1]) * self.num_levels
        return t64 - times[i - 1], log_abar[i - 1], slope

    def log_alpha_bar(self, t: Time) -> Tensor:
        """``log ᾱ(t)``, piecewise linear in ``t``; dtype follows ``t`` (float64 for numbers)."""
        offset, left, slope = self._segment(t)
        return (left + slope * offset).to(as_time(t).dtype)

    def alpha(self, t: Time) -> Tensor:
        return torch.exp(0.5 * self.log_alpha_bar(t))

    def sigma(self, t: Time) -> Tensor:
        return torch.sqrt(-torch.expm1(self.log_alpha_bar(t)))

    def drift_coefficient(self, t: Time) -> Tensor:
        return (0.5 * self._segment(t)[2]).to(as_time(t).dtype)

    def drift(self, x: Tensor, t: Time) -> Tensor:
        return broadcast_coefficient(self.drift_coefficient(t), x) * x

    def diffusion(self, t: Time) -> Tensor:
        return torch.sqrt(-2 * self.drift_coefficient(t))

    def t_from_log_snr(self, lam: Tensor | float) -> Tensor:
        """Exact inverse: ``log ᾱ = -softplus(-2 lambda)``, then the linear segment."""
        lam = as_time(lam).to(torch.float64)
        target = torch.nn.functional.softplus(-2 * lam)  # -log ᾱ, increasing in t
        times, log_abar = self._table(lam.device)
        i = torch.searchsorted(-log_abar, target.contiguous()).clamp(1, self.num_levels)
        left, right = -log_abar[i - 1], -log_abar[i]
        t = times[i - 1] + (target - left) / (right - left) / self.num_levels
        return t.clamp(0.0, self.T)

    def _params(self) -> dict[str, float]:
        return {"num_levels": self.num_levels}


SDE_TYPES: dict[str, type[SDE]] = {
    "vp": VPSDE,
    "subvp": SubVPSDE,
    "ve": VESDE,
    "edm": EDMSDE,
    "rectified_flow": RectifiedFlow,
}


def sde_config(sde: SDE) -> dict[str, object]:
    """A JSON-ready description of a built-in SDE (for checkpoints)."""
    for name, cls in SDE_TYPES.items():
        if type(sde) is cls:
            return {"type": name, **sde._params()}
    raise ValueError(f"only built-in SDEs can be saved, got {type(sde).__name__}")


def sde_from_config(config: dict[str, object]) -> SDE:
    """Rebuild an SDE from :func:`sde_config` output or a name (``vp``, ``ve``, ...)."""
    options = dict(config)
    name = str(options.pop("type", "")).lower()
    if name not in SDE_TYPES:
        raise ValueError(f"unknown SDE {name!r}; choose one of {', '.join(SDE_TYPES)}")
    return SDE_TYPES[name](**options)
