"""``sdediff``: the command-line face of sde-diffusion (click + rich)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import click
from rich.table import Table

import sde_diffusion as sd
from sde_diffusion.evaluation.benchmark import fixed_grid

from .autoencoder import train_autoencoder
from .bench import bench
from .common import console
from .distill import distill
from .ema import ema
from .info import info as info_command
from .likelihood import likelihood
from .restore import edit, restore
from .sample import sample
from .train import train
from .tune import tune


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(sd.__version__, prog_name="sdediff")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Score-based generative modelling with SDEs: samplers, models, benchmarks.

    \b
    Start with:
      sdediff sample --solver heun       # 64 digits from the shipped model -> samples.png
      sdediff solvers                    # every registered solver
      sdediff bench --model gmm8         # solvers side by side at equal NFE
    """
    ctx.obj = {"debug": debug}
    if not debug:  # a warning is one line, as errors are (the source line only with --debug)
        ctx.with_resource(_one_line_warnings())


@contextmanager
def _one_line_warnings() -> Iterator[None]:
    """``Warning: message`` for the command's duration; the format before it afterwards."""
    before = warnings.formatwarning
    warnings.formatwarning = lambda message, *rest, **kw: f"Warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = before


@main.command()
@click.option(
    "--kind",
    type=click.Choice(["sde", "ode"]),
    default=None,
    help="Only solvers of the reverse SDE or of the probability-flow ODE.",
)
def solvers(kind: str | None) -> None:
    """List the registered solvers.

    Example: sdediff solvers --kind ode
    """
    table = Table(title="sde-diffusion solvers")
    for column in ("name", "aliases", "kind", "order", "NFE/step", "stochastic", "batch-free"):
        table.add_column(
            column, no_wrap=column == "name", style="bold" if column == "name" else None
        )
    table.add_column("summary", ratio=1, overflow="fold")
    for info in sd.list_solvers():
        solver = sd.get_solver(info.name)  # metadata of the default options
        if kind and solver.kind != kind:
            continue
        nfe = str(solver.nfe_per_step) if fixed_grid(solver) else "adaptive"
        table.add_row(
            info.name,
            ", ".join(info.aliases),
            solver.kind,
            f"{solver.order:g}",
            nfe,
            "yes" if solver.stochastic else "no",
            "yes" if solver.batch_invariant else "no",
            info.summary,
        )
    console.print(table)


for command in (
    sample, restore, edit, train, train_autoencoder, distill, ema, tune, bench, likelihood,
    info_command,
):  # fmt: skip
    main.add_command(command)

if __name__ == "__main__":
    main()
