"""Models from diffusers and k-diffusion as our models; our solvers inside diffusers pipelines.

- :func:`from_diffusers` turns a diffusers ``UNet2DModel`` / ``UNet2DConditionModel``
  and its scheduler into ``(model, sde)``: the SDE is the scheduler's own discrete
  VP schedule (:class:`~sde_diffusion.sdes.DiscreteVPSDE` from ``alphas_cumprod``),
  time ``t`` reaches the network as its timestep ``t N - 1`` (level ``k`` at
  ``t = (k + 1) / N``), ``cond`` becomes ``encoder_hidden_states`` or
  ``class_labels``, and the prediction kind is the scheduler's ``prediction_type``.
- :func:`scheduler_grid` is our time grid for the timesteps a diffusers scheduler
  visits after ``set_timesteps``, so our solvers can run on exactly its grid.
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
import math
import sys
import types
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import ArgumentError
from .models import Cond, ConditionError
from .noise import GeneratorNoise
from .reverse import ReverseProcess
from .sdes import EDMSDE, DiscreteVPSDE, append_dims
from .solvers.base import Solver
from .solvers.registry import get_solver, solver_names
from .timesteps import timesteps, validate_grid

__all__ = [
    "DiffusersModel",
    "DiffusersScheduler",
    "KDiffusionModel",
    "from_diffusers",
    "from_kdiffusion",
    "kdiffusion_sampling",
    "once_a_step",
    "pipeline_solvers",
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
    if abar is None:
        raise TypeError(
            f"{type(scheduler).__name__} has no alphas_cumprod table; pass a DDPM-family "
            "scheduler (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, ...)"
        )
    kind = scheduler.config.prediction_type
    if kind not in PREDICTION_TYPES:
        raise ArgumentError(
            f"prediction_type {kind!r} is not supported; use one of {', '.join(PREDICTION_TYPES)}"
        )
    return DiscreteVPSDE(abar), PREDICTION_TYPES[kind]


def model_timestep(t: Tensor, sde: DiscreteVPSDE) -> Tensor:
    """The network's timestep ``t N - 1``, snapped to the integer levels it was trained on."""
    k = t.to(torch.float64) * sde.num_levels - 1
    nearest = k.round()
    return torch.where((k - nearest).abs() < 1e-3, nearest, k).to(torch.float32)


class DiffusersModel:
    """A diffusers UNet as a model on the scheduler's discrete VP SDE."""

    def __init__(self, unet: torch.nn.Module, sde: DiscreteVPSDE, prediction: str):
        self.unet, self.sde, self.prediction = unet, sde, prediction
        self.cross_attention = getattr(unet.config, "cross_attention_dim", None) is not None
        self.cond_name = "encoder_hidden_states" if self.cross_attention else "class_labels"

    def __call__(self, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        if cond is None and self.cross_attention:
            raise ConditionError(
                "this UNet2DConditionModel needs cond: its encoder_hidden_states, "
                "(B, tokens, dim), or a dict of its keyword inputs"
            )
        extra = cond if isinstance(cond, dict) else {} if cond is None else {self.cond_name: cond}
        dtype = self.unet.dtype
        out = self.unet(x.to(dtype), model_timestep(t, self.sde), **extra, return_dict=False)[0]
        if out.shape[1] == 2 * x.shape[1]:  # learned variance: the mean part comes first
            out = out[:, : x.shape[1]]
        return out.to(x.dtype)

    def __repr__(self) -> str:
        return f"DiffusersModel({type(self.unet).__name__}, prediction={self.prediction!r})"


def from_diffusers(unet: torch.nn.Module, scheduler: Any) -> tuple[DiffusersModel, DiscreteVPSDE]:
    """``(model, sde)`` of a diffusers UNet and the scheduler it was trained with.

    The SDE interpolates the scheduler's ``alphas_cumprod`` (linear, scaled-linear,
    cosine or given betas alike); ``epsilon``, ``sample`` and ``v_prediction``
    models are supported.
    """
    if not isinstance(unet, torch.nn.Module):
        raise TypeError(f"unet must be a diffusers model (a torch.nn.Module), got {unet!r:.80}")
    sde, prediction = _schedule(scheduler)
    return DiffusersModel(unet, sde, prediction), sde


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


@dataclass
class SchedulerOutput:
    """What ``DiffusersScheduler.step`` returns (diffusers reads ``prev_sample``)."""

    prev_sample: Tensor


class _GivenOutput:
    """The model a pipeline already evaluated: returns that output, once."""

    def __init__(self, prediction: str):
        self.prediction, self.output = prediction, None

    def __call__(self, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        out, self.output = self.output, None
        if out is None:
            raise RuntimeError("the solver asked for a second model evaluation within one step")
        return out


def once_a_step(solver: Solver) -> bool:
    """Whether ``solver`` evaluates the model once per step of a grid (what a diffusers
    pipeline's loop does), read from its ``expected_nfe``: adaptive solvers give none."""
    probe = [1.0, 0.75, 0.5]  # two steps that do not end at t = 0
    return solver.expected_nfe(probe) == len(probe) - 1


def pipeline_solvers() -> list[str]:
    """The registered solvers that fit a diffusers pipeline with their default options."""
    return [name for name in solver_names() if once_a_step(get_solver(name))]


class DiffusersScheduler:
    """One of our solvers as a diffusers scheduler, for ``pipe.scheduler = ...``.

    ``schedule`` is the diffusers scheduler the model was trained with (its
    ``alphas_cumprod`` and ``prediction_type``; a default ``DDPMScheduler`` if
    omitted).  ``set_timesteps(n)`` builds ``sd.timesteps(sde, n, spacing,
    rho=rho, to_zero=to_zero)`` on its discrete VP SDE, so a pipeline gives the
    same images as ``sd.solve`` on that grid from the same noise.  Only solvers
    that evaluate the model once a step fit a pipeline's loop; others raise.
    The solver state is float32 for half-precision pipelines.
    """

    order = 1
    init_noise_sigma = 1.0

    def __init__(
        self,
        solver: str = "dpmpp_2m",
        *,
        schedule: Any = None,
        spacing: str = "karras",
        rho: float = 7.0,
        to_zero: bool = True,
        **options: Any,
    ):
        self.solver = get_solver(solver, **options)
        if not once_a_step(self.solver):
            raise ArgumentError(
                f"solver {self.solver.name!r} evaluates the model more than once a step (or "
                "chooses its own steps); a diffusers pipeline evaluates once a step: use one "
                f"of {', '.join(pipeline_solvers())}"
            )
        schedule = schedule if schedule is not None else _diffusers().DDPMScheduler()
        self.sde, self.prediction = _schedule(schedule)
        self.config = schedule.config
        self.spacing, self.rho, self.to_zero = spacing, rho, to_zero
        self.timesteps: Tensor | None = None

    def set_timesteps(self, num_inference_steps: int, device: Any = None) -> None:
        ts = timesteps(
            self.sde, num_inference_steps, self.spacing, rho=self.rho, to_zero=self.to_zero
        )
        self.grid = validate_grid(self.sde, ts)
        times = torch.tensor(self.grid[:-1], dtype=torch.float64)
        self.timesteps = model_timestep(times.float(), self.sde).to(device)  # as solve feeds it
        self.num_inference_steps = num_inference_steps
        self.step_index, self._run = 0, None

    def scale_model_input(self, sample: Tensor, timestep: Any = None) -> Tensor:
        return sample

    def step(
        self,
        model_output: Tensor,
        timestep: Any,
        sample: Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[Tensor]:
        """Advance ``sample`` one grid step with the pipeline's ``model_output``."""
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps(num_inference_steps) before step")
        i = self.step_index
        if i >= len(self.grid) - 1:
            raise RuntimeError(f"all {len(self.grid) - 1} steps are done; call set_timesteps again")
        wide = torch.float32 if sample.dtype in (torch.float16, torch.bfloat16) else sample.dtype
        x = sample.to(wide)
        if self._run is None:
            given = _GivenOutput(self.prediction)
            process = ReverseProcess(given, self.sde, x, grid=self.grid)
            noise = GeneratorNoise(generator)
            self._run = (given, process, self.solver.init(process, self.grid, x, noise))
        given, process, state = self._run
        if model_output.shape[1] == 2 * sample.shape[1]:  # learned variance
            model_output = model_output[:, : sample.shape[1]]
        given.output = model_output
        x, state = self.solver.step(
            process, self.grid[i], self.grid[i + 1], x, state, GeneratorNoise(generator)
        )
        self._run = (given, process, state)
        self.step_index += 1
        prev = x.to(sample.dtype)
        return SchedulerOutput(prev) if return_dict else (prev,)
