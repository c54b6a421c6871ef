"""A tuned grid on disk: :class:`TunedGrid` and its JSON file (written atomically)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import atomic_path, read_small_text
from ..errors import ArgumentError

__all__ = ["FORMAT", "VERSION", "TunedGrid", "load_grid"]

FORMAT, VERSION = "sde-diffusion tuned grid", 1


@dataclass
class TunedGrid:
    """A fitted time grid: ``times`` (decreasing, ending at ``t_min`` or 0) for ``solver``
    with ``solver_options`` at ``nfe`` evaluations, the ``sde`` it belongs to, and
    ``record``: how it was fitted (draws, seed, method, start and final error, seconds)."""

    times: list[float]
    solver: str
    solver_options: dict[str, Any]
    nfe: int
    sde: str
    record: dict[str, Any] = field(default_factory=dict)

    def tensor(self) -> Tensor:
        """The grid as a float64 tensor (what ``sd.solve`` and ``sd.sample(grid=...)`` take)."""
        return torch.tensor(self.times, dtype=torch.float64)

    def save(self, path: str | Path) -> Path:
        """Write the grid as JSON, atomically."""
        with atomic_path(path) as tmp:
            tmp.write_text(
                json.dumps({"format": FORMAT, "version": VERSION, **asdict(self)}, indent=1)
            )
        return Path(path)


def load_grid(path: str | Path) -> TunedGrid:
    """A grid written by :meth:`TunedGrid.save`; anything else is a clear ``ValueError``."""
    try:
        data = json.loads(read_small_text(path, "a tuned grid"))
    except RecursionError:
        raise ArgumentError(f"{path} is not a tuned grid: its JSON nests too deeply") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArgumentError(f"cannot read a tuned grid from {path}: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArgumentError(f"{path} is not a tuned grid (sdediff tune writes them)")
    if data.get("version") != VERSION:
        raise ArgumentError(
            f"{path} is a tuned grid of format version {data.get('version')!r}; this "
            f"version of sde-diffusion reads version {VERSION}"
        )
    fields = {k: data.get(k) for k in ("times", "solver", "solver_options", "nfe", "sde")}
    times = fields["times"]
    if (
        not isinstance(times, list)
        or len(times) < 2
        or not all(isinstance(t, (int, float)) and math.isfinite(t) for t in times)
        or any(a <= b for a, b in pairwise(times))
        or not isinstance(fields["solver"], str)
        or not isinstance(fields["solver_options"], dict)
        or not isinstance(fields["nfe"], int)
        or not isinstance(fields["sde"], str)
    ):
        raise ArgumentError(f"{path}: a tuned grid needs decreasing finite times and its solver")
    return TunedGrid(**fields, record=data.get("record") or {})
