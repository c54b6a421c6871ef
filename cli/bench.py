"""``sdediff bench``: solvers side by side at equal NFE on a model or an analytic problem."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path

import click
import torch
from rich.table import Table

import sde_diffusion as sd
from sde_diffusion.atomic import atomic_path
from sde_diffusion.evaluation.benchmark import (
    compare_solvers,
    convergence_slope,
    ends_at_zero,
    fixed_grid_solvers,
)
from sde_diffusion.plotting import save_error_plot

from .common import (
    DTYPES,
    SCHEDULE_CHOICE,
    SafePath,
    comma_list,
    console,
    friendly_errors,
    writable_output,
)
from .sample import (
    device_option,
    dtype_option,
    model_option,
    open_problem,
    sde_option,
    seed_option,
)


def _solver_list(ctx, param, value: str | None) -> list[str]:
    if value is None or value == "all":
        return fixed_grid_solvers()
    names = comma_list(value, name="solver")
    try:
        return [sd.get_solver(n).info.name for n in names]
    except sd.UnknownSolverError as err:
        raise click.BadParameter(str(err), ctx, param) from None


MAX_NFE = 100_000


def json_safe(value):
    """``value`` with every non-finite float as ``None`` (JSON has no NaN: an undefined
    error or slope is ``null``)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _nfe_list(ctx, param, value: str) -> list[int]:
    nfes = comma_list(value, int, "integer")
    if not 2 <= min(nfes) <= max(nfes) <= MAX_NFE:
        raise click.BadParameter(
            f"NFE budgets must lie in [2, {MAX_NFE:,}], got {value}", ctx, param
        )
    return nfes


@click.command()
@model_option(default="gmm8")
@sde_option
@click.option(
    "--solvers",
    callback=_solver_list,
    default="all",
    show_default=True,
    help="Comma-separated registry names; 'all' is every fixed-grid solver.",
)
@click.option("--nfe", callback=_nfe_list, default="10,20,50", show_default=True)
@click.option("--num-samples", "-n", type=click.IntRange(2, 10**6), default=1024, show_default=True)
@click.option(
    "--schedule",
    type=SCHEDULE_CHOICE,
    default="karras",
    show_default=True,
)
@seed_option
@device_option
@dtype_option
@click.option(
    "--out",
    type=SafePath(dir_okay=False, path_type=Path),
    default=Path("bench.json"),
    show_default=True,
    help="JSON results; the error-vs-NFE plot goes beside it as .png.",
)
def bench(model, sde, solvers, nfe, num_samples, schedule, seed, device, dtype, out):
    """Compare solvers' quality and speed at equal NFE.

    Analytic problems (gmm8, gmm64) report the endpoint RMS error against a
    DOP853 solution at 1e-10 from the same noise; every problem reports its
    quality metric (sliced W2, or digits-FID for digits) and samples/s.

    \b
    Examples:
      sdediff bench --model gmm8 --solvers euler,heun,lms,dpmpp_2m --nfe 10,20,50
      sdediff bench --model moons --nfe 20,50 --out moons_bench.json
    """
    writable_output(out, suffixes=(".json",))
    problem, device = open_problem(model, sde, device, dtype)
    to_zero = ends_at_zero(problem)
    idle = [s for s in solvers if all(sd.get_solver(s).steps_for(n, to_zero) is None for n in nfe)]
    if idle:  # nothing to compare for them: a row-less table and an empty plot otherwise
        raise click.UsageError(
            f"{', '.join(idle)} cannot run at NFE {', '.join(map(str, nfe))}: bench compares "
            "solvers at a fixed NFE, which adaptive solvers choose for themselves and others "
            "exceed on their shortest grid; pick fixed-grid solvers or a larger --nfe"
        )
    table = Table(title=f"{model} under {problem.sde!r}: {num_samples} samples, {schedule} grid")
    for column in ("solver", "NFE", "steps", "endpoint error", problem.metric_name, "samples/s"):
        table.add_column(column, justify="left" if column == "solver" else "right")

    def show(row: dict) -> None:
        error = "-" if row["error"] != row["error"] else f"{row['error']:.4g}"
        console.print(
            f"  {row['solver']:<16} NFE {row['nfe']:>4}  error {error:>9}  "
            f"{row['metric']} {row['quality']:.4g}",
            highlight=False,
        )

    with friendly_errors("benchmark"), console.status("benchmarking"):
        rows = compare_solvers(
            problem,
            solvers,
            nfe,
            num_samples=num_samples,
            seed=seed,
            schedule=schedule,
            device=device,
            dtype=DTYPES[dtype],
            on_row=show,
        )
    slopes = {}
    for name in dict.fromkeys(r["solver"] for r in rows):
        mine = [r for r in rows if r["solver"] == name]
        slopes[name] = convergence_slope([r["nfe"] for r in mine], [r["error"] for r in mine])
        for r in mine:
            error = "-" if r["error"] != r["error"] else f"{r['error']:.4g}"
            table.add_row(
                name,
                str(r["nfe"]),
                str(r["steps"]),
                error,
                f"{r['quality']:.4g}",
                f"{r['samples_per_s']:,.0f}",
            )
    console.print(table)
    report = {
        "model": model,
        "sde": repr(problem.sde),
        "schedule": schedule,
        "num_samples": num_samples,
        "seed": seed,
        "device": str(device),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
        "rows": rows,
        "slopes": slopes,
    }
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(json_safe(report), indent=1, allow_nan=False) + "\n")
    picture = out.with_suffix(".png")
    has_error = any(r["error"] == r["error"] for r in rows)
    y, label = ("error", "endpoint RMS error") if has_error else ("quality", problem.metric_name)
    save_error_plot(rows, picture, y=y, ylabel=label, title=f"{model}: {label} vs NFE")
    console.print(f"wrote {out} and {picture}")
