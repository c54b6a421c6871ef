"""What the benchmark scripts share: the machine line, result files, table formatting."""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    """CPU (and GPU if used), thread count and torch version, for every results file."""
    cpu = platform.processor() or platform.machine()
    text = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()}"
    return f"{text}, torch {torch.__version__}, Python {platform.python_version()}"


def write_results(name: str, payload: dict[str, Any], markdown: str) -> None:
    """``results/<name>.json`` and ``results/<name>.md``, machine line first."""
    RESULTS.mkdir(exist_ok=True)
    payload = {"machine": machine(), **payload}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=1, default=float))
    (RESULTS / f"{name}.md").write_text(f"Machine: {payload['machine']}\n\n{markdown}")


def fmt(value: float, digits: int = 3) -> str:
    """Three significant digits; '–' for a missing (nan) value."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}g}" if abs(value) >= 1e-3 else f"{value:.{digits - 1}e}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; numbers go through ``fmt``, first column left-aligned."""
    cells = [[fmt(c) if isinstance(c, float) else str(c) for c in row] for row in rows]
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"


def pivot(
    rows: Sequence[dict[str, Any]], key: str, value: str, columns: Sequence[int]
) -> list[list[Any]]:
    """One line per distinct ``key`` with ``value`` at each NFE budget in ``columns``."""
    out = []
    for name in dict.fromkeys(r[key] for r in rows):
        by_nfe = {r["nfe_budget"]: r[value] for r in rows if r[key] == name}
        out.append([name, *(by_nfe.get(n, float("nan")) for n in columns)])
    return out
