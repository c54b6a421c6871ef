"""``sdediff restore`` and ``sdediff edit``: condition a model on inputs without retraining.

``restore`` measures each input with a task's operator (``y = A x + σ_y n``) and samples
``p(x | y)`` with a restoration method; ``edit`` runs SDEdit.  Inputs are what ``sdediff
sample --out x.npz`` writes (its ``samples``, data units) or a folder of images; without
``--input``, held-out data (the digits test set, fresh draws of a mixture).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import numpy as np
import torch

import sde_diffusion as sd
from sde_diffusion.atomic import atomic_path
from sde_diffusion.measurements import TASKS, Inpaint, build_measurement
from sde_diffusion.noise import seeded_generator
from sde_diffusion.plotting import save_image_grid, save_restorations, save_scatter
from sde_diffusion.restoration import DEFAULT_RESTORE_STEPS, Observation, method_names
from sde_diffusion.training.data import DataError, load_images

from .common import (
    DTYPES,
    SCHEDULE_CHOICE,
    SafePath,
    SolverName,
    console,
    friendly_errors,
    not_nan,
    plural,
    writable_output,
)
from .sample import (
    MAX_STEPS,
    device_option,
    dtype_option,
    model_option,
    open_problem,
    sde_option,
    seed_option,
)

OUT_SUFFIXES = (".png", ".npz")
MAX_INPUTS = 4096  # one picture's worth; restore more in several runs
METHOD_CHOICES = [*method_names(), "exact"]

input_option = click.option(
    "--input", "source", type=SafePath(exists=True, path_type=Path), default=None,
    help="An .npz from sdediff sample (its samples array) or a folder of images "
    "[default: held-out data].",
)  # fmt: skip


def out_option(default: str, help: str):
    return click.option(
        "--out", type=SafePath(dir_okay=False, path_type=Path), default=Path(default),
        show_default=True, help=help,
    )  # fmt: skip


def num_samples_option(verb: str):
    return click.option(
        "--num-samples", "-n", type=click.IntRange(1, MAX_INPUTS), default=16,
        show_default=True, help=f"How many inputs to {verb} (the first N).",
    )  # fmt: skip


schedule_option = click.option(
    "--schedule",
    type=SCHEDULE_CHOICE,
    default="karras",
    show_default=True,
)


def image_view(event: tuple[int, ...]) -> tuple[int, ...]:
    """The shape measurements see: a 64-number vector (gmm64) as a 1×8×8 image."""
    if len(event) == 1 and math.isqrt(event[0]) ** 2 == event[0] and event[0] > 4:
        side = math.isqrt(event[0])
        return (1, side, side)
    return tuple(event)


def read_inputs(problem, source: Path | None, count: int, seed: int) -> torch.Tensor:
    """``count`` inputs in model units: from an .npz's ``samples`` (data units), a folder of
    images, or (no ``--input``) held-out data."""
    event = tuple(problem.output_shape)
    if source is None:
        if problem.reference is None:
            raise click.UsageError(f"{problem.name} has no held-out data; give --input")
        x = problem.reference(count, seed + 7).float()
    elif source.is_dir():
        try:
            x = load_images(source)
        except DataError as err:
            raise click.BadParameter(str(err), param_hint="--input") from None
    else:
        x = problem.from_data_units(_npz_samples(source))
    if tuple(x.shape[1:]) != event:
        raise click.BadParameter(
            f"{source or 'the data'} holds samples of shape {tuple(x.shape[1:])}; "
            f"{problem.name} makes samples of shape {event}",
            param_hint="--input",
        )
    return x[:count].float()


def _npz_samples(path: Path) -> torch.Tensor:
    if path.suffix.lower() != ".npz":
        raise click.BadParameter(
            f"{path}: expected an .npz (from sdediff sample) or a folder of images",
            param_hint="--input",
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            if "samples" not in data:
                raise click.BadParameter(
                    f"{path} has no 'samples' array (found {', '.join(data.files) or 'none'})",
                    param_hint="--input",
                )
            samples = data["samples"]
    except (OSError, ValueError) as err:
        raise click.BadParameter(
            f"{path}: not a readable .npz ({err})", param_hint="--input"
        ) from None
    if samples.dtype.kind != "f" or samples.ndim < 2 or not np.isfinite(samples).all():
        raise click.BadParameter(
            f"{path}: 'samples' must be finite floating-point rows", param_hint="--input"
        )
    return torch.from_numpy(np.ascontiguousarray(samples)).float()


def parse_options(pairs: tuple[str, ...]) -> dict[str, float]:
    """``KEY=VALUE`` pairs as numbers (whole numbers stay whole)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not key or number is None:
            raise click.BadParameter(f"expected KEY=NUMBER, got {pair!r}", param_hint="--option")
        options[key] = int(number) if value.strip().lstrip("+-").isdigit() else number
    return options


def shown_measurement(obs: Observation, event: tuple[int, ...]) -> torch.Tensor:
    """``y`` as a picture: itself when it has the image's size, else ``A⁺ y`` (the observed
    pixels, the small image blown up, the grey image in every channel)."""
    y = obs.y.float()
    if y.shape[1] == math.prod(event):
        return y.reshape(-1, *event)
    spectrum = obs.spectrum(y)
    return spectrum.compose(obs.reading(y), torch.zeros(len(y), *event))


def psnr(x: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean PSNR in dB of model-unit images (range 2)."""
    mse = (x.float() - truth.float()).flatten(1).pow(2).mean(1).clamp_min(1e-12)
    return float((10 * torch.log10(4.0 / mse)).mean())


@click.command()
@model_option()
@sde_option
@click.option("--task", type=click.Choice(TASKS), default="inpaint", show_default=True)
@click.option(
    "--mask",
    default="half",
    show_default=True,
    help="inpaint: half (the lower half hidden), box (a centred box), random:P (each pixel "
    "hidden with probability P) or a PNG of the image's size (white: hidden).",
)
@click.option(
    "--factor", type=click.IntRange(1, 64), default=2, show_default=True,
    help="super-resolve: the average-pooling factor.",
)  # fmt: skip
@click.option(
    "--blur-std", type=click.FloatRange(min=0, min_open=True, max=100), default=1.0,
    show_default=True, callback=not_nan, help="deblur: the std of the 5×5 Gaussian kernel.",
)  # fmt: skip
@click.option(
    "--sigma-y", type=click.FloatRange(min=0, max=1e6), default=0.0, show_default=True,
    callback=not_nan, help="The measurement noise σ_y (model units).",
)  # fmt: skip
@click.option(
    "--method", type=click.Choice(METHOD_CHOICES), default="pigdm", show_default=True,
    help="How to sample p(x | y); exact: the exact posterior (gmm8, gmm64 only).",
)  # fmt: skip
@click.option(
    "--option", "method_options", multiple=True, metavar="KEY=VALUE",
    help="A method option, e.g. --option scale=0.5 (docs/inverse-problems.md lists them).",
)  # fmt: skip
@click.option(
    "--solver", type=SolverName(), default=None,
    help="A registered solver for methods that take one [default: the method's own].",
)  # fmt: skip
@click.option(
    "--steps", type=click.IntRange(1, MAX_STEPS), default=DEFAULT_RESTORE_STEPS,
    show_default=True,
)  # fmt: skip
@schedule_option
@input_option
@num_samples_option("restore")
@click.option(
    "--per-input", type=click.IntRange(1, 1024), default=1, show_default=True,
    help="Posterior samples drawn for each input.",
)  # fmt: skip
@seed_option
@device_option
@dtype_option
@out_option(
    "restored.png",
    "A .png (rows: measurement, restoration, truth) or an .npz (samples: the restorations "
    "in data units, y, mask, truth, settings).",
)
def restore(
    model, sde, task, mask, factor, blur_std, sigma_y, method, method_options, solver, steps,
    schedule, source, num_samples, per_input, seed, device, dtype, out,
):  # fmt: skip
    """Restore measured inputs: inpaint, colorize, super-resolve, deblur or denoise.

    \b
    Examples:
      sdediff restore --task inpaint --mask half --method pigdm
      sdediff restore --task super-resolve --factor 2 --method ddrm --sigma-y 0.05
      sdediff restore --model gmm64 --task inpaint --method exact --out post.npz
      sdediff restore --input samples.npz --task deblur --method dps --steps 200
    """
    writable_output(out, suffixes=OUT_SUFFIXES)
    options = parse_options(method_options)
    problem, device = open_problem(model, sde, device, dtype)
    event = image_view(tuple(problem.output_shape))
    try:
        op = build_measurement(task, event, mask=mask, factor=factor, blur_std=blur_std, seed=seed)
    except sd.ArgumentError as err:
        hint = {"inpaint": "--mask", "super-resolve": "--factor"}.get(task, "--task")
        raise click.BadParameter(f"{err} ({model})", param_hint=hint) from None
    if method == "exact" and problem.mixture is None:
        raise click.BadParameter(
            f"exact needs an analytic problem (gmm8, gmm64); {model} is a trained model",
            param_hint="--method",
        )
    if method == "exact" and options:
        raise click.BadParameter("exact takes no options", param_hint="--option")
    truth = read_inputs(problem, source, num_samples, seed).reshape(-1, *event)
    if len(truth) * per_input > MAX_INPUTS * 4:
        raise click.BadParameter(
            f"{len(truth)} inputs × {per_input} is more than {MAX_INPUTS * 4:,} restorations",
            param_hint="--per-input",
        )
    y = op.measure(truth.double(), sigma_y, seeded_generator(seed + 1)).float()
    y, truth = y.repeat_interleave(per_input, 0), truth.repeat_interleave(per_input, 0)
    console.print(
        f"restoring {len(truth) // per_input} {plural(len(truth) // per_input, 'input')} of "
        f"{model}{f' ({per_input} samples each)' if per_input > 1 else ''} ({task}, "
        f"σ_y = {sigma_y:g}) with {method}, {steps} {plural(steps, 'step')}",
        highlight=False,
    )
    with friendly_errors("restoring"), torch.no_grad():  # gradient methods ask for their own
        y_dev = y.to(device)
        if method == "exact":
            posterior = problem.mixture.posterior(op, y.double(), sigma_y)
            res = sd.sample(
                posterior.score_fn(problem.sde), problem.sde, (len(y), *event), solver or "heun",
                steps, schedule, seed=seed, device=device, dtype=DTYPES[dtype], to_zero=True,
            )  # fmt: skip
        else:
            res = sd.restore(
                problem.model, problem.sde, op, y_dev, sigma_y, method, solver, steps, schedule,
                seed=seed, dtype=DTYPES[dtype], **options,
            )  # fmt: skip
    x = res.x.float().cpu()
    obs = Observation(op, y, sigma_y)
    residual = float(obs.residual(x).norm(dim=1).mean()) / math.sqrt(y.shape[1])
    settings = {
        "model": model, "task": task, "method": method, "method_options": res.options,
        "solver": res.solver, "steps": steps, "schedule": schedule, "sigma_y": sigma_y,
        "seed": seed, "nfe": res.nfe, "network_passes": res.network_passes,
        "input": str(source) if source else "held-out data",
    }  # fmt: skip
    if task == "inpaint":
        settings["mask"] = mask
    settings["per_input"] = per_input
    _write(out, problem, op, obs, x, truth, event, settings, per_input)
    images = problem.mixture is None and len(event) == 3
    quality = f", PSNR {psnr(x, truth):.1f} dB" if images else ""
    console.print(
        f"[bold green]{len(x)}[/] restored with {method} ({res.solver}): NFE {res.nfe} "
        f"({res.network_passes} network passes), {res.wall_time:.2f} s; ‖Ax − y‖/√m = "
        f"{residual:.3g} (σ_y = {sigma_y:g}){quality} -> {out}",
        highlight=False,
    )


def _write(out, problem, op, obs, x, truth, event, settings, per: int) -> None:
    if out.suffix.lower() == ".npz":
        arrays = {
            "samples": problem.to_data_units(x.reshape(-1, *problem.output_shape)).numpy(),
            "truth": problem.to_data_units(truth.reshape(-1, *problem.output_shape)).numpy(),
            "y": obs.y.numpy(),
            "settings": np.array(json.dumps(settings)),
        }
        if isinstance(op, Inpaint):
            arrays["mask"] = op.mask.numpy()
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        return
    n = len(x) // per
    if len(event) == 3:  # columns: inputs; rows: measurement, each draw, truth
        draws = x.view(n, per, *event).transpose(0, 1).reshape(-1, *event)
        rows = torch.cat([shown_measurement(obs, event)[::per], draws, truth[::per]])
        save_image_grid(rows, out, columns=n)
        return
    title = f"{settings['model']}: {settings['task']} with {settings['method']} (stars: truth)"
    data = problem.to_data_units
    save_restorations(data(truth[::per]), data(x), out, title)


@click.command()
@model_option()
@sde_option
@click.option(
    "--strength", type=click.FloatRange(0, 1), required=True, callback=not_nan,
    help="How far to noise the inputs: 0 keeps them, 1 samples afresh.",
)  # fmt: skip
@click.option("--solver", type=SolverName(), default="heun", show_default=True)
@click.option(
    "--steps", type=click.IntRange(1, MAX_STEPS), default=25, show_default=True,
    help="Grid intervals of the full path; strength s runs the last s of them.",
)  # fmt: skip
@schedule_option
@input_option
@num_samples_option("edit")
@seed_option
@device_option
@dtype_option
@out_option(
    "edited.png",
    "A .png (rows: input, edit) or an .npz (samples: the edits in data units, input).",
)
def edit(model, sde, strength, solver, steps, schedule, source, num_samples, seed, device,
         dtype, out):  # fmt: skip
    """Edit inputs with SDEdit: noise them to a strength, then solve back to the data.

    \b
    Examples:
      sdediff edit --strength 0.5
      sdediff edit --input samples.npz --strength 0.3 --solver dpmpp_2m --out edited.npz
    """
    writable_output(out, suffixes=OUT_SUFFIXES)
    problem, device = open_problem(model, sde, device, dtype)
    x = read_inputs(problem, source, num_samples, seed)
    with friendly_errors("editing"), torch.inference_mode():
        res = sd.sdedit(
            problem.model, problem.sde, x.to(device, DTYPES[dtype]), strength, solver, steps,
            schedule, seed=seed,
        )  # fmt: skip
    edited = res.x.float().cpu()
    if out.suffix.lower() == ".npz":
        settings = {"model": model, "strength": strength, "solver": res.solver, "steps": steps,
                    "schedule": schedule, "seed": seed, "nfe": res.nfe}  # fmt: skip
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.savez(f, samples=problem.to_data_units(edited).numpy(),
                     input=problem.to_data_units(x).numpy(),
                     settings=np.array(json.dumps(settings)))  # fmt: skip
    elif x.ndim == 4:
        save_image_grid(torch.cat([x, edited]), out, columns=len(x))
    else:
        panels = [("input", problem.to_data_units(x)), ("edited", problem.to_data_units(edited))]
        save_scatter(panels, out, f"{model}: SDEdit at strength {strength:g}")
    console.print(
        f"[bold green]{len(edited)}[/] edited at strength {strength:g} with {res.solver}: "
        f"NFE {res.nfe}, {res.wall_time:.2f} s -> {out}",
        highlight=False,
    )
