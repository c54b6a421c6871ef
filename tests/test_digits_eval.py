"""The digits classifier and digits-FID."""

import numpy as np
import pytest
import torch

from sde_diffusion.evaluation.digits_eval import (
    confident_fraction,
    digits_fid,
    frechet_distance,
    load_digits_classifier,
)
from sde_diffusion.training.checkpoint import load_checkpoint
from sde_diffusion.training.data import digits


def test_frechet_distance_of_a_shift_is_its_squared_length():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20000, 4)) @ np.diag([1.0, 2.0, 0.5, 1.5])
    shift = np.array([1.0, -0.5, 0.0, 2.0])
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_frechet_distance_of_scaled_gaussians():
    """N(0, I) vs N(0, s^2 I) in d dims: d (1 - s)^2."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(200000, 3)), 2.0 * rng.normal(size=(200000, 3))
    assert frechet_distance(a, b) == pytest.approx(3 * (1 - 2.0) ** 2, abs=0.03)


def test_shipped_classifier_recognises_the_test_split():
    classifier = load_digits_classifier()
    test = digits("test")
    with torch.no_grad():
        accuracy = float((classifier(test.x).argmax(1) == test.labels).float().mean())
    assert accuracy >= 0.97
    assert confident_fraction(test.x, classifier=classifier) >= 0.9


def test_recorded_train_test_fid_is_reproduced():
    from importlib import resources

    path = resources.files("sde_diffusion.pretrained") / "digits_classifier.safetensors"
    recorded = load_checkpoint(str(path))[1]["metrics"]["fid_train_test"]
    fid = digits_fid(digits("train").x, digits("test").x)
    assert fid == pytest.approx(recorded, rel=1e-6)
    noise = torch.rand(500, 1, 8, 8) * 2 - 1
    assert digits_fid(noise, digits("test").x) > 10 * fid
