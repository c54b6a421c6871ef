"""``sdediff ema``: choose a run's EMA length after training (post-hoc EMA)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from sde_diffusion.errors import ArgumentError
from sde_diffusion.evaluation.quality import quality_metric
from sde_diffusion.training.checkpoint import CheckpointError
from sde_diffusion.training.data import load_data, split_held_out
from sde_diffusion.training.posthoc_ema import (
    export_posthoc,
    gamma_from_sigma_rel,
    posthoc_model,
    snapshots,
)
from sde_diffusion.training.state import load_score_model

from .common import SafePath, comma_list, console, friendly_errors, writable_output


def sigma_rel_list(ctx, param, value: str) -> list[float]:
    values = comma_list(value, float, "number")
    try:
        for length in values:
            gamma_from_sigma_rel(length)  # the library's range check
    except ArgumentError as err:
        raise click.BadParameter(str(err)) from None
    return values


@click.command()
@click.option(
    "--run",
    type=SafePath(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The training checkpoint of a run trained with --ema posthoc.",
)
@click.option(
    "--sigma-rel",
    default="0.05,0.075,0.1,0.125,0.15,0.2",
    show_default=True,
    callback=sigma_rel_list,
    help="EMA lengths to rebuild, as a share of training (comma-separated).",
)
@click.option(
    "--at-step",
    type=click.IntRange(min=1),
    default=None,
    help="Rebuild the EMA as it was at this step (default: the last snapshot).",
)
@click.option(
    "--samples",
    type=click.IntRange(min=2),
    default=1000,
    show_default=True,
    help="Samples each length is scored with.",
)
@click.option(
    "--out",
    type=SafePath(dir_okay=False, path_type=Path),
    default=None,
    help="Where the best model goes [default: RUN.posthoc.safetensors].",
)
def ema(run: Path, sigma_rel: list[float], at_step: int | None, samples: int, out: Path | None):
    """Rebuild EMAs of any length from a run's snapshots, score each, export the best.

    The EMA of each relative length (Karras et al. 2024) is a least-squares combination
    of the snapshots that --ema posthoc wrote; each is scored with the run's quality
    metric (digits-FID, sliced W2 or the held-out loss; lower is better) beside the EMA
    the checkpoint holds, and the best is written as a model that sdediff sample loads.

    \b
    Example:
      sdediff ema --run runs/moons.safetensors --sigma-rel 0.05,0.1,0.15 --samples 500
    """
    out = out or run.with_name(f"{run.stem}.posthoc.safetensors")
    writable_output(out, suffixes=(".safetensors",))
    with friendly_errors("post-hoc EMA"):
        found = snapshots(run)
        base, config = load_score_model(run)
        data = config.get("data", {})
        dataset = load_data(data.get("source", data.get("name", "")), 20000, 0)
        held_out = None
        if "held_out" in data:
            seed = config.get("train", {}).get("seed", 0)
            _, held_out = split_held_out(dataset, data["held_out"], seed)
        metric = quality_metric(dataset, held_out, samples=samples)
        if metric is None:
            raise CheckpointError(
                f"{run} was trained on user data with nothing held out to score against; "
                "train it with --eval-every N (which holds out 5%)"
            )
        last = max(s.step for s in found)
        at = last if at_step is None else at_step
        if at > last:
            raise click.BadParameter(
                f"the last snapshot of {run} is at step {last}", param_hint="--at-step"
            )
        table = Table(title=f"post-hoc EMA of {run.name} at step {at} ({metric.name})")
        for column in ("EMA", "fit residual", metric.name):
            table.add_column(column, justify="right")
        table.add_row("checkpoint's EMA", "", f"{metric.evaluate(base):.4g}")
        scored = []
        for length in sigma_rel:
            model, residual = posthoc_model(base, found, length, at)
            value = metric.evaluate(model)
            scored.append((value, length, model))
            table.add_row(f"sigma_rel {length:g}", f"{residual:.2%}", f"{value:.4g}")
        console.print(table)
        value, length, model = min(scored, key=lambda row: row[0])
        export_posthoc(model, config, out, length)
    console.print(f"best: sigma_rel {length:g} ({metric.name} {value:.4g}) -> {out}")
