"""``sdediff tune``: fit a solver's time grid to a model at a fixed NFE."""

from __future__ import annotations

from pathlib import Path

import click
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

import sde_diffusion as sd
from sde_diffusion.tuning import METHODS, START_SCHEDULES, check_request, endpoint_error, fine_solve

from .common import (
    DTYPES,
    SCHEDULE_CHOICE,
    SafePath,
    SolverName,
    console,
    friendly_errors,
    speed_options,
    writable_output,
)
from .sample import device_option, dtype_option, model_option, open_problem, sde_option, seed_option


@click.command()
@model_option()
@sde_option
@click.option("--solver", type=SolverName(), default="dpmpp_3m", show_default=True)
@click.option("--nfe", type=click.IntRange(2, 1000), default=10, show_default=True)
@click.option(
    "--samples",
    type=click.IntRange(1, 100_000),
    default=256,
    show_default=True,
    help="Prior draws the grid is fitted on.",
)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    default="search",
    show_default=True,
    help="How to fit: a derivative-free search (any solver), dynamic programming, or "
    "gradients through the solver (deis, ipndm).",
)
@click.option(
    "--fit-weights",
    is_flag=True,
    help="With --method gradient: fit the solver's step weights with the grid (they are "
    "saved in the grid file).",
)
@click.option(
    "--max-evaluations",
    type=click.IntRange(1, 100_000),
    default=300,
    show_default=True,
    help="Solves the search may spend (each costs NFE model calls on --samples draws); "
    "with --method gradient, iterations per stage.",
)
@click.option(
    "--start",
    "starts",
    type=SCHEDULE_CHOICE,
    multiple=True,
    help="A standard grid to score as a start (repeat for several; the best starts the fit) "
    "[default: uniform, quadratic, karras, logsnr].",
)
@click.option(
    "--check/--no-check",
    default=True,
    show_default=True,
    help="Judge the grid on as many fresh draws (seed + 1) beside the best standard grid.",
)
@seed_option
@device_option
@speed_options
@dtype_option
@click.option(
    "--out",
    type=SafePath(dir_okay=False, path_type=Path),
    default=Path("grid.json"),
    show_default=True,
)
def tune(
    model,
    sde,
    solver,
    nfe,
    samples,
    method,
    fit_weights,
    max_evaluations,
    starts,
    check,
    seed,
    device,
    compile_,
    precision,
    dtype,
    out,
):
    """Fit the time grid of a solver at a fixed NFE to a model (and its step weights).

    The grid minimises the endpoint error of SOLVER against a fine solve of the same
    model from the same prior draws; it needs no data.  Use it with
    `sdediff sample --grid`.

    \b
    Examples:
      sdediff tune --model digits --solver dpmpp_3m --nfe 10 --out grid.json
      sdediff tune --model gmm8 --solver deis --nfe 5 --samples 512
      sdediff tune --model gmm8 --solver deis --method gradient --fit-weights
      sdediff tune --model digits --solver dpmpp_2m --nfe 8 --start ays --start karras
    """
    writable_output(out, suffixes=(".json",))
    with friendly_errors("tuning"):  # before the model loads
        instance = check_request(solver, nfe, method, fit_weights)
    problem, device = open_problem(model, sde, device, dtype, compile_, precision)
    shape, state = tuple(problem.event_shape), DTYPES[dtype]
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed} solves (at most {task.total})"),
        TimeElapsedColumn(),
    )
    progress = Progress(*columns, console=console, transient=True)
    with friendly_errors("tuning"), progress as bar:
        stages = 1 + fit_weights if method == "gradient" else 1
        starts = starts or START_SCHEDULES
        most = stages * max_evaluations + len(starts) + 1  # the fit, its starts, dp
        task = bar.add_task(f"tuning {solver} at NFE {nfe}", total=most)
        grid = sd.tune_timesteps(
            problem.model,
            problem.sde,
            nfe=nfe,
            solver=instance,
            shape=shape,
            samples=samples,
            seed=seed,
            method=method,
            fit_weights=fit_weights,
            max_evaluations=max_evaluations,
            starts=starts,
            device=device,
            dtype=state,
            on_evaluation=lambda n: bar.update(task, completed=n),
        )
        grid.record["model"] = model
        tuned_solver = sd.get_solver(grid.solver, **grid.solver_options)
        if check:
            fresh = torch.Generator(device=device).manual_seed(seed + 1)
            x_T = problem.sde.prior_sample(
                (samples, *shape), generator=fresh, device=device, dtype=state
            )
            start, to_zero = grid.record["standard"], grid.record["to_zero"]
            reference, _ = fine_solve(problem.model, problem.sde, x_T, to_zero=to_zero)
            standard = sd.timesteps(problem.sde, len(grid.times) - 1, start, to_zero=to_zero)
            grid.record["check"] = {
                "seed": seed + 1,
                "tuned": endpoint_error(
                    problem.model, problem.sde, x_T, grid.times, tuned_solver, reference
                ),
                start: endpoint_error(
                    problem.model, problem.sde, x_T, standard, instance, reference
                ),
            }
        grid.save(out)
    record = grid.record
    console.print(
        f"{solver} at NFE {grid.nfe}: endpoint error {record['error']:.4g} on the "
        f"{samples} fitting draws (best standard grid, {record['start']}: "
        f"{record['start_errors'][record['start']]:.4g}), {record['evaluations']} solves, "
        f"{record['seconds']:.1f} s",
        highlight=False,
    )
    share = record.get("check_worst_share", 0.0)
    if share > 0.5:
        console.print(
            f"[yellow]note:[/] the worst 1 % of the check draws hold {share:.0%} of the squared "
            "error: it rests on a few draws and its estimate is noisy; fit on more (--samples)",
            highlight=False,
        )
    if check:
        console.print(
            f"on {samples} fresh draws: tuned {record['check']['tuned']:.4g}, "
            f"{record['standard']} {record['check'][record['standard']]:.4g}",
            highlight=False,
        )
    console.print(f"wrote {out}; use it with: sdediff sample --model {model} --grid {out}")
