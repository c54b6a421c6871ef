"""The sample-quality figure a run logs every ``eval_every`` steps, chosen by its data.

- vector data (toy 2-D sets, user vectors): sliced W2 between the model's samples and
  held-out points (a fresh draw of a toy set, else the held-out rows);
- the 8×8 digits: digits-FID of the model's samples to the test split, with the shipped
  digits classifier as judge (the figure the shipped digits models report);
- other images: the denoising loss on held-out images at fixed times and noise (lower is
  better; the training loss on data the run never saw).

Samples are drawn with a fixed seed, so the figures of two steps (or two runs) differ by
the model only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..noise import seeded_generator
from ..parametrization import ScoreModel
from ..sampling import sample
from ..training.data import TOY_DATASETS, Dataset, digits, labelled_8gaussians, toy_2d
from ..training.log import QualityMetric
from ..training.losses import DenoisingScoreMatching
from .digits_eval import digits_fid, load_digits_classifier
from .metrics import sliced_wasserstein

__all__ = ["QualityMetric", "quality_metric"]


def _labels(model: ScoreModel, n: int, device) -> Tensor | None:
    classes = getattr(model.net, "config", {}).get("num_classes")
    return torch.arange(n, device=device) % classes if classes else None


def _samples(model: ScoreModel, count: int, event: tuple[int, ...], seed: int) -> Tensor:
    device = next(model.parameters()).device
    with torch.no_grad():
        res = sample(
            model,
            model.sde,
            (count, *event),
            "heun",
            25,  # on the Karras grid: the shipped digits models' protocol
            seed=seed,
            device=device,
            cond=_labels(model, count, device),
        )
    return res.x


def _reference(data: Dataset, held_out: Dataset | None, seed: int) -> Tensor | None:
    """Data the run never trained on: a toy set's fresh draw, digits' test split, or
    ``held_out``."""
    if data.name == "8gaussians":
        return labelled_8gaussians(2000, seed + 1)[0]
    if data.name in TOY_DATASETS:
        return toy_2d(data.name, 2000, seed + 1)
    if data.name == "digits":
        return digits("test").x
    return None if held_out is None else held_out.x


def quality_metric(
    data: Dataset, held_out: Dataset | None = None, *, samples: int = 1000, seed: int = 0
) -> QualityMetric | None:
    """The metric for a run on ``data``; ``None`` when there is nothing held out to score
    against (user data without ``held_out``)."""
    reference = _reference(data, held_out, seed)
    if reference is None:
        return None
    event = tuple(data.x.shape[1:])
    if data.name == "digits":
        judge = load_digits_classifier()

        def fid(model: ScoreModel) -> float:
            x = _samples(model, samples, event, seed).clamp(-1, 1)
            return digits_fid(x, reference, judge)

        return QualityMetric("digits_fid", fid)
    if len(event) == 1:

        def w2(model: ScoreModel) -> float:
            x = _samples(model, samples, event, seed)
            gen = seeded_generator(seed, "cpu")
            return sliced_wasserstein(x.cpu(), reference, generator=gen)

        return QualityMetric("sliced_w2", w2)

    def heldout_loss(model: ScoreModel) -> float:
        device = next(model.parameters()).device
        x0 = reference.to(device)
        loss = DenoisingScoreMatching(model.sde, "edm")
        gen = seeded_generator(seed, device)
        with torch.no_grad():
            t = loss.sample_times(len(x0), generator=gen, device=device)
            eps = torch.randn(x0.shape, generator=gen, device=device, dtype=x0.dtype)
            return float(loss.loss_at(model, x0, t, eps).mean())

    return QualityMetric("heldout_loss", heldout_loss)
