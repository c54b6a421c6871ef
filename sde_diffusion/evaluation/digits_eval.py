"""Judging 8x8 digit samples: a small CNN classifier and a Fréchet distance on its features.

The classifier is trained by the project on the digits train split
(``python benchmarks/train_digits_classifier.py``) and shipped as package data.
"digits-FID" is the Fréchet distance between Gaussians fitted to its penultimate
features (Heusel et al. 2017, with this classifier in place of Inception):

    FID = |m1 - m2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from torch import Tensor, nn

from ..training.checkpoint import load_checkpoint, prefixed, save_checkpoint

__all__ = [
    "DigitsClassifier",
    "class_accuracy",
    "confident_fraction",
    "digits_fid",
    "frechet_distance",
    "load_digits_classifier",
    "train_digits_classifier",
]

CLASSIFIER_FILE = "digits_classifier.safetensors"


class DigitsClassifier(nn.Module):
    """Two conv blocks and a 64-unit feature layer for ``(B, 1, 8, 8)`` images in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 2 * 2, 64),
            nn.SiLU(),
        )
        self.head = nn.Linear(64, 10)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def train_digits_classifier(
    x: Tensor, labels: Tensor, steps: int = 2000, seed: int = 0
) -> DigitsClassifier:
    """Adam on cross-entropy with small random shifts (no augmentation beyond that)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        idx = torch.randint(len(x), (128,), generator=g)
        batch = x[idx]
        shift = torch.randint(-1, 2, (2,), generator=g).tolist()
        batch = torch.roll(batch, shifts=shift, dims=(2, 3))
        loss = nn.functional.cross_entropy(model(batch), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def save_digits_classifier(model: DigitsClassifier, path: str | Path, metrics: dict) -> Path:
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    return save_checkpoint(path, tensors, {"network": "digits_classifier", "metrics": metrics})


def load_digits_classifier(path: str | Path | None = None) -> DigitsClassifier:
    """The shipped classifier (or one saved at ``path``)."""
    if path is None:
        path = Path(str(resources.files("sde_diffusion.pretrained") / CLASSIFIER_FILE))
    tensors, _ = load_checkpoint(path)
    model = DigitsClassifier()
    model.load_state_dict(prefixed(tensors, "model"))
    return model.eval()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``(N, F)`` and ``(M, F)``."""
    m1, m2 = a.mean(0), b.mean(0)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(c1 @ c2)
    root = root.real if np.iscomplexobj(root) else root
    return float(((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * root))


@torch.no_grad()
def digits_fid(x: Tensor, y: Tensor, classifier: DigitsClassifier | None = None) -> float:
    """digits-FID between two image sets ``(N, 1, 8, 8)`` in [-1, 1]."""
    classifier = classifier or load_digits_classifier()
    fa = classifier.features(x.float().cpu()).double().numpy()
    fb = classifier.features(y.float().cpu()).double().numpy()
    return frechet_distance(fa, fb)


@torch.no_grad()
def confident_fraction(
    x: Tensor, threshold: float = 0.9, classifier: DigitsClassifier | None = None
) -> float:
    """Share of images the classifier recognises with max softmax >= ``threshold``."""
    classifier = classifier or load_digits_classifier()
    probs = classifier(x.float().cpu()).softmax(1)
    return float((probs.max(1).values >= threshold).float().mean())


@torch.no_grad()
def class_accuracy(x: Tensor, labels: Tensor, classifier: DigitsClassifier | None = None) -> float:
    """Share of images ``x`` that the digits classifier assigns to their ``labels``."""
    classifier = classifier or load_digits_classifier()
    predicted = classifier(x.float().cpu().clamp(-1, 1)).argmax(1)
    return float((predicted == labels.cpu()).float().mean())
