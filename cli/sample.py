"""``sdediff sample``: draw samples from a model and save a picture or the raw arrays."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import sde_diffusion as sd
from sde_diffusion.atomic import atomic_path
from sde_diffusion.plotting import save_samples
from sde_diffusion.problems import SDE_NAMES, load_problem

from .common import (
    DTYPES,
    SolverName,
    build_solver,
    console,
    friendly_errors,
    parse_device,
    solver_option_flags,
    solver_option_values,
    writable_output,
)

OUT_SUFFIXES = (".png", ".npz")


def model_option(default: str | None = "digits"):
    return click.option(
        "--model",
        default=default,
        show_default=default is not None,
        required=default is None,
        help="A checkpoint path, a shipped model (digits, moons) or an analytic problem "
        "(gmm8: the 2-D eight-Gaussians ring, gmm64: a 64-D mixture).",
    )


sde_option = click.option(
    "--sde",
    type=click.Choice(list(SDE_NAMES)),
    default=None,
    help="SDE of an analytic problem [default: edm]; trained models bring their own.",
)
device_option = click.option(
    "--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N."
)
seed_option = click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
dtype_option = click.option(
    "--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True
)


def open_problem(model: str, sde: str | None, device: str, dtype: str = "float32"):
    """Resolve ``--model`` (and ``--sde``) on ``--device`` with usage errors for bad input."""
    device = parse_device(device)
    path = Path(model)
    if (path.suffix == ".safetensors" or "/" in model) and not path.exists():
        raise click.BadParameter(f"no checkpoint at {model}", param_hint="--model")
    with friendly_errors("loading the model"):
        problem = load_problem(model, sde=sde or "edm", device=device, dtype=DTYPES[dtype])
    if sde is not None and problem.mixture is None:
        raise click.UsageError("--sde applies to analytic problems only; a model has its own SDE")
    return problem, device


def sample_batches(problem, solver, steps, schedule, num_samples, batch_size, seed, device, dtype):
    """Yield ``(samples, nfe)`` batch by batch; sample i's noise is keyed by (seed, i)."""
    shape = problem.event_shape
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        batches = bar.add_task("batches", total=-(-num_samples // batch_size))
        step_task = bar.add_task(f"{solver.name} steps", total=steps)
        for first in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - first)
            bar.reset(step_task)
            with torch.inference_mode():
                res = sd.sample(
                    problem.model,
                    problem.sde,
                    (n, *shape),
                    solver,
                    steps,
                    schedule,
                    noise=sd.PerSampleNoise(seed, first),
                    device=device,
                    dtype=dtype,
                    callback=lambda info: bar.advance(step_task),
                )
            bar.advance(batches)
            yield res


@click.command()
@model_option()
@click.option("--solver", type=SolverName(), default="heun", show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=25, show_default=True)
@click.option("--schedule", type=click.Choice(sd.SCHEDULES), default="karras", show_default=True)
@click.option("--num-samples", "-n", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@seed_option
@device_option
@dtype_option
@sde_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("samples.png"),
    show_default=True,
    help="A .png picture (image grid or 2-D scatter) or a .npz with the samples and settings.",
)
@solver_option_flags
def sample(
    model, solver, steps, schedule, num_samples, batch_size, seed, device, dtype, sde, out, **kwargs
):
    """Draw samples with any registered solver and save them.

    \b
    Examples:
      sdediff sample --solver heun
      sdediff sample --model moons --solver dpmpp_2m --steps 20 --out moons.png
      sdediff sample --model gmm8 --solver ddim --eta 0.5 -n 4096 --out ring.npz
    """
    writable_output(out, suffixes=OUT_SUFFIXES)
    solver = build_solver(solver, solver_option_values(kwargs))
    problem, device = open_problem(model, sde, device, dtype)
    console.print(
        f"sampling {num_samples} from {model} ({problem.sde!r}) with {solver.name}, "
        f"{steps} {schedule} steps",
        highlight=False,
    )
    with friendly_errors("sampling"):
        start = time.perf_counter()
        results = list(
            sample_batches(
                problem,
                solver,
                steps,
                schedule,
                num_samples,
                batch_size,
                seed,
                device,
                DTYPES[dtype],
            )
        )
        wall = time.perf_counter() - start
        x = torch.cat([r.x for r in results]).float().cpu()
        nfe = results[0].nfe
        settings = {
            "model": model,
            "solver": solver.name,
            "solver_options": solver.options(),
            "steps": steps,
            "schedule": schedule,
            "num_samples": num_samples,
            "seed": seed,
            "dtype": dtype,
            "sde": repr(problem.sde),
            "nfe": nfe,
        }
        write_samples(problem, x, out, settings)
    console.print(
        f"[bold green]{num_samples}[/] samples from [bold]{model}[/] with {solver.name} "
        f"({steps} steps): NFE {nfe}, {wall:.2f} s, {num_samples / wall:,.0f} samples/s "
        f"-> {out}"
    )


def write_samples(problem, x: torch.Tensor, out: Path, settings: dict) -> None:
    """A picture (model units for images, data units for points) or an .npz."""
    data = problem.to_data_units(x)
    if out.suffix.lower() == ".npz":
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.savez(f, samples=data.numpy(), settings=json.dumps(settings))
        return
    reference = None
    if problem.reference is not None and x.ndim == 2:
        reference = problem.to_data_units(problem.reference(len(x), 1).float().cpu())
    title = f"{settings['model']}: {settings['solver']}, {settings['steps']} steps"
    save_samples(x if x.ndim == 4 else data, out, title, reference)
