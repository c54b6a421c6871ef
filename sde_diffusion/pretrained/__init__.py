"""Small score models shipped with the package, each trained by a documented command.

``moons``: a residual MLP (EDM preconditioning, VP SDE) on the 2-D moons set, trained by
``python benchmarks/train_toy_model.py``; its metrics are in ``moons.json`` and
``docs/benchmarks.md``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from ..parametrization import ScoreModel

__all__ = ["available", "load_pretrained", "pretrained_path"]


def available() -> list[str]:
    """Names of the shipped models."""
    folder = resources.files(__name__)
    return sorted(
        p.name.removesuffix(".safetensors")
        for p in folder.iterdir()
        if p.name.endswith(".safetensors")
    )


def pretrained_path(name: str) -> Path:
    path = Path(str(resources.files(__name__) / f"{name}.safetensors"))
    if not path.is_file():
        raise ValueError(f"no shipped model {name!r}; available: {', '.join(available())}")
    return path


def load_pretrained(name: str, device: str = "cpu") -> tuple[ScoreModel, dict[str, Any]]:
    """The shipped ``ScoreModel`` and its config (training metrics under ``"metrics"``)."""
    from ..training import load_score_model

    model, config = load_score_model(pretrained_path(name), device=device)
    metrics = Path(str(resources.files(__name__) / f"{name}.json"))
    if metrics.is_file():
        config["metrics"] = json.loads(metrics.read_text())
    return model, config
