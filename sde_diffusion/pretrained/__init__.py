"""Small score models shipped with the package, each trained by a documented command.

``moons``: a residual MLP (EDM preconditioning, VP SDE) on the 2-D moons set, trained by
``python benchmarks/train_toy_model.py``.  ``digits``: a small U-Net on sklearn's 8x8
digits, trained by ``python benchmarks/train_digits_model.py --steps 5000``.
``digits-cond``: the same U-Net, class-conditional with a null label (condition dropout
0.1), trained by ``python benchmarks/train_digits_model.py --conditional``.
``digits-fast``: a two-step student of ``digits`` (consistency distillation; its metadata
names the times it samples on), made by ``python benchmarks/distillation.py --train`` then
``--ship 2``.  ``digits32``: a U-Net on the digits upsampled to 32x32; ``digits32-latent``:
a U-Net on the 4x8x8 latents of ``digits32-autoencoder.safetensors`` (which it names and
decodes through), the two trained for equal wall time by ``python
benchmarks/latent_digits.py --budget 900``.  Their metrics are in ``<name>.json`` and
``docs/benchmarks.md``.  ``digits_classifier.safetensors`` is the evaluator behind
digits-FID (``python benchmarks/train_digits_classifier.py``).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ArgumentError
from ..parametrization import ScoreModel
from ..training.state import load_score_model

__all__ = ["available", "load_pretrained", "pretrained_path"]


def available() -> list[str]:
    """Names of the shipped score models (each a ``.safetensors`` with a metrics ``.json``)."""
    names = {p.name for p in resources.files(__name__).iterdir()}
    return sorted(
        n.removesuffix(".json")
        for n in names
        if n.endswith(".json") and n.replace(".json", ".safetensors") in names
    )


def pretrained_path(name: str) -> Path:
    path = Path(str(resources.files(__name__) / f"{name}.safetensors"))
    if not path.is_file():
        raise ArgumentError(f"no shipped model {name!r}; available: {', '.join(available())}")
    return path


def load_pretrained(name: str, device: str = "cpu") -> tuple[ScoreModel, dict[str, Any]]:
    """The shipped ``ScoreModel`` and its config (training metrics under ``"metrics"``)."""
    model, config = load_score_model(pretrained_path(name), device=device)
    metrics = Path(str(resources.files(__name__) / f"{name}.json"))
    if metrics.is_file():
        config["metrics"] = json.loads(metrics.read_text())
    return model, config
