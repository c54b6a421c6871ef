"""Our solvers as a real diffusers scheduler (``SchedulerMixin`` + ``ConfigMixin``).

Built the way every diffusers scheduler is swapped in, from the config of the scheduler it
replaces, which carries the model's training table (β schedule or trained betas, the
prediction type)::

    pipe.scheduler = DiffusersScheduler.from_config(pipe.scheduler.config, solver="dpmpp_2m")

It saves and loads like any scheduler (``save_pretrained`` / ``from_pretrained``), keeps the
keys of the config it came from, so swapping back (``DPMSolverMultistepScheduler.
from_config(pipe.scheduler.config)``) gets the same table, and steps any registered solver
that evaluates the model at most once a step on ``sd.timesteps(sde, n, spacing)`` of the
table's discrete VP SDE, or on the ``timesteps=`` / ``sigmas=`` a pipeline passes.  ``step``
locates its ``timestep`` in the schedule, so a pipeline that starts mid-schedule (img2img:
``set_begin_index``, ``add_noise``) steps from the right time.  This module needs diffusers
(``pip install "sde-diffusion[peers]"``); ``sde_diffusion.adapters`` imports it on first use.
"""

from __future__ import annotations

import inspect
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from torch import Tensor

from .adapters import PREDICTION_TYPES, model_timestep
from .errors import ArgumentError
from .loop import integrate
from .models import Cond, FunctionModel
from .noise import GeneratorNoise, NoiseSource
from .reverse import ReverseProcess
from .sdes import DiscreteVPSDE, RectifiedFlow
from .solvers.base import Solver
from .solvers.registry import get_solver, solver_names
from .timesteps import SCHEDULES, validate_grid
from .timesteps import timesteps as time_grid
from .tuning import load_grid

__all__ = [
    "DiffusersScheduler",
    "FlowMatchingScheduler",
    "GeneratorListNoise",
    "SchedulerOutput",
    "pipeline_solvers",
]


TABLE_KEYS = (  # the entries that are the model's, not ours: every diffusers scheduler takes them
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "rescale_betas_zero_snr",
    "shift",
    "use_dynamic_shifting",
    "base_shift",
    "max_shift",
    "base_image_seq_len",
    "max_image_seq_len",
)
LEVEL_SPACINGS = ("linspace", "leading", "trailing")  # diffusers' timestep_spacing
SIGMA_SPACINGS = ("beta",)  # diffusers' use_beta_sigmas (Lee et al. 2024)
SPACING_ALIASES = {"exponential": "logsnr"}  # use_exponential_sigmas: uniform in log σ


@dataclass
class SchedulerOutput:
    """What ``DiffusersScheduler.step`` returns (diffusers reads ``prev_sample``)."""

    prev_sample: Tensor


def evaluations_a_step(solver: Solver) -> int | None:
    """Model evaluations per grid step of ``solver`` away from t = 0 (``None``: adaptive)."""
    probe = [1.0, 0.75, 0.5, 0.25]  # three steps that do not end at t = 0
    nfe = solver.expected_nfe(probe)
    return None if nfe is None else -(-nfe // (len(probe) - 1))


def fits_a_pipeline(solver: Solver) -> bool:
    """Whether a pipeline's loop can run ``solver``: a fixed grid, one leg (``restart``
    re-noises between legs), any number of evaluations a step (a solver of several is
    asked for them one at a time, as diffusers' Heun schedulers are)."""
    return evaluations_a_step(solver) is not None and type(solver).legs is Solver.legs


def pipeline_solvers() -> list[str]:
    """The registered solvers that fit a diffusers pipeline with their default options."""
    return [name for name in solver_names() if fits_a_pipeline(get_solver(name))]


class GeneratorListNoise(NoiseSource):
    """Fresh normals for a batch from one generator per sample, as diffusers pipelines pass
    them (``generator=[g_0, g_1, ...]`` for per-image seeds)."""

    def __init__(self, generators: list[torch.Generator]):
        self.generators = generators

    def __call__(self, x: Tensor, t0: float, t1: float) -> Tensor:
        return self.fresh(x)

    def fresh(self, x: Tensor) -> Tensor:
        if len(self.generators) != x.shape[0]:
            raise ArgumentError(
                f"got {len(self.generators)} generators for a batch of {x.shape[0]}; pass one "
                "generator, or one per sample"
            )
        rows = [
            torch.randn(x.shape[1:], generator=g, device=g.device, dtype=x.dtype)
            for g in self.generators
        ]
        return torch.stack(rows).to(x.device)


def noise_source(generator: torch.Generator | list[torch.Generator] | None) -> NoiseSource:
    """What a pipeline's ``generator`` argument means for our solvers."""
    if isinstance(generator, (list, tuple)):
        return GeneratorListNoise(list(generator))
    return GeneratorNoise(generator)


class _GivenOutput:
    """The model a pipeline already evaluated: returns that output, once."""

    def __init__(self, prediction: str):
        self.prediction, self.output = prediction, None

    def __call__(self, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        out, self.output = self.output, None
        if out is None:
            raise RuntimeError("the solver asked for a second model evaluation within one step")
        return out


class _Stop(Exception):
    """Ends a staged run whose pipeline went away (a new ``set_timesteps``)."""


class _StagedRun:
    """A solver of several evaluations a step, run in a worker thread that asks the pipeline
    for one model evaluation at a time (as diffusers' Heun schedulers do with ``order = 2``).

    Before each step the thread takes the pipeline's sample and its model output there (the
    step's first evaluation is at its start); each further evaluation the step asks for goes
    out as a state for the pipeline to evaluate next.  ``answer`` gives the pipeline's
    output and returns the next state it should evaluate at (a stage, or the next step's
    start) and whether a step ended there.
    """

    def __init__(self, solver: Solver, sde, prediction: str, grid: list[float], noise):
        self.answers: queue.Queue = queue.Queue()
        self.requests: queue.Queue = queue.Queue()
        self.at_step_start = True
        self.pending: Tensor | None = None
        model = FunctionModel(self._evaluate, prediction=prediction)
        args = (solver, sde, model, grid, noise)
        self.thread = threading.Thread(target=self._work, args=args, daemon=True)
        self.thread.start()

    def _work(self, solver, sde, model, grid, noise) -> None:
        try:
            with torch.no_grad():
                x, self.pending = self._next("start")
                process = ReverseProcess(model, sde, x, grid=grid)
                state = solver.init(process, grid, x, noise)
                for i in range(len(grid) - 1):
                    if i:
                        x, self.pending = self._next("start")
                    x, state = solver.step(process, grid[i], grid[i + 1], x, state, noise)
                    self.requests.put(("step", x))
        except _Stop:
            return
        except BaseException as error:  # handed to the pipeline's thread, raised there
            self.requests.put(("error", error))

    def _next(self, expected: str):
        kind, value = self.answers.get()
        if kind == "stop":
            raise _Stop
        assert kind == expected, (kind, expected)
        return value

    def _evaluate(self, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        if self.pending is not None:  # the step's first evaluation: the pipeline made it
            out, self.pending = self.pending, None
            return out
        self.requests.put(("eval", x))
        return self._next("output")

    def answer(self, sample: Tensor, model_output: Tensor) -> tuple[Tensor, bool]:
        """Hand over the pipeline's evaluation; the next state to evaluate at, and whether
        it ends a step."""
        if self.at_step_start:
            self.answers.put(("start", (sample, model_output)))
        else:
            self.answers.put(("output", model_output))
        kind, value = self.requests.get()
        if kind == "error":
            raise value
        self.at_step_start = kind == "step"
        return value, self.at_step_start

    def stop(self) -> None:
        self.answers.put(("stop", None))


class _SolverScheduler(SchedulerMixin, ConfigMixin):
    """What both schedulers share: the solver, the schedule's index, ``step``."""

    order = 1
    init_noise_sigma = 1.0

    def _take_solver(self, solver: str, solver_options: dict[str, Any] | None) -> None:
        self.solver = get_solver(solver, **(solver_options or {}))
        if not fits_a_pipeline(self.solver):
            raise ArgumentError(
                f"solver {self.solver.name!r} chooses its own steps or re-noises between "
                "legs, which a diffusers pipeline's loop cannot follow: use one of "
                f"{', '.join(pipeline_solvers())}"
            )
        self.order = evaluations_a_step(self.solver)  # what pipelines read for progress bars
        self.timesteps: Tensor | None = None
        self.num_inference_steps: int | None = None
        self._begin_index: int | None = None
        self._step_index: int | None = None
        self._run = None

    def _their_config(self) -> dict[str, Any]:
        """This config without our own entries: what a diffusers scheduler is built from."""
        ours = set(inspect.signature(type(self).__init__).parameters) - {"self"}
        theirs = {"num_train_timesteps", *TABLE_KEYS}
        return {k: v for k, v in self.config.items() if k not in ours - theirs}

    def _use_grid(self, times: list[float], model_timesteps: Tensor, device: Any) -> None:
        """Run on ``times`` (validated), feeding the model ``model_timesteps`` (one a step),
        or, for a solver of several evaluations a step, the times of all of them."""
        self.grid = validate_grid(self.sde, torch.tensor(times, dtype=torch.float64))
        if self.order > 1:
            model_timesteps = model_timestep(self._evaluation_times(), self.sde)
        self.timesteps = model_timesteps.to(torch.float32).to(device)
        self.num_inference_steps = len(self.grid) - 1
        if isinstance(self._run, _StagedRun):
            self._run.stop()
        self._step_index = self._begin_index = self._run = None

    def _evaluation_times(self) -> Tensor:
        """Where the solver evaluates the model on the grid, in order (they do not depend on
        the state for a fixed-grid solver: read off a run of a recording model)."""
        times: list[Tensor] = []

        def record(x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
            times.append(t[:1])
            return torch.zeros_like(x)

        model = FunctionModel(record, prediction=self.prediction)
        start = torch.zeros(1, 1, dtype=torch.float64)
        process = ReverseProcess(model, self.sde, start, grid=self.grid)
        with torch.no_grad():  # the states may be anything; only the times count
            integrate(self.solver, process, self.grid, start, GeneratorNoise(), lambda *a: None)
        return torch.cat(times).to(torch.float64)

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any):
        """The scheduler for the model ``config`` (any diffusers scheduler's) was made for;
        ``kwargs`` set our entries (``solver``, ``solver_options``, ``spacing``, ...).

        A table entry the source scheduler took by default is its table all the same (the
        DDPM family shares its defaults), so it counts as given here.  Without ``spacing``,
        a source that asks for Karras or exponential sigmas (``use_karras_sigmas``,
        ``use_exponential_sigmas``, ``use_beta_sigmas``) gets the spacing of that name.
        """
        if isinstance(config, Mapping):
            table = "beta_schedule" in config or "trained_betas" in config
            flow = "shift" in config and not table
            if (flow or table) and flow != (cls is FlowMatchingScheduler):
                right = "FlowMatchingScheduler" if flow else "DiffusersScheduler"
                raise ArgumentError(
                    f"this config is for {'a flow-matching' if flow else 'a DDPM-family'} "
                    f"model: build {right}.from_config(...) from it"
                )
            config = {k: v for k, v in config.items() if k != "_use_default_values"}
            if table and "spacing" not in kwargs:
                if config.get("use_beta_sigmas"):
                    kwargs["spacing"] = "beta"
                elif config.get("use_exponential_sigmas"):
                    kwargs["spacing"] = "exponential"
                elif config.get("use_karras_sigmas"):
                    kwargs["spacing"] = "karras"
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    @property
    def step_index(self) -> int | None:
        """The index of the next step (``None`` until the first ``step``)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """Where a pipeline that starts mid-schedule begins (``set_begin_index``)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at step ``begin_index`` of the schedule (img2img pipelines call this)."""
        self._begin_index = int(begin_index)

    def index_for_timestep(self, timestep: float | Tensor) -> int:
        """The schedule index of ``timestep`` (the closest of ``self.timesteps``)."""
        value = torch.as_tensor(timestep, dtype=torch.float32).flatten()[0].cpu()
        return int((self.timesteps.cpu() - value).abs().argmin())

    def scale_model_input(self, sample: Tensor, timestep: Any = None) -> Tensor:
        return sample

    # -- one step ------------------------------------------------------------------------

    def step(
        self,
        model_output: Tensor,
        timestep: Any,
        sample: Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        eta: float | None = None,
        use_clipped_model_output: bool | None = None,
    ) -> SchedulerOutput | tuple[Tensor]:
        """Advance ``sample`` from ``timestep`` one grid step with the pipeline's
        ``model_output``.  ``eta`` (what ``DDIMPipeline`` passes) sets the solver's own
        ``eta`` for the run; a solver without one takes only ``eta=0``, which it is."""
        if use_clipped_model_output:
            raise ArgumentError(
                "use_clipped_model_output is DDIMScheduler's; our solvers do not clip"
            )
        if self.timesteps is None:
            raise ArgumentError("call set_timesteps(num_inference_steps) before step")
        if self._step_index is None:
            start = self._begin_index
            self._step_index = self.index_for_timestep(timestep) if start is None else start
        i = self._step_index
        if i >= len(self.timesteps):
            raise ArgumentError(
                f"all {len(self.timesteps)} evaluations are done; call set_timesteps again"
            )
        wide = torch.float32 if sample.dtype in (torch.float16, torch.bfloat16) else sample.dtype
        x, noise = sample.to(wide), noise_source(generator)
        if model_output.shape[1] == 2 * sample.shape[1]:  # learned variance
            model_output = model_output[:, : sample.shape[1]]
        if self.order > 1:  # evaluation i of a solver that asks for `order` a step
            if self._run is None:
                legs, solver = self.grid[i // self.order :], self._solver_with(eta)
                self._run = _StagedRun(solver, self.sde, self.prediction, legs, noise)
            x, _ = self._run.answer(x, model_output.to(wide))
        else:
            if self._run is None:  # the solver's run starts where the pipeline starts
                given, solver = _GivenOutput(self.prediction), self._solver_with(eta)
                legs = self.grid[i:]
                process = ReverseProcess(given, self.sde, x, grid=legs)
                self._run = (given, process, solver, solver.init(process, legs, x, noise))
            given, process, solver, state = self._run
            given.output = model_output
            x, state = solver.step(process, self.grid[i], self.grid[i + 1], x, state, noise)
            self._run = (given, process, solver, state)
        self._step_index += 1
        prev = x.to(sample.dtype)
        return SchedulerOutput(prev) if return_dict else (prev,)

    def _solver_with(self, eta: float | None) -> Solver:
        """The solver of a run whose pipeline passes ``eta``."""
        options = self.solver.options()
        if eta is None or ("eta" not in options and eta == 0):
            return self.solver
        if "eta" not in options:
            raise ArgumentError(
                f"the pipeline asks for eta={eta}, but solver {self.solver.name!r} has no eta; "
                "use ddim, euler_ancestral or another solver with an eta option"
            )
        return get_solver(self.solver.name, **{**options, "eta": eta})

    def __len__(self) -> int:
        return self.config.num_train_timesteps


class DiffusersScheduler(_SolverScheduler):
    """A registered solver as a diffusers scheduler on the training table of its config.

    ``solver`` and ``solver_options`` pick the method; ``spacing``, ``rho`` and ``to_zero``
    the grid ``set_timesteps(n)`` builds: any of our schedules (``karras``, ``logsnr``,
    ``uniform``, ``quadratic``; ``exponential`` is ``logsnr``, diffusers'
    ``use_exponential_sigmas``), or diffusers' ``timestep_spacing`` of the training levels
    (``linspace``, ``leading``, ``trailing``, as ``DDPMScheduler`` spaces them, its
    ``steps_offset`` included), or ``beta`` (diffusers' ``use_beta_sigmas``: Beta(0.6, 0.6)
    quantiles in σ, Lee et al. 2024); ``to_zero=False`` ends at the first level, as
    ``final_sigmas_type="sigma_min"`` does.  ``grid`` names a tuned grid file
    (``sdediff tune`` on a diffusers model): ``set_timesteps()`` then runs its times.
    The table entries (``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``,
    ``trained_betas``, ``rescale_betas_zero_snr``) and ``prediction_type`` come from the
    config it is built from (``from_config``): a scheduler with no table is an error.  The
    solver state is float32 for half-precision pipelines.
    """

    _compatibles: ClassVar[list[str]] = [e.name for e in KarrasDiffusionSchedulers]

    @register_to_config
    def __init__(
        self,
        solver: str = "dpmpp_2m",
        solver_options: dict[str, Any] | None = None,
        spacing: str = "karras",
        rho: float = 7.0,
        to_zero: bool = True,
        grid: str | None = None,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str | None = None,
        trained_betas: list[float] | None = None,
        prediction_type: str = "epsilon",
        rescale_betas_zero_snr: bool = False,
    ):
        self._take_solver(solver, solver_options)
        if beta_schedule is None and trained_betas is None:
            raise ArgumentError(
                "a DiffusersScheduler needs the model's training table: build it from the "
                "scheduler it replaces, DiffusersScheduler.from_config(pipe.scheduler.config, "
                f"solver={solver!r})"
            )
        if prediction_type not in PREDICTION_TYPES:
            raise ArgumentError(
                f"prediction_type {prediction_type!r} is not supported; use one of "
                f"{', '.join(PREDICTION_TYPES)}"
            )
        table = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule or "linear",
            trained_betas=trained_betas,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        ).alphas_cumprod
        self.sde, self.prediction = DiscreteVPSDE(table), PREDICTION_TYPES[prediction_type]
        spacings = (*SCHEDULES, *LEVEL_SPACINGS, *SIGMA_SPACINGS)
        if SPACING_ALIASES.get(spacing, spacing) not in spacings:
            valid = ", ".join([*SCHEDULES, *SPACING_ALIASES, *LEVEL_SPACINGS, *SIGMA_SPACINGS])
            raise ArgumentError(f"unknown spacing {spacing!r}; choose one of {valid}")
        self.tuned = None if grid is None else load_grid(grid)
        if self.tuned is not None and self.tuned.sde != repr(self.sde):
            raise ArgumentError(
                f"{grid} was tuned for {self.tuned.sde}, not for this scheduler's "
                f"{self.sde!r}; tune it on this model"
            )

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        mu: float | None = None,
    ) -> None:
        """The grid: ``num_inference_steps`` steps of our spacing, or the training
        ``timesteps`` or VE ``sigmas`` (σ/α, decreasing) a pipeline passes.  ``mu`` is flow
        matching's dynamic shift (``FlowMatchingScheduler``); a DDPM-family model has none."""
        if mu is not None:
            raise ArgumentError(
                "mu is the dynamic shift of flow matching; this DDPM-family scheduler takes "
                "num_inference_steps, timesteps or sigmas"
            )
        given = sum(v is not None for v in (num_inference_steps, timesteps, sigmas))
        if given != 1 and not (given == 0 and self.tuned is not None):
            raise ArgumentError(
                "pass exactly one of num_inference_steps, timesteps and sigmas to set_timesteps"
            )
        if self.tuned is not None and num_inference_steps not in (None, len(self.tuned.times) - 1):
            raise ArgumentError(
                f"this scheduler runs its tuned grid of {len(self.tuned.times) - 1} steps; call "
                "set_timesteps() without num_inference_steps"
            )
        end = [0.0] if self.config.to_zero else []
        if timesteps is not None:
            levels = torch.as_tensor(timesteps, dtype=torch.float64).cpu()
            times = ((levels + 1) / self.sde.num_levels).tolist() + end
        elif sigmas is not None:
            sigma = torch.as_tensor(sigmas, dtype=torch.float64).cpu()
            positive = sigma[sigma > 0]
            times = self.sde.t_from_log_snr(-positive.log()).tolist()
            times += [0.0] * int((sigma == 0).sum())
        elif self.tuned is not None:
            times = list(self.tuned.times)
        elif num_inference_steps == 1 and self.config.to_zero:
            times = [self.sde.T, 0.0]  # one step: the Tweedie step from the prior
        elif self.config.spacing in SIGMA_SPACINGS:
            times = self._beta_times(num_inference_steps)
        elif self.config.spacing in LEVEL_SPACINGS:
            levels = self._levels(num_inference_steps)
            times = ((levels + 1) / self.sde.num_levels).tolist()
            if self.config.to_zero:
                times.append(0.0)
            elif times[-1] > self.sde.t_min:  # final_sigmas_type="sigma_min"
                times.append(self.sde.t_min)
        else:
            times = time_grid(
                self.sde,
                num_inference_steps,
                SPACING_ALIASES.get(self.config.spacing, self.config.spacing),
                rho=self.config.rho,
                to_zero=self.config.to_zero,
            ).tolist()
        grid = torch.tensor(times[:-1], dtype=torch.float64)
        self._use_grid(times, model_timestep(grid, self.sde), device)  # as solve feeds it

    def _beta_times(self, steps: int) -> list[float]:
        """The times of diffusers' beta sigmas (Beta(0.6, 0.6) quantiles between the
        table's σ_min and σ_max, as ``EulerDiscreteScheduler`` spaces them), then 0."""
        spaced = EulerDiscreteScheduler.from_config(self._their_config(), use_beta_sigmas=True)
        spaced.set_timesteps(steps)
        sigma = spaced.sigmas.to(torch.float64)
        times = self.sde.t_from_log_snr(-sigma[sigma > 0].log()).tolist()
        return times + ([0.0] if self.config.to_zero else [])

    def _levels(self, steps: int) -> Tensor:
        """The training levels diffusers' ``timestep_spacing`` picks (``DDPMScheduler``'s)."""
        spaced = DDPMScheduler.from_config(
            self._their_config(), timestep_spacing=self.config.spacing
        )
        spaced.set_timesteps(steps)
        return spaced.timesteps.to(torch.float64).cpu()

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``x_t = α x_0 + σ ε`` at the training timesteps ``timesteps`` (img2img, SDEdit)."""
        levels = torch.as_tensor(timesteps, device=original_samples.device).to(torch.float64)
        t = (levels.flatten() + 1) / self.sde.num_levels
        alpha = self.sde.alpha(t).to(original_samples.dtype)
        sigma = self.sde.sigma(t).to(original_samples.dtype)
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        return alpha.view(shape) * original_samples + sigma.view(shape) * noise


class FlowMatchingScheduler(_SolverScheduler):
    """A registered solver as a flow-matching scheduler (SD3, Flux), for a velocity model.

    Swapped in like ``FlowMatchEulerDiscreteScheduler``, from its config:
    ``FlowMatchingScheduler.from_config(pipe.scheduler.config, solver="dpmpp_2m")``.  The SDE is
    ``RectifiedFlow(T=1)`` (σ = t); ``set_timesteps(n, sigmas=, mu=, timesteps=)`` visits the
    σ's that ``FlowMatchEulerDiscreteScheduler`` computes for the same config (its ``shift``,
    dynamic shifting by ``mu``, ...) and ends at σ = 0, feeding the model ``σ N`` as it does;
    ``scale_noise`` is its forward noising for image-to-image.
    """

    _compatibles: ClassVar[list[str]] = [
        "FlowMatchEulerDiscreteScheduler",
        "FlowMatchHeunDiscreteScheduler",
    ]

    @register_to_config
    def __init__(
        self,
        solver: str = "euler",
        solver_options: dict[str, Any] | None = None,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
    ):
        self._take_solver(solver, solver_options)
        self.sde, self.prediction = RectifiedFlow(t_min=1 / num_train_timesteps, T=1.0), "velocity"

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: list[float] | None = None,
        mu: float | None = None,
        timesteps: list[float] | None = None,
    ) -> None:
        """The σ's of ``FlowMatchEulerDiscreteScheduler`` with this config, then σ = 0."""
        theirs = FlowMatchEulerDiscreteScheduler.from_config(self._their_config())
        theirs.set_timesteps(num_inference_steps, sigmas=sigmas, mu=mu, timesteps=timesteps)
        self._use_grid(theirs.sigmas.double().tolist(), theirs.timesteps, device)

    def scale_noise(self, sample: Tensor, timestep: Tensor, noise: Tensor) -> Tensor:
        """``x_σ = σ ε + (1 − σ) x_0`` at the model timesteps ``timestep`` (σ = t / N)."""
        sigma = torch.as_tensor(timestep, device=sample.device).to(sample.dtype).flatten()
        sigma = (sigma / self.config.num_train_timesteps).view((-1,) + (1,) * (sample.ndim - 1))
        return sigma * noise + (1 - sigma) * sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps
