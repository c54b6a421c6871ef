"""What every ``sdediff`` command shares: error handling, devices, dtypes, outputs.

Exit statuses: 0 success, 2 usage errors (a bad name, value or path), 1 runtime
errors (a damaged checkpoint, a model that fails in the chosen dtype, a solver
that diverges), 130 after Ctrl-C, 143 after SIGTERM.  Errors are one sentence; ``sdediff --debug``
shows the traceback instead.
"""

from __future__ import annotations

import inspect
import math
import os
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import torch
import torch.distributed as dist
from rich.console import Console

import sde_diffusion as sd
from sde_diffusion.devices import checked_device
from sde_diffusion.distributed import (
    init_distributed,
    rank_and_world,
    report_failure,
    reported_failures,
)
from sde_diffusion.sampling import NonFiniteError
from sde_diffusion.solvers import UnknownSolverError
from sde_diffusion.solvers.registry import solver_class, solver_options
from sde_diffusion.training.checkpoint import CheckpointError
from sde_diffusion.training.data import DataError

from .entry import INTERRUPTED, TERMINATED, Terminated

console = Console()
err_console = Console(stderr=True)

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@contextmanager
def on_sigterm(action) -> Iterator[None]:
    """Within the block, SIGTERM (a scheduler, ``torchrun``, ``kill``) calls ``action()``."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: action())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# bad input the user can fix on the command line: exit status 2
USAGE_ERRORS = (sd.ArgumentError,)
# failures while running: exit status 1
RUNTIME_ERRORS = (CheckpointError, DataError, NonFiniteError, RuntimeError, OSError, ValueError)


def library_default(function, name: str):
    """The default of parameter ``name`` of a library function: the one set of defaults,
    which the flags read (and ``--help`` shows)."""
    return inspect.signature(function).parameters[name].default


def debug_enabled() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().obj and ctx.find_root().obj.get("debug"))


@contextmanager
def friendly_errors(what: str) -> Iterator[None]:
    """Turn library exceptions into one-line click errors (tracebacks with --debug)."""
    try:
        yield
    except click.ClickException:
        raise
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM as entry.Terminated
        how = "terminated" if isinstance(stop, Terminated) else "interrupted"
        err_console.print(
            f"[yellow]{how}[/]: {what} stopped; nothing half-written is left.", soft_wrap=True
        )
        raise SystemExit(TERMINATED if isinstance(stop, Terminated) else INTERRUPTED) from None
    except USAGE_ERRORS as err:
        if debug_enabled():
            raise
        report_failure(str(err))
        raise click.UsageError(rank_prefix() + str(err)) from None
    except RUNTIME_ERRORS as err:
        if debug_enabled():
            raise
        if peer_failure(err):
            raise click.ClickException(
                f"{rank_prefix()}{what} stopped: {peer_story(err)}"
            ) from None
        report_failure(f"{what} failed: {first_line(err)}")
        raise click.ClickException(f"{rank_prefix()}{what} failed: {first_line(err)}") from None


PEER_SIGNS = ("gloo", "nccl", "connection", "timed out", "timeout", "socket")


def peer_failure(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed because another rank did."""
    if rank_and_world()[1] == 1:
        return False
    text = str(err).lower()
    return isinstance(err, dist.DistError) or (
        isinstance(err, RuntimeError) and any(sign in text for sign in PEER_SIGNS)
    )


def failed_ranks() -> str:
    """``"rank 1 failed (why)"`` for each rank that reported a failure; ``""`` if none."""
    return "; ".join(f"rank {rank} failed ({why})" for rank, why in reported_failures().items())


def peer_story(err: BaseException) -> str:
    """Which rank failed and why, as far as the ranks that reported say (one line)."""
    reported = failed_ranks()
    if reported:
        return reported
    return (
        "another rank failed or stopped answering without a message (killed? out of "
        f"memory? the launcher's summary names it): {first_line(err)}"
    )


def first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def rank_prefix() -> str:
    """``"rank R: "`` in a multi-process run, so each message names its process."""
    rank, world = rank_and_world()
    return f"rank {rank}: " if world > 1 else ""


def start_ranks(device: torch.device) -> torch.device:
    """Under ``torchrun``: join the process group, keep every rank but 0 quiet, and
    give each rank the GPU of its local rank (``--device cuda``)."""
    if not init_distributed():
        return device
    console.quiet = rank_and_world()[0] != 0
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def parse_device(value: str) -> torch.device:
    """A device that exists here, or a usage error naming what does."""
    try:
        return checked_device(value)
    except sd.ArgumentError as err:
        raise click.BadParameter(
            str(err).replace("the cpu device", "--device cpu"), param_hint="--device"
        ) from None


class SafePath(click.Path):
    """``click.Path`` that refuses a NUL character as a usage error (the OS cannot)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and "\0" in value:
            self.fail("a path cannot contain a NUL character", param, ctx)
        return super().convert(value, param, ctx)


def writable_output(path: Path, hint: str = "--out", suffixes: tuple[str, ...] = ()) -> Path:
    """Check before any work that ``path`` can be written (folders are created)."""
    if suffixes and path.suffix.lower() not in suffixes:
        raise click.BadParameter(f"{path} must end in {' or '.join(suffixes)}", param_hint=hint)
    if path.is_dir():
        raise click.BadParameter(f"{path} is a folder, not a file", param_hint=hint)
    existing = path.parent
    while not existing.exists():
        existing = existing.parent
    try:  # the real test: create (and remove) a file where the output will go
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise click.BadParameter(
            f"cannot write to {path.parent}: {err.strerror or err}", param_hint=hint
        ) from None
    if path.exists() and not os.access(path, os.W_OK):
        raise click.BadParameter(f"cannot overwrite {path}: permission denied", param_hint=hint)
    return path


def plural(count: int, noun: str) -> str:
    """``noun`` with an ``s`` unless ``count`` is 1."""
    return noun if count == 1 else noun + "s"


def comma_list(value: str, convert=str, name: str = "value") -> list:
    """``"a,b,c"`` -> ``[a, b, c]`` with each item converted; a usage error otherwise."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise click.BadParameter(f"expected a comma-separated list of {name}s")
    try:
        return [convert(v) for v in items]
    except ValueError:
        raise click.BadParameter(
            f"expected a comma-separated list of {name}s, got {value!r}"
        ) from None


def _solver_option_specs() -> dict[str, tuple[type, object]]:
    """Every keyword option of every registered solver: ``name -> (type, default)``; options
    without a default value (``corrections``: what a tuned grid file carries) have no flag."""
    specs: dict[str, tuple[type, object]] = {}
    for info in sd.list_solvers():
        cls = solver_class(info.name)
        for param in inspect.signature(cls.__init__).parameters.values():
            if param.default is None:
                continue
            if param.name in solver_options(cls) and param.name not in specs:
                specs[param.name] = (type(param.default), param.default)
    return specs


def solver_option_flags(command):
    """Add ``--eta``, ``--order``, ``--snr``, ``--churn``, ``--rtol``... (one per solver option)."""
    specs = _solver_option_specs()
    for name in sorted(specs, reverse=True):
        kind, _ = specs[name]
        takers = [i.name for i in sd.list_solvers() if name in solver_options(solver_class(i.name))]
        command = click.option(
            f"--{name.replace('_', '-')}",
            name,
            type=kind,
            default=None,
            help=f"Solver option ({', '.join(takers)}).",
        )(command)
    return command


def speed_options(command):
    """``--compile`` and ``--precision``: how the network runs (``sd.accelerate``)."""
    command = click.option(
        "--precision",
        type=click.Choice(list(sd.PRECISIONS)),
        default="fp32",
        show_default=True,
        help="The network's arithmetic (autocast); the solver state keeps its dtype.",
    )(command)
    return click.option(
        "--compile",
        "compile_",
        is_flag=True,
        help="Compile the network with torch.compile (once per shape, reported apart from "
        "the rate; a network that cannot compile runs eagerly after a warning).",
    )(command)


def build_solver(name: str, values: dict[str, object]) -> sd.Solver:
    """The solver with the options given on the command line; bad ones are usage errors."""
    options = {k: v for k, v in values.items() if v is not None}
    try:
        return sd.get_solver(name, **options)
    except sd.ArgumentError as err:
        raise click.UsageError(str(err)) from None


SCHEDULE_CHOICE = click.Choice([*sd.SCHEDULES, *sd.SCHEDULE_ALIASES], case_sensitive=False)
"""The --schedule values: every registered schedule and ComfyUI's other names for some."""


class SolverName(click.ParamType):
    """A registry name or alias (case and dashes ignored), listed in ``--help``."""

    name = "solver"

    def get_metavar(self, param, ctx=None) -> str:
        return "[" + "|".join(sd.solver_names()) + "]"

    def convert(self, value, param, ctx):
        try:
            return solver_class(value).info.name
        except UnknownSolverError as err:
            self.fail(str(err), param, ctx)


def solver_option_values(kwargs: dict) -> dict[str, object]:
    """Pop the solver options out of a command's keyword arguments."""
    return {name: kwargs.pop(name) for name in _solver_option_specs() if name in kwargs}


def finite(ctx, param, value: float) -> float:
    """A click callback: a finite number (``FloatRange(min=0)`` lets ``inf`` through)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, got {value}", ctx, param)
    return value


def not_nan(ctx, param, value: float) -> float:
    """A click callback: NaN passes ``FloatRange`` checks (its comparisons are false)."""
    if value is not None and math.isnan(value):
        raise click.BadParameter("must be a number, got nan", ctx, param)
    return value


def out_option(default: str, help: str | None = None):
    """``--out FILE`` (a file, not a folder) with ``default``."""
    return click.option(
        "--out",
        type=SafePath(dir_okay=False, path_type=Path),
        default=Path(default),
        show_default=True,
        help=help,
    )


def resume_option(help: str, callback=None):
    """``--resume CHECKPOINT`` (an existing file); with ``callback``, read first (eager),
    so the run's settings can become the other flags' defaults."""
    return click.option(
        "--resume",
        type=SafePath(exists=True, dir_okay=False, path_type=Path),
        default=None,
        callback=callback,
        is_eager=callback is not None,
        help=help,
    )
