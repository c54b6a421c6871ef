"""Models from diffusers and k-diffusion as our models; our solvers inside diffusers pipelines.

- :func:`from_diffusers` turns a diffusers ``UNet2DModel`` / ``UNet2DConditionModel``
  and its scheduler into ``(model, sde)``: the SDE is the scheduler's own discrete
  VP schedule (:class:`~sde_diffusion.sdes.DiscreteVPSDE` from ``alphas_cumprod``),
  time ``t`` reaches the network as its timestep ``t N - 1`` (level ``k`` at
  ``t = (k + 1) / N``), ``cond`` becomes ``encoder_hidden_states`` or
  ``class_labels``, and the prediction kind is the scheduler's ``prediction_type``.
- :func:`scheduler_grid` is our time grid for the timesteps a diffusers scheduler
  visits after ``set_timesteps``, so our solvers can run on exactly its grid.
- :class:`DiffusersAutoencoder` is a diffusers ``AutoencoderKL`` as a latent model's
  autoencoder (:class:`~sde_diffusion.latent.LatentModel`): ``encode`` and ``decode`` in
  the score model's units, through the VAE's ``scaling_factor`` and ``shift_factor``.
- :func:`from_kdiffusion` turns a k-diffusion denoiser ``D(x, sigma, **extra)`` into
  ``(model, EDMSDE)``: ``sigma = t``, ``x0``-prediction.
- :class:`DiffusersScheduler` runs our one-evaluation-per-step solvers as a
  diffusers scheduler:
  ``pipe.scheduler = DiffusersScheduler("dpmpp_2m", schedule=pipe.scheduler)``.

diffusers is an optional extra (``pip install "sde-diffusion[peers]"``), imported
only when a default schedule is needed; k-diffusion is never imported here.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
import types
from typing import Any

import torch
from torch import Tensor

from .errors import ArgumentError
from .models import Cond, ConditionError
from .sdes import EDMSDE, DiscreteVPSDE, RectifiedFlow, append_dims

__all__ = [
    "DiffusersAutoencoder",
    "DiffusersModel",
    "KDiffusionModel",
    "from_diffusers",
    "from_kdiffusion",
    "is_flow_matching",
    "kdiffusion_sampling",
    "model_timestep",
    "scheduler_grid",
]

PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
INSTALL = 'diffusers is not installed; install it with: pip install "sde-diffusion[peers]"'


def _diffusers():
    try:
        return importlib.import_module("diffusers")
    except ImportError as error:
        raise ImportError(INSTALL) from error


def _schedule(scheduler: Any) -> tuple[DiscreteVPSDE, str]:
    """The discrete VP SDE and our prediction kind of a diffusers scheduler."""
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None and is_flow_matching(scheduler):
        return RectifiedFlow(t_min=1 / scheduler.config.num_train_timesteps, T=1.0), "velocity"
    if abar is None:
        raise TypeError(
            f"{type(scheduler).__name__} has no alphas_cumprod table; pass a DDPM-family "
            "scheduler (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, ...) or a "
            "flow-matching one (FlowMatchEulerDiscreteScheduler)"
        )
    kind = scheduler.config.prediction_type
    if kind not in PREDICTION_TYPES:
        raise ArgumentError(
            f"prediction_type {kind!r} is not supported; use one of {', '.join(PREDICTION_TYPES)}"
        )
    return DiscreteVPSDE(abar), PREDICTION_TYPES[kind]


def is_flow_matching(scheduler: Any) -> bool:
    """Whether ``scheduler`` is of diffusers' flow-matching family (σ = t, no ᾱ table)."""
    return type(scheduler).__name__.startswith("FlowMatch")


def model_timestep(t: Tensor, sde: DiscreteVPSDE | RectifiedFlow) -> Tensor:
    """The network's timestep: ``t N - 1`` snapped to the integer levels it was trained on
    (a discrete table), or ``σ N`` with ``σ = t`` (flow matching, ``N = 1 / t_min``)."""
    if isinstance(sde, RectifiedFlow):
        return (t.to(torch.float64) * round(1 / sde.t_min)).to(torch.float32)
    k = t.to(torch.float64) * sde.num_levels - 1
    nearest = k.round()
    return torch.where((k - nearest).abs() < 1e-3, nearest, k).to(torch.float32)


class DiffusersModel:
    """A diffusers UNet as a model on the scheduler's discrete VP SDE."""

    def __init__(self, unet: torch.nn.Module, sde: DiscreteVPSDE | RectifiedFlow, prediction: str):
        self.unet, self.sde, self.prediction = unet, sde, prediction
        config = unet.config
        self.cross_attention = any(
            getattr(config, key, None) is not None
            for key in ("cross_attention_dim", "joint_attention_dim")
        )
        self.cond_name = "encoder_hidden_states" if self.cross_attention else "class_labels"
        # UNets take (sample, timestep, ...); transformers (SD3, Flux) name hidden_states first
        first = next(iter(inspect.signature(unet.forward).parameters))
        self.input_name = "hidden_states" if first == "hidden_states" else "sample"

    def __call__(self, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        if cond is None and self.cross_attention:
            raise ConditionError(
                "this UNet2DConditionModel needs cond: its encoder_hidden_states, "
                "(B, tokens, dim), or a dict of its keyword inputs"
            )
        extra = cond if isinstance(cond, dict) else {} if cond is None else {self.cond_name: cond}
        dtype = self.unet.dtype
        inputs = {self.input_name: x.to(dtype), "timestep": model_timestep(t, self.sde)}
        out = self.unet(**inputs, **extra, return_dict=False)[0]
        if out.shape[1] == 2 * x.shape[1]:  # learned variance: the mean part comes first
            out = out[:, : x.shape[1]]
        return out.to(x.dtype)

    def __repr__(self) -> str:
        return f"DiffusersModel({type(self.unet).__name__}, prediction={self.prediction!r})"


def from_diffusers(
    unet: torch.nn.Module, scheduler: Any
) -> tuple[DiffusersModel, DiscreteVPSDE | RectifiedFlow]:
    """``(model, sde)`` of a diffusers UNet and the scheduler it was trained with.

    The SDE interpolates the scheduler's ``alphas_cumprod`` (linear, scaled-linear,
    cosine or given betas alike, zero terminal SNR included), or, for a flow-matching
    scheduler, is ``RectifiedFlow(T=1)`` with a velocity model (SD3's and Flux's
    transformers take their ``cond`` as a dict: ``encoder_hidden_states``,
    ``pooled_projections``); ``epsilon``, ``sample`` and ``v_prediction``
    models are supported.
    """
    if not isinstance(unet, torch.nn.Module):
        raise TypeError(f"unet must be a diffusers model (a torch.nn.Module), got {unet!r:.80}")
    takes = inspect.signature(unet.forward).parameters
    if not hasattr(unet, "config") or "timestep" not in takes:
        raise TypeError(
            "unet must be a diffusers denoiser with a config, called as unet(sample, timestep, "
            f"...) (a UNet or an SD3/Flux transformer), got {type(unet).__name__}"
        )
    sde, prediction = _schedule(scheduler)
    return DiffusersModel(unet, sde, prediction), sde


class DiffusersAutoencoder(torch.nn.Module):
    """A diffusers ``AutoencoderKL`` (or any VAE with ``encode(x).latent_dist`` and
    ``decode(z).sample``) as a latent model's autoencoder.

    ``encode(x) = (mean - shift_factor) * scaling_factor`` of the posterior (a sample with
    ``generator``), ``decode(z) = vae.decode(z / scaling_factor + shift_factor)``: the
    latents Stable Diffusion's UNets are trained on.
    """

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        config = getattr(vae, "config", None)
        if config is None or not hasattr(vae, "encode") or not hasattr(vae, "decode"):
            raise TypeError(f"vae must be a diffusers AutoencoderKL, got {type(vae).__name__}")
        self.vae = vae
        self.scaling_factor = float(getattr(config, "scaling_factor", None) or 1.0)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)

    def encode(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Scaled latents of images ``x`` (in ``[-1, 1]``)."""
        posterior = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        z = posterior.mean if generator is None else posterior.sample(generator=generator)
        return ((z - self.shift_factor) * self.scaling_factor).to(x.dtype)

    def decode(self, z: Tensor) -> Tensor:
        """Images (in ``[-1, 1]``) of scaled latents ``z``."""
        raw = z / self.scaling_factor + self.shift_factor
        return self.vae.decode(raw.to(self.vae.dtype), return_dict=False)[0].to(z.dtype)


def _final_time(scheduler: Any, sde: DiscreteVPSDE) -> float:
    """Where a scheduler's last step lands: 0 for clean data, else the time of its ᾱ."""
    final = getattr(scheduler, "final_alpha_cumprod", None)  # DDIM
    if final is None:
        sigmas = getattr(scheduler, "sigmas", None)  # DPM-Solver family: VE sigma units
        final = 1.0 if sigmas is None else 1.0 / (1.0 + float(sigmas[-1]) ** 2)
    final = float(final)
    if final >= 1.0:
        return 0.0
    return float(sde.t_from_log_snr(0.5 * math.log(final / (1.0 - final))))


def scheduler_grid(scheduler: Any, sde: DiscreteVPSDE | None = None) -> Tensor:
    """Our time grid for the timesteps ``scheduler`` visits (call ``set_timesteps`` first).

    Timestep ``k`` is time ``(k + 1) / N``; the grid ends where the scheduler's
    last step lands (``t = 0`` when it returns clean data).
    """
    if is_flow_matching(scheduler):  # σ = t, ending at σ = 0
        return scheduler.sigmas.to(torch.float64).cpu()
    sde = sde or _schedule(scheduler)[0]
    times = (scheduler.timesteps.to(torch.float64).cpu() + 1) / sde.num_levels
    return torch.cat([times, torch.tensor([_final_time(scheduler, sde)], dtype=torch.float64)])


class KDiffusionModel:
    """A k-diffusion denoiser ``D(x, sigma, **extra)`` as an ``x0`` model with ``sigma = t``."""

    prediction = "x0"

    def __init__(self, denoiser: Any):
        self.denoiser = denoiser

    def __call__(self, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        if cond is None:
            return self.denoiser(x, t)
        if isinstance(cond, dict):
            return self.denoiser(x, t, **cond)
        return self.denoiser(x, t, cond=cond)


def from_kdiffusion(
    denoiser: Any, sigma_min: float | None = None, sigma_max: float | None = None
) -> tuple[KDiffusionModel, EDMSDE]:
    """``(model, EDMSDE)`` of a k-diffusion denoiser ``D(x, sigma, **extra)``.

    The noise range comes from the arguments, else from the denoiser's own
    ``sigma_min``/``sigma_max`` (k-diffusion's model wrappers have them), else
    EDM's defaults.  A tensor ``cond`` reaches it as ``cond=``, a dict as keywords.
    """
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable as D(x, sigma), got {denoiser!r:.80}")
    low = sigma_min if sigma_min is not None else getattr(denoiser, "sigma_min", 0.002)
    high = sigma_max if sigma_max is not None else getattr(denoiser, "sigma_max", 80.0)
    return KDiffusionModel(denoiser), EDMSDE(float(low), float(high))


def kdiffusion_sampling() -> types.ModuleType | None:
    """k-diffusion's ``sampling`` module, or ``None`` when k-diffusion is not installed.

    Its package ``__init__`` imports its training stack (torchvision, wandb, ...);
    ``sampling`` needs only ``utils.append_dims``, so it is loaded from the
    installed file with that one helper beside it (``pip install --no-deps k-diffusion``).
    """
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        return None
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = append_dims
    sys.modules.update({"k_diffusion": package, "k_diffusion.utils": utils})
    return importlib.import_module("k_diffusion.sampling")


def __getattr__(name: str) -> Any:
    """``DiffusersScheduler`` and its helpers load with diffusers, on first use."""
    if name in ("DiffusersScheduler", "FlowMatchingScheduler", "pipeline_solvers"):
        _diffusers()  # a clear sentence when diffusers is missing
        module = importlib.import_module(f"{__package__}.diffusers_scheduler")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
