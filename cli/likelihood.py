"""``sdediff likelihood``: NLL and bits/dim of data under a model, with a confidence interval."""

from __future__ import annotations

import math
import time

import click
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

import sde_diffusion as sd
from sde_diffusion.distributed import local_batches
from sde_diffusion.evaluation.elbo import elbo_terms
from sde_diffusion.evaluation.likelihood import (
    likelihood_solvers,
    likelihood_terms,
    nll_batched,
    pixel_range,
)
from sde_diffusion.latent import latent_model_of
from sde_diffusion.training.data import load_data

from .common import (
    console,
    friendly_errors,
    library_default,
    parse_device,
    speed_options,
    start_ranks,
)
from .sample import device_option, model_option, open_problem, sde_option, seed_option

Z95 = 1.959964


def _data(problem, spec: str | None, n: int, seed: int) -> tuple[torch.Tensor, dict]:
    """Data in model units and its description (``levels`` for integer pixels); a latent
    model's data are encoded into its latent space (continuous: no ``levels``)."""
    latent = latent_model_of(problem.model)
    expected = tuple(problem.event_shape if latent is None else latent.image_shape)
    if spec is None:
        if problem.reference is None:
            raise click.UsageError("this model names no data set of its own; pass --data")
        x = problem.reference(n, seed)[:n]
        info = problem.config.get("data", {}) if problem.mixture is None else {}
    else:
        with friendly_errors("loading the data"):
            dataset = load_data(spec, n, seed)
        if tuple(dataset.x.shape[1:]) != expected:
            raise click.UsageError(
                f"--data {spec} has events of shape {tuple(dataset.x.shape[1:])}; the model "
                f"expects {expected}"
            )
        x, info = dataset.x[:n], dataset.config()
    if latent is not None:
        with torch.no_grad():
            x = latent.encode(x.to(next(latent.autoencoder.parameters())))
        info = {k: v for k, v in info.items() if k != "levels"}
    return x, info


def _summary(values: torch.Tensor) -> tuple[float, float]:
    """Mean and 95% half-width (normal approximation, 1.96 standard errors)."""
    v = values.detach().double().cpu()
    half = Z95 * float(v.std()) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return float(v.mean()), half


@click.command()
@model_option()
@sde_option
@click.option(
    "--data",
    default=None,
    help="A data set (as for train); default: the model's own "
    "held-out data (digits: the test split).",
)
@click.option("--num-samples", "-n", type=click.IntRange(2, 10**6), default=128, show_default=True)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10**6),
    default=library_default(nll_batched, "batch_size"),
    show_default=True,
)
@click.option(
    "--estimator",
    type=click.Choice(["ode", "elbo", "both"]),
    default="ode",
    show_default=True,
    help="PF-ODE log-likelihood, the variational bound, or both side by side.",
)
@click.option(
    "--solver",
    type=click.Choice(likelihood_solvers()),
    default=library_default(likelihood_terms, "solver"),
    show_default=True,
)
@click.option(
    "--steps",
    type=click.IntRange(2, 100_000),
    default=library_default(likelihood_terms, "steps"),
    show_default=True,
    help="Steps of a fixed-grid ODE solver.",
)
@click.option(
    "--elbo-steps",
    type=click.IntRange(2, 10**6),
    default=library_default(elbo_terms, "steps"),
    show_default=True,
)
@click.option(
    "--rtol",
    type=click.FloatRange(min=0, min_open=True),
    default=library_default(likelihood_terms, "rtol"),
    show_default=True,
)
@click.option(
    "--atol",
    type=click.FloatRange(min=0, min_open=True),
    default=library_default(likelihood_terms, "atol"),
    show_default=True,
)
@click.option(
    "--divergence",
    type=click.Choice(["auto", "exact", "hutchinson"]),
    default=library_default(likelihood_terms, "divergence"),
    show_default=True,
    help="auto: exact up to 32 dimensions, Hutchinson above.",
)
@click.option(
    "--probes",
    type=click.IntRange(1, 1000),
    default=library_default(likelihood_terms, "probes"),
    show_default=True,
)
@seed_option
@device_option
@speed_options
def likelihood(
    model,
    sde,
    data,
    num_samples,
    batch_size,
    estimator,
    solver,
    steps,
    elbo_steps,
    rtol,
    atol,
    divergence,
    probes,
    seed,
    device,
    compile_,
    precision,
):
    """Negative log-likelihood and bits/dim of data under a model.

    Integer-valued images (digits) are dequantised uniformly and reported in
    bits per pixel of the integer data; other data report bits/dim of the
    continuous density.  Analytic problems add the exact value.

    \b
    Examples:
      sdediff likelihood --model digits -n 64 --estimator both
      sdediff likelihood --model gmm8 --sde vp -n 512
    """
    device = start_ranks(parse_device(device))
    problem, device = open_problem(model, sde, device, "float64", compile_, precision)
    x, info = _data(problem, data, num_samples, seed)
    x = x.to(device=device, dtype=torch.float64)
    dim = x[0].numel()
    levels = info.get("levels")
    ode_options = {
        "solver": solver,
        "steps": steps,
        "rtol": rtol,
        "atol": atol,
        "divergence": divergence,
        "probes": probes,
    }
    estimators = ["ode", "elbo"] if estimator == "both" else [estimator]
    table = Table(title=f"{model}: {len(x)} samples of {info.get('name', model)}")
    for column in ("estimator", "NLL (nats)", "bits/dim", "NFE per sample", "wall time"):
        table.add_column(column, justify="left" if column == "estimator" else "right")

    bits = 1 / (dim * math.log(2))
    scaling = {}
    if levels:
        low, high = pixel_range(info["scale"], info["shift"], levels)
        scaling = {"levels": levels, "low": low, "high": high}
        x = problem.to_data_units(x).round().clamp(0, levels - 1)  # the integer pixels
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    mine = len(local_batches(len(x), batch_size))
    with (
        friendly_errors("the likelihood"),
        Progress(*columns, console=console, transient=True) as bar,
    ):
        for name in estimators:
            start = time.perf_counter()
            task = bar.add_task(f"{name} batches", total=mine)
            nll_all, nfe = sd.nll_batched(
                problem.model,
                problem.sde,
                x,
                estimator=name,
                batch_size=batch_size,
                seed=seed,
                on_batch=lambda start, stop, task=task: bar.advance(task),
                **scaling,
                **(ode_options if name == "ode" else {"steps": elbo_steps}),
            )
            if nll_all is None:  # another rank of a torchrun job: rank 0 reports
                continue
            mean, half = _summary(nll_all)
            label = "PF-ODE" if name == "ode" else f"ELBO ({elbo_steps} steps)"
            table.add_row(
                label,
                f"{mean:.4f} ± {half:.4f}",
                f"{mean * bits:.4f} ± {half * bits:.4f}",
                f"{nfe:.0f}",
                f"{time.perf_counter() - start:.1f} s",
            )
        if nll_all is None:
            return
        if problem.mixture is not None:  # continuous data: x is in model units
            exact = -problem.mixture.marginal_log_prob(problem.sde, x, problem.sde.t_min)
            mean, half = _summary(exact)
            table.add_row(
                "exact",
                f"{mean:.4f} ± {half:.4f}",
                f"{mean * bits:.4f} ± {half * bits:.4f}",
                "-",
                "-",
            )
    console.print(table)
    kind = "dequantised integer data" if levels else "continuous density at t_min"
    console.print(f"± is a 95% interval over samples; bits/dim of the {kind}, D = {dim}.")
    latent = latent_model_of(problem.model)
    if latent is not None:
        console.print(
            f"In latent space: the density of the encoded latents {latent.latent_shape} (the "
            f"autoencoder's posterior means), not of the images {latent.image_shape}."
        )
