"""Sliced Wasserstein and MMD against closed forms."""

import math

import torch

import sde_diffusion as sd
from sde_diffusion.evaluation.metrics import mmd, noise_floor, sliced_wasserstein


def test_sliced_w2_of_a_shift_is_its_projected_length():
    """Shifting by m gives SW2^2 = mean (m . theta)^2 -> |m|^2 / d over random directions.

    For d = 3, u = cos(angle) is uniform on [-1, 1]: u^2 has mean 1/3 and variance 4/45,
    so with P directions SW2 has standard error about |m| sqrt(4/45) / (2 sqrt(P/3) sqrt(P)).
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 3, generator=g, dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    projections = 2000
    sw = sliced_wasserstein(x, x + shift, projections=projections, generator=g)
    expected = shift.norm().item() / math.sqrt(3)
    se_of_square = shift.norm().item() ** 2 * math.sqrt(4 / 45) / math.sqrt(projections)
    assert abs(sw - expected) < 4 * se_of_square / (2 * expected)


def test_sliced_w2_of_same_law_is_near_zero_and_grows_with_difference():
    gmm = sd.eight_gaussians()
    g = torch.Generator().manual_seed(1)
    a, b = gmm.sample(4000, generator=g), gmm.sample(4000, generator=g)
    far = sd.eight_gaussians(radius=3.0).sample(4000, generator=g)
    assert sliced_wasserstein(a, b, generator=g) < 0.2 < sliced_wasserstein(a, far, generator=g)


def test_mmd_separates_laws_and_is_unbiased_at_zero():
    g = torch.Generator().manual_seed(2)
    same = [
        mmd(torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g)) for _ in range(20)
    ]
    assert abs(sum(same) / len(same)) < 3 * torch.tensor(same).std() / math.sqrt(len(same))
    shifted = mmd(torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g) + 1.0)
    assert shifted > 10 * max(same)


def test_noise_floor_is_a_median_of_independent_pairs():
    gmm = sd.eight_gaussians()

    def sampler(n, seed):
        return gmm.sample(n, generator=torch.Generator().manual_seed(seed))

    floor = noise_floor(sampler, 2000)
    assert 0 < floor < 0.2
