"""Pictures: sample grids for images, scatter plots for points, error-vs-NFE plots.

Every figure is written atomically (``atomic_path``) with matplotlib's Agg
backend, so it works without a display.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .atomic import atomic_path

__all__ = [
    "image_grid",
    "save_error_plot",
    "save_image_grid",
    "save_restorations",
    "save_samples",
    "save_scatter",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, **kwargs: Any) -> Path:
    """Render in memory, then write the bytes atomically (the file is open only briefly)."""
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    plt.close(fig)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return Path(path)


def image_grid(
    x: Tensor, low: float = -1.0, high: float = 1.0, columns: int | None = None
) -> Tensor:
    """Tile images ``(N, C, H, W)`` into one ``(rows*(H+2), cols*(W+2), C)`` array in [0, 1].

    Tiles are laid out row-major, ``columns`` to a row (a near-square grid by
    default), each with a dark border.
    """
    x = ((x.detach().float().cpu() - low) / (high - low)).clamp(0, 1)
    n, c, h, w = x.shape
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    x = torch.cat([x, x.new_zeros(rows * cols - n, c, h, w)])
    x = torch.nn.functional.pad(x, (1, 1, 1, 1))
    x = x.reshape(rows, cols, c, h + 2, w + 2).permute(0, 3, 1, 4, 2)
    return x.reshape(rows * (h + 2), cols * (w + 2), c)


def save_image_grid(
    x: Tensor, path: str | Path, low: float = -1.0, high: float = 1.0, columns: int | None = None
) -> Path:
    """A PNG grid of images ``(N, C, H, W)`` whose values span ``[low, high]``."""
    plt = _pyplot()
    grid = image_grid(x, low, high, columns)
    scale = max(1, 512 // grid.shape[0])
    fig = plt.figure(figsize=(grid.shape[1] * scale / 100, grid.shape[0] * scale / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    image = grid[..., 0].numpy() if grid.shape[-1] == 1 else grid.numpy()
    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    return _save(fig, path)


def save_scatter(
    panels: Sequence[tuple[str, Tensor]], path: str | Path, title: str | None = None
) -> Path:
    """Side-by-side scatter plots of the first two coordinates of each ``(title, x)``."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.5 * len(panels), 4.5), sharex=True, sharey=True, squeeze=False
    )
    for ax, (name, x) in zip(axes[0], panels, strict=True):
        x = x.detach().float().cpu().flatten(1)
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.5)
        ax.set_title(name)
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path, dpi=110)


def save_restorations(
    truth: Tensor, restored: Tensor, path: str | Path, title: str | None = None
) -> Path:
    """Points: each truth (a star) and its restorations (dots in the truth's colour), the
    first two coordinates; ``restored`` holds ``len(restored) // len(truth)`` per truth."""
    plt = _pyplot()
    truth = truth.detach().float().cpu().flatten(1)
    per = len(restored) // len(truth)
    restored = restored.detach().float().cpu().flatten(1).view(len(truth), per, -1)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    colours = plt.get_cmap("tab10")
    for i in range(len(truth)):
        c = colours(i % 10)
        ax.scatter(restored[i, :, 0], restored[i, :, 1], s=4, alpha=0.5, color=c)
        ax.scatter(truth[i, :1], truth[i, 1:2], s=120, marker="*", color=c, edgecolor="black")
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path, dpi=110)


def save_samples(
    x: Tensor,
    path: str | Path,
    title: str | None = None,
    reference: Tensor | None = None,
    columns: int | None = None,
) -> Path:
    """Images as a grid (``columns`` to a row), anything else as a scatter (beside
    ``reference`` if given)."""
    if x.ndim == 4:
        return save_image_grid(x, path, columns=columns)
    panels = [("data", reference)] if reference is not None else []
    return save_scatter([*panels, ("samples", x)], path, title)


def save_error_plot(
    rows: Sequence[dict[str, Any]],
    path: str | Path,
    y: str = "error",
    ylabel: str = "endpoint RMS error per dimension",
    title: str | None = None,
) -> Path:
    """Log-log ``y`` against ``nfe``, one line per ``solver`` (rows are dicts).

    A label ``"method (library)"`` takes its method's colour and its library's line
    style, so the same method from two libraries reads as one colour, two styles; past
    20 methods the colours come round again with the next style.  Many lines put the
    legend beside the axes.
    """
    plt = _pyplot()
    labels = list(dict.fromkeys(r["solver"] for r in rows))
    many = len(labels) > 12
    fig, ax = plt.subplots(figsize=(10.5, 5.5) if many else (6.5, 4.5))
    methods = list(dict.fromkeys(label.split(" (")[0] for label in labels))
    libraries = list(dict.fromkeys(label.partition(" (")[2] for label in labels))
    colours = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    styles = [("-", "o", 6), ("--", "x", 8), (":", "s", 5)]
    for label in labels:
        pts = sorted((r["nfe"], r[y]) for r in rows if r["solver"] == label and math.isfinite(r[y]))
        method, _, library = label.partition(" (")
        turn = methods.index(method) // colours.N  # colours used up: the next style
        line, marker, size = styles[(libraries.index(library) + turn) % len(styles)]
        if pts:
            ax.plot(
                *zip(*pts, strict=True),
                linestyle=line,
                marker=marker,
                markersize=size,
                color=colours(methods.index(method) % colours.N),
                label=label,
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE (network evaluations)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if many:
        ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return _save(fig, path, dpi=110)
