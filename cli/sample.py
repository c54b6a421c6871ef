"""``sdediff sample``: draw samples from a model and save a picture or the raw arrays."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import sde_diffusion as sd
from sde_diffusion.atomic import atomic_path
from sde_diffusion.distributed import local_batches, rank_and_world
from sde_diffusion.evaluation.problems import load_problem
from sde_diffusion.guidance import MAX_SCALE
from sde_diffusion.npz import NpzWriter
from sde_diffusion.plotting import save_samples
from sde_diffusion.sampling import DEFAULT_STEPS, default_steps
from sde_diffusion.sdes import sde_names
from sde_diffusion.training.distillation import GuidedStudent
from sde_diffusion.training.lora import apply_lora

from .common import (
    DTYPES,
    SCHEDULE_CHOICE,
    SafePath,
    SolverName,
    build_solver,
    console,
    finite,
    friendly_errors,
    library_default,
    not_nan,
    parse_device,
    plural,
    solver_option_flags,
    solver_option_values,
    speed_options,
    start_ranks,
    writable_output,
)

OUT_SUFFIXES = (".png", ".npz")
MAX_STEPS = 100_000  # grid intervals; more is a mistake, not a setting
MAX_BATCH = 10_000_000


def model_option(default: str | None = "digits"):
    return click.option(
        "--model",
        default=default,
        show_default=default is not None,
        required=default is None,
        help="A checkpoint path, a shipped model (digits, digits-fast, digits-cond, moons) or "
        "an analytic problem (gmm8: the 2-D eight-Gaussians ring, gmm64: a 64-D mixture).",
    )


sde_option = click.option(
    "--sde",
    type=click.Choice(sde_names()),
    default=None,
    help="SDE of an analytic problem [default: edm]; trained models bring their own.",
)
device_option = click.option(
    "--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N."
)
seed_option = click.option(
    "--seed",
    type=click.IntRange(0, 2**63 - 1),
    default=library_default(sd.sample_batched, "seed"),
    show_default=True,
)
dtype_option = click.option(
    "--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True
)


def open_problem(
    model: str,
    sde: str | None,
    device: str,
    dtype: str = "float32",
    compile: bool = False,
    precision: str = "fp32",
    lora: Path | None = None,
    lora_scale: float = 1.0,
):
    """Resolve ``--model`` (and ``--sde``) on ``--device`` with usage errors for bad input;
    its network compiled and/or autocast as ``--compile`` and ``--precision`` ask, with a
    LoRA adapter merged in at ``lora_scale``."""
    device = parse_device(device)
    path = Path(model)
    if (path.suffix == ".safetensors" or "/" in model) and not path.exists():
        raise click.BadParameter(f"no checkpoint at {model}", param_hint="--model")
    with friendly_errors("loading the model"):
        problem = load_problem(model, sde=sde or "edm", device=device, dtype=DTYPES[dtype])
    if sde is not None and problem.mixture is None:
        raise click.UsageError("--sde applies to analytic problems only; a model has its own SDE")
    if lora is not None:
        if not hasattr(problem.model, "net"):
            raise click.BadParameter(f"{model} has no network to adapt", param_hint="--lora")
        with friendly_errors("applying the adapter"):
            apply_lora(problem.model.net, lora, lora_scale)
    problem.model = sd.accelerate(problem.model, compile, precision)
    return problem, device


def sample_with_progress(
    model, sde, shape: tuple[int, ...], solver: sd.Solver, steps: int, **options
) -> sd.SampleResult:
    """``sd.sample`` in batches (``options`` are its own) with a progress bar of this
    rank's batches and steps."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    mine = len(local_batches(shape[0], options["batch_size"]))
    with Progress(*columns, console=console, transient=True) as bar:
        batches = bar.add_task("batches", total=mine)
        step_task = bar.add_task(f"{solver.name} steps", total=steps)

        def on_batch(start: int, stop: int) -> None:
            bar.advance(batches)
            bar.reset(step_task)

        with torch.inference_mode():
            return sd.sample(
                model,
                sde,
                shape,
                solver,
                steps,
                callback=lambda info: bar.advance(step_task),
                on_batch=on_batch,
                **options,
            )


@click.command()
@model_option()
@click.option(
    "--solver", type=SolverName(), default=library_default(sd.sample, "solver"), show_default=True
)
@click.option(
    "--steps",
    type=click.IntRange(1, MAX_STEPS),
    default=library_default(sd.sample, "steps"),
    help=f"Grid intervals  [default: {DEFAULT_STEPS}; 1 for adaptive solvers, which choose "
    "their own steps]",
)
@click.option(
    "--schedule",
    type=SCHEDULE_CHOICE,
    default=library_default(sd.sample, "schedule"),
    show_default=True,
)
@click.option(
    "--grid",
    "grid_file",
    type=SafePath(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A tuned time grid (sdediff tune); replaces --steps and --schedule, and sets "
    "the solver unless --solver is given.",
)
@click.option("--num-samples", "-n", type=click.IntRange(min=1), default=64, show_default=True)
@click.option(
    "--batch-size",
    type=click.IntRange(1, MAX_BATCH),
    default=library_default(sd.sample_batched, "batch_size"),
    show_default=True,
)
@seed_option
@device_option
@dtype_option
@speed_options
@sde_option
@click.option(
    "--out",
    type=SafePath(dir_okay=False, path_type=Path),
    default=Path("samples.png"),
    show_default=True,
    help="A .png picture (image grid or 2-D scatter) or a .npz with the samples and settings.",
)
@click.option(
    "--class",
    "class_",
    default=None,
    help="Class to draw (a name or number of a class-conditional model), or 'all' for a "
    "grid with one row per class; an .npz then holds each sample's class as 'labels'.",
)
@click.option(
    "--guidance",
    type=click.FloatRange(min=0, max=MAX_SCALE),
    callback=not_nan,
    default=1.0,
    show_default=True,
    help="Classifier-free guidance scale w: D(∅) + w (D(c) − D(∅)); 1 is the conditional "
    "model, 0 the unconditional one.",
)
@click.option(
    "--guidance-interval",
    default=None,
    metavar="LO,HI",
    help="Guide only at noise levels σ/α in [LO, HI] (elsewhere one conditional pass).",
)
@click.option(
    "--guidance-rescale",
    type=click.FloatRange(0, 1),
    callback=not_nan,
    default=0.0,
    show_default=True,
    help="CFG rescale φ (Lin et al. 2024; diffusers' guidance_rescale): match the guided "
    "noise prediction's spread to the conditional one's.",
)
@click.option(
    "--apg",
    default=None,
    metavar="ETA[,NORM[,MOMENTUM]]",
    help="Adaptive projected guidance (Sadat et al. 2025): keep ETA of the update parallel "
    "to the denoiser, clip its norm to NORM (0: no clip), momentum (the paper: -0.5).",
)
@click.option(
    "--cfg-zero-star",
    is_flag=True,
    help="CFG-Zero* (Fan et al. 2025): scale the unconditional prediction by its optimal "
    "projection first.",
)
@click.option(
    "--guide",
    "guide_model",
    default=None,
    metavar="CHECKPOINT",
    help="Autoguidance (Karras et al. 2024): guide with this weaker model of the same "
    "condition (an early checkpoint of the run) instead of the unconditional branch.",
)
@click.option(
    "--lora",
    type=SafePath(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Apply this LoRA adapter (from sdediff train --lora-rank) to the model.",
)
@click.option(
    "--lora-scale",
    type=click.FloatRange(0, 4),
    callback=finite,
    default=1.0,
    show_default=True,
    help="The adapter's strength (0: the base model, 1: as trained).",
)
@solver_option_flags
def sample(
    model,
    solver,
    steps,
    schedule,
    grid_file,
    num_samples,
    batch_size,
    seed,
    device,
    dtype,
    compile_,
    precision,
    sde,
    out,
    class_,
    guidance,
    guidance_interval,
    guidance_rescale,
    apg,
    cfg_zero_star,
    guide_model,
    lora,
    lora_scale,
    **kwargs,
):
    """Draw samples with any registered solver and save them.

    \b
    Examples:
      sdediff sample --solver heun
      sdediff sample --model moons --solver dpmpp_2m --steps 20 --out moons.png
      sdediff sample --model gmm8 --solver ddim --eta 0.5 -n 4096 --out ring.npz
      sdediff sample --model digits-cond --class 3 --guidance 2.0
      sdediff sample --model digits-cond --class all --guidance 2 --guidance-interval 0.1,5
      sdediff sample --model digits-cond --class 3 --guidance 4 --apg 0,2
      sdediff sample --model digits-cond --class 3 --solver euler_cfg_pp --guidance 0.8
      sdediff sample --model digits --grid grid.json      # a grid from sdediff tune
      sdediff sample --model digits --lora runs/threes.lora.safetensors --lora-scale 0.8
    """
    writable_output(out, suffixes=OUT_SUFFIXES)
    options = solver_option_values(kwargs)
    grid = read_grid(grid_file, steps, schedule) if grid_file else None
    if grid is not None and click.get_current_context().get_parameter_source("solver").name == (
        "DEFAULT"
    ):
        given = {k: v for k, v in options.items() if v is not None}  # flags typed by the user
        solver, options = grid.solver, {**grid.solver_options, **given}
    solver = build_solver(solver, options)
    if grid is not None:
        steps, schedule = len(grid.times) - 1, "tuned"
        check_grid_solver(grid_file, solver, steps)
    if steps is None:
        steps = default_steps(solver)
    interval = parse_interval(guidance_interval)
    speed = {"compile": compile_, "precision": precision}
    speed |= {"lora": lora, "lora_scale": lora_scale}
    problem, device = open_problem(model, sde, start_ranks(parse_device(device)), dtype, **speed)
    student = student_grid(problem, grid)
    if student is not None:
        given = {k: v for k, v in options.items() if v is not None}
        grid = student
        solver = build_solver(grid.solver, {**grid.solver_options, **given})
        steps, schedule = len(grid.times) - 1, "student"
    if grid is not None and grid.sde != repr(problem.sde):
        raise click.UsageError(
            f"{grid_file} was tuned for {grid.sde}; {model} runs {problem.sde!r}"
        )
    if grid is not None:
        try:
            sd.sampling.check_sampling_grid(problem.sde, grid.tensor())
        except sd.ArgumentError as err:
            raise click.BadParameter(f"{grid_file}: {err}", param_hint="--grid") from None
    check_output_size(problem, out, num_samples)
    labels, columns = class_labels(problem, model, class_, num_samples)
    variants = {
        "guidance_rescale": guidance_rescale,
        "apg": parse_apg(apg),
        "cfg_zero_star": cfg_zero_star,
        "guide": guide_model,
    }
    asked = guidance != 1.0 or interval is not None or any(variants.values())
    if labels is None and asked:
        raise click.UsageError(
            "--guidance, --guidance-interval, --guidance-rescale, --apg, --cfg-zero-star and "
            "--guide need --class"
        )
    num_samples = num_samples if labels is None else len(labels)
    guided = problem.model
    w_range = problem.config.get("objective", {}).get("guidance")
    if labels is not None and w_range is not None:  # a guided student: w is an input
        if not w_range[0] <= guidance <= w_range[1] or interval or any(variants.values()):
            raise click.BadParameter(
                f"{model} is a guided student: it takes --guidance W in [{w_range[0]:g}, "
                f"{w_range[1]:g}] as an input, in one pass (no interval, rescale, APG or guide)",
                param_hint="--guidance",
            )
        guided = GuidedStudent(problem.model, guidance, w_range[1])
    elif labels is not None and (asked or "cfg_pp" in solver.name):  # CFG++ reads the null branch
        guided = sd.ClassifierFreeGuidance(
            problem.model,
            guidance,
            len(problem.class_names),  # the null label
            interval=interval,
            sde=problem.sde,
            rescale=guidance_rescale,
            apg=variants["apg"],
            zero_star=cfg_zero_star,
            guide=None
            if guide_model is None
            else open_guide(guide_model, problem, device, dtype, speed),
        )
    console.print(
        f"sampling {num_samples} from {model} ({problem.sde!r}) with {solver.name}, "
        f"{steps} {schedule} {plural(steps, 'step')}",
        highlight=False,
    )
    with friendly_errors("sampling"), npz_output(problem, out, num_samples) as npz:

        def to_npz(start: int, stop: int, rows: torch.Tensor) -> None:
            npz.write(data_units(rows, problem))

        res = sample_with_progress(
            guided,
            problem.sde,
            (num_samples, *problem.event_shape),
            solver,
            steps,
            schedule=schedule,
            batch_size=batch_size,
            seed=seed,
            device=device,
            dtype=DTYPES[dtype],
            cond=None if labels is None else labels.to(device),
            grid=None if grid is None else grid.tensor(),
            sink=None if npz is None else to_npz,
        )
        if rank_and_world()[0] != 0:  # another rank of a torchrun job: rank 0 writes
            return
        nfe, wall = round(res.nfe_per_batch), max(res.sampling_time, 1e-9)
        passes = res.network_passes / res.batches
        settings = {
            "model": model,
            "solver": solver.name,
            "solver_options": solver.options(),
            "steps": steps,
            "schedule": schedule,
            "num_samples": num_samples,
            "seed": seed,
            "dtype": dtype,
            "precision": precision,
            "sde": repr(problem.sde),
            "nfe": nfe,
            "network_passes_per_batch": passes,
        }
        if grid is not None:
            settings["grid"] = grid.times
        if labels is not None:
            settings.update({"class": class_, "guidance": guidance, "guidance_interval": interval})
            settings.update({k: v for k, v in variants.items() if v})
            if variants["apg"]:
                settings["apg"] = dataclasses.asdict(variants["apg"])
        if npz is not None:
            npz.add("settings", json.dumps(settings))
            if labels is not None:  # each sample's class, as compact integers
                small = np.uint8 if len(problem.class_names) < 256 else np.int32
                npz.add("labels", labels.numpy().astype(small))
        else:
            save_picture(problem, res.x.float().cpu(), out, settings, columns)
    cost = f"NFE {nfe}" if passes == nfe else f"NFE {nfe} ({passes:g} network passes)"
    compiling = f" (after {res.compile_time:.1f} s compiling)" if res.compile_time else ""
    console.print(
        f"[bold green]{num_samples}[/] samples from [bold]{model}[/] with {solver.name} "
        f"({steps} {plural(steps, 'step')}): {cost}, {wall:.2f} s, "
        f"{num_samples / wall:,.0f} samples/s{compiling} -> {out}"
    )


def student_grid(problem, grid: sd.TunedGrid | None) -> sd.TunedGrid | None:
    """A student's own solver and times (its checkpoint's ``sampling``) when no --solver,
    --steps, --schedule or --grid says otherwise; a warning when they do."""
    sampling = problem.config.get("sampling")
    if sampling is None:
        return None
    ctx = click.get_current_context()
    flags = ("solver", "steps", "schedule", "grid_file")
    chosen = [
        f"--{k.split('_')[0]}" for k in flags if ctx.get_parameter_source(k).name != "DEFAULT"
    ]
    if not chosen and grid is None:
        times = sampling["times"]
        return sd.TunedGrid(times, sampling["solver"], sampling["solver_options"],
                            len(times) - 1, repr(problem.sde))  # fmt: skip
    method = problem.config.get("objective", {}).get("method", "a student")
    warnings.warn(
        f"this model is a {method} student trained to sample with {sampling['solver']} at "
        f"{len(sampling['times']) - 1} steps on its own times; {' and '.join(chosen)} "
        "change that and may sample poorly",
        stacklevel=1,
    )
    return None


def read_grid(path: Path, steps: int | None, schedule: str) -> sd.TunedGrid:
    """A tuned grid from ``--grid``; unreadable files and clashing flags are usage errors."""
    ctx = click.get_current_context()
    if steps is not None or ctx.get_parameter_source("schedule").name != "DEFAULT":
        raise click.UsageError("--grid sets the steps and times; drop --steps and --schedule")
    try:
        return sd.load_grid(path)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--grid") from None


def check_grid_solver(path: Path, solver: sd.Solver, steps: int) -> None:
    """A grid runs a fixed-grid solver within the --steps cap, or it is a usage error."""
    if solver.adaptive:
        raise click.BadParameter(
            f"{path} names {solver.name}, which chooses its own steps; a grid needs a "
            "fixed-grid solver",
            param_hint="--grid",
        )
    if steps > MAX_STEPS:
        raise click.BadParameter(
            f"{path} has {steps:,} steps; at most {MAX_STEPS:,}", param_hint="--grid"
        )


def parse_interval(value: str | None) -> tuple[float, float] | None:
    """``"lo,hi"`` as two noise levels with ``0 <= lo < hi``."""
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"expected LO,HI (two numbers), got {value!r}", param_hint="--guidance-interval"
        ) from None
    if not 0 <= lo < hi < math.inf:
        raise click.BadParameter(
            f"need 0 <= LO < HI, got {value!r}", param_hint="--guidance-interval"
        )
    return lo, hi


def parse_apg(value: str | None) -> sd.APG | None:
    """``"eta[,norm[,momentum]]"`` as APG's settings."""
    if value is None:
        return None
    try:
        numbers = [float(v) for v in value.split(",")]
        if not 1 <= len(numbers) <= 3 or not all(math.isfinite(v) for v in numbers):
            raise ValueError
    except ValueError:
        raise click.BadParameter(
            f"expected ETA[,NORM[,MOMENTUM]] (one to three numbers), got {value!r}",
            param_hint="--apg",
        ) from None
    try:
        return sd.APG(*numbers)
    except sd.ArgumentError as err:
        raise click.BadParameter(str(err), param_hint="--apg") from None


def open_guide(name: str, problem, device, dtype: str, speed: dict):
    """The ``--guide`` model: a checkpoint of the same SDE, event shape and classes."""
    guide, _ = open_problem(name, None, device, dtype, **speed)
    same = (
        repr(guide.sde) == repr(problem.sde)
        and tuple(guide.event_shape) == tuple(problem.event_shape)
        and guide.class_names == problem.class_names
        and guide.model.prediction == problem.model.prediction
    )
    if not same:
        raise click.BadParameter(
            f"{name} is not a model of the same SDE, sample shape, classes and "
            "parametrisation as --model; autoguidance needs a weaker version of the same model",
            param_hint="--guide",
        )
    return guide.model


def class_labels(problem, model: str, value: str | None, num_samples: int):
    """``(labels, grid columns)`` for ``--class``: one class, or ``all`` (one row each)."""
    if value is None:
        return None, None
    names = problem.class_names
    if names is None:
        raise click.UsageError(f"--class needs a class-conditional model; {model} is unconditional")
    if value == "all":  # one byte or two per sample, whatever -n
        per_class = -(-num_samples // len(names))
        small = torch.uint8 if len(names) < 256 else torch.int32
        return torch.arange(len(names), dtype=small).repeat_interleave(per_class), per_class
    index = names.index(value) if value in names else None
    if index is None and value.isdigit() and int(value) < len(names):
        index = int(value)
    if index is None:
        raise click.BadParameter(
            f"{model} has no class {value!r}; valid classes: {', '.join(names)} (or 'all')",
            param_hint="--class",
        )
    return torch.tensor([index]).expand(num_samples), None  # a view: no memory per sample


def data_units(rows: torch.Tensor, problem) -> np.ndarray:
    return problem.to_data_units(rows.float().cpu()).numpy()


PICTURE_LIMITS = {"images": 4096, "points": 1_000_000}


def check_output_size(problem, out: Path, num_samples: int) -> None:
    """Usage errors for a picture too large to look at or an .npz the disk cannot hold."""
    kind = "images" if len(problem.event_shape) == 3 else "points"
    if out.suffix.lower() == ".png" and num_samples > PICTURE_LIMITS[kind]:
        raise click.BadParameter(
            f"a .png shows at most {PICTURE_LIMITS[kind]:,} {kind}, got {num_samples:,}; "
            "write them to an .npz (--out samples.npz), which streams to disk",
            param_hint="--num-samples",
        )
    if out.suffix.lower() == ".npz":
        need = num_samples * math.prod(problem.output_shape) * 4  # float32
        existing = out.parent  # the folder may not exist yet: ask the disk it will be on
        while not existing.exists():
            existing = existing.parent
        free = shutil.disk_usage(existing).free
        if need > free:
            raise click.BadParameter(
                f"{num_samples:,} samples need {need / 1e9:,.1f} GB in {out}, but only "
                f"{free / 1e9:,.1f} GB are free there",
                param_hint="--num-samples",
            )


@contextmanager
def npz_output(problem, out: Path, num_samples: int) -> Iterator[NpzWriter | None]:
    """An .npz streamed batch by batch (rank 0), written atomically; ``None`` for a .png."""
    if out.suffix.lower() != ".npz" or rank_and_world()[0] != 0:
        yield None
        return
    shape = (num_samples, *problem.output_shape)
    with atomic_path(out) as tmp, NpzWriter(tmp, "samples", shape) as npz:
        yield npz


def save_picture(
    problem, x: torch.Tensor, out: Path, settings: dict, columns: int | None = None
) -> None:
    """Images as a grid in model units, points as a scatter in data units."""
    reference = None
    if problem.reference is not None and x.ndim == 2:
        reference = problem.to_data_units(problem.reference(len(x), 1).float().cpu())
    title = f"{settings['model']}: {settings['solver']}, {settings['steps']} steps"
    data = x if x.ndim == 4 else problem.to_data_units(x)
    save_samples(data, out, title, reference, columns)
