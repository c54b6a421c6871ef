"""A run's log: ``NAME.metrics.jsonl`` and ``NAME.curves.png`` beside its checkpoint.

One JSON object per line.  Every ``log_every`` steps a training row
``{"step", "time", "loss", "grad_norm", "lr", "samples_per_s"}`` (loss and gradient
norm averaged over the steps since the last row, ``time`` the run's training seconds
so far); every ``eval_every`` steps an evaluation row ``{"step", "time", <metric>}``
(:mod:`sde_diffusion.evaluation.quality`).  A resumed run keeps the rows up to the step
it resumes from and appends, so steps never go back.  The picture is redrawn at each
checkpoint.  With a TensorBoard folder the same scalars go there too (the ``tensorboard``
package, imported only then).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_path
from ..errors import ArgumentError
from ..plotting import _pyplot, _save

__all__ = [
    "QualityMetric",
    "TrainingLog",
    "curves_path",
    "metrics_path",
    "read_metrics",
    "save_curves",
]


@dataclass
class QualityMetric:
    """What ``eval_every`` logs: ``evaluate(model)`` scores a score model, lower is better
    (built for a data set by :func:`sde_diffusion.evaluation.quality.quality_metric`)."""

    name: str  # the key in the log: sliced_w2, digits_fid or heldout_loss
    evaluate: Callable[[Any], float]


def metrics_path(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}.metrics.jsonl")


def curves_path(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}.curves.png")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics log (a line cut short by a crash is dropped)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


class TrainingLog:
    """Writes a run's metrics; ``start_step > 0`` continues the log of a resumed run."""

    def __init__(self, checkpoint: str | Path, start_step: int, tensorboard: str | Path | None):
        self.path, self.picture = metrics_path(checkpoint), curves_path(checkpoint)
        kept = (
            [r for r in read_metrics(self.path) if r["step"] <= start_step]
            if (start_step > 0 and self.path.exists())
            else []
        )
        with atomic_path(self.path) as tmp:  # a fresh run starts a fresh log
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.time_offset = max((r.get("time", 0.0) for r in kept), default=0.0)
        self.writer = _tensorboard(tensorboard) if tensorboard else None
        self.failed = False  # a write failed (a full disk): warned once, the run goes on
        self.written, self.drawn = len(kept), 0  # rows in the file, rows in the picture

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (the file is not held open between rows)."""
        row = {**row, "time": round(row["time"] + self.time_offset, 3)}
        self._guard(lambda: self._append(json.dumps(row) + "\n"))
        self.written += 1
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("step", "time"):
                    self.writer.add_scalar(key, value, row["step"])

    def _append(self, line: str) -> None:
        with self.path.open("a") as f:
            f.write(line)

    def flush(self) -> None:
        """Redraw the curves (at each checkpoint)."""
        if self.writer is not None:
            self.writer.flush()
        if self.written > self.drawn and not self.failed:  # rows came since the last picture
            self.drawn = self.written
            rows = read_metrics(self.path)
            title = self.path.name.removesuffix(".metrics.jsonl")
            self._guard(lambda: save_curves(rows, self.picture, title=f"{title}: training log"))

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()

    def _guard(self, action) -> None:
        """Run a write; an ``OSError`` (a full disk, a folder made read-only) warns once and
        stops the log, never the training."""
        if self.failed:
            return
        try:
            action()
        except OSError as err:
            self.failed = True
            warnings.warn(
                f"the training log stopped: could not write beside {self.path.name} "
                f"({err.strerror or err}); training goes on",
                RuntimeWarning,
                stacklevel=3,
            )


def _tensorboard(folder: str | Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ArgumentError(
            "--tensorboard needs the tensorboard package: pip install 'sde-diffusion[tensorboard]'"
        ) from None
    return SummaryWriter(str(folder))


PANELS = (
    ("loss", "training loss", True),
    ("grad_norm", "gradient norm", True),
    ("lr", "learning rate", False),
    ("samples_per_s", "samples / s", False),
)
EVAL_NAMES = {
    "digits_fid": "digits-FID (test split)",
    "sliced_w2": "sliced W2 (held out)",
    "heldout_loss": "held-out loss",
}


def save_curves(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """A 2×3 figure: loss, gradient norm, learning rate, throughput and the eval metric
    against the step."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), constrained_layout=True)
    evals = [k for k in EVAL_NAMES if any(k in r for r in rows)]
    panels = [*PANELS, *((k, EVAL_NAMES[k], k != "sliced_w2") for k in evals[:2])]
    for ax, (key, label, log) in zip(axes.flat, panels, strict=False):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            steps, values = zip(*points, strict=True)
            marker = "o" if key in EVAL_NAMES else None
            ax.plot(steps, values, marker=marker, markersize=3, linewidth=1.2)
            if log and min(values) > 0:
                ax.set_yscale("log")
            if key in EVAL_NAMES:
                best = min(points, key=lambda p: p[1])
                ax.set_title(f"{label}: best {best[1]:.4g} at step {best[0]}", fontsize=10)
        if not ax.get_title():
            ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(title)
    return _save(fig, path)
