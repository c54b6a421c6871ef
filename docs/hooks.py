"""mkdocs hooks: the benchmark pictures and real ``sdediff`` output become part of the site.

- Every PNG under ``benchmarks/results`` is published as ``img/<name>``, so pages link
  ``img/peers_gmm8.png`` and the pictures the benchmarks write are the ones shown.
- A line ``<!-- sdediff ARGS -->`` in a page is replaced by ``$ sdediff ARGS`` and the
  command's real output, run at build time, so the reference cannot drift.
- A line ``<!-- solver-table -->`` becomes the registry as a table (every solver's
  metadata with default options, its options and its reference); ``<!-- sde-table -->``
  the SDE registry (name, class, parameters, summary).
- A line ``<!-- modules sde_diffusion.solvers -->`` becomes a ``::: module`` entry for every
  module of that package but its ``base`` and ``registry`` (documented above it), so a
  new solver or SDE file is on its API page without an edit.
- Sphinx roles in docstrings (``:class:`X```) render as plain code.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
COMMAND = re.compile(r"^<!-- sdediff (.+?) -->$", re.M)
MODULES = re.compile(r"^<!-- modules ([\w.]+) -->$", re.M)
ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc):(?=<code>)")


def on_files(files, config):
    from mkdocs.structure.files import File  # only mkdocs calls this hook

    for picture in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"img/{picture.name}", abs_src_path=str(picture)))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    markdown = markdown.replace("<!-- solver-table -->", solver_table())
    markdown = markdown.replace("<!-- sde-table -->", sde_table())
    markdown = MODULES.sub(lambda m: module_entries(m.group(1)), markdown)
    return COMMAND.sub(lambda m: _run(m.group(1)), markdown)


def on_page_content(html: str, page, config, files) -> str:
    return ROLE.sub("", html)


def module_entries(package: str) -> str:
    """``::: package.module`` (heading level 3) for each module of ``package`` in name order,
    but ``base`` and ``registry``."""
    import importlib
    import pkgutil

    path = importlib.import_module(package).__path__
    names = sorted(m.name for m in pkgutil.iter_modules(path) if m.name not in ("base", "registry"))
    options = "    options:\n      heading_level: 3"
    return "\n\n".join(f"::: {package}.{name}\n{options}" for name in names)


def sde_table() -> str:
    """The SDE registry, one row per SDE: name, class, parameters with defaults, summary."""
    import inspect

    from sde_diffusion.sdes import SDE_TYPES

    rows = ["| name (`--sde`) | class | parameters | what it is |", "| --- | --- | --- | --- |"]
    for name, cls in SDE_TYPES.items():
        params = [
            f"`{p.name}={p.default!r}`"
            for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
        ]
        summary = (inspect.getdoc(cls) or "").split("\n")[0]
        rows.append(f"| `{name}` | `{cls.__name__}` | {', '.join(params) or '–'} | {summary} |")
    return "\n".join(rows)


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def solver_table() -> str:
    """The registry, one row per solver, from ``sd.list_solvers()`` and the default instance."""
    import sde_diffusion as sd
    from sde_diffusion.evaluation.benchmark import fixed_grid
    from sde_diffusion.solvers.peer_names import peer_names
    from sde_diffusion.solvers.registry import solver_class, solver_options

    rows = [
        "| name | ComfyUI / diffusers | integrates | order | NFE / step | stochastic | "
        "batch-free | options | reference |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for info in sd.list_solvers():
        solver = sd.get_solver(info.name)
        aliases = f" ({', '.join(f'`{a}`' for a in info.aliases)})" if info.aliases else ""
        comfy, diffusers = peer_names(info.name)
        peers = ", ".join([*(f"`{n}`" for n in comfy), *([f"{diffusers}"] if diffusers else [])])
        options = ", ".join(f"`{o}`" for o in solver_options(solver_class(info.name))) or "–"
        nfe = str(solver.nfe_per_step) if fixed_grid(solver) else "adaptive"
        process = "reverse SDE" if solver.kind == "sde" else "PF-ODE"
        rows.append(
            f"| `{info.name}`{aliases} | {peers or '–'} | {process} | {solver.order:g} | {nfe} | "
            f"{yes_no(solver.stochastic)} | {yes_no(solver.batch_invariant)} | "
            f"{options} | {info.reference or '–'} |"
        )
    return "\n".join(rows)


def _run(args: str) -> str:
    from click.testing import CliRunner
    from sdediff_cli.main import main

    os.environ["COLUMNS"] = "110"  # rich tables at a width the page shows whole
    result = CliRunner().invoke(
        main, shlex.split(args), prog_name="sdediff", catch_exceptions=False
    )
    if result.exit_code != 0:
        raise RuntimeError(f"sdediff {args} exited {result.exit_code}: {result.output}")
    return f"```text\n$ sdediff {args}\n{result.output.rstrip()}\n```"
