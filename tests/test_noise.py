"""Per-sample noise: standard normals whose draws do not depend on the batch."""

import math

import pytest
import scipy.stats
import torch

import sde_diffusion as sd


def test_per_sample_noise_is_standard_normal():
    z = sd.PerSampleNoise(seed=3).normal((2000, 50), dtype=torch.float64).flatten()
    assert scipy.stats.kstest(z.numpy(), "norm").pvalue > 1e-3
    n = len(z)
    assert abs(float(z.mean())) < 4 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 4 * math.sqrt(2 / n)


def test_draws_are_uncorrelated_across_samples_elements_and_draws():
    noise = sd.PerSampleNoise(seed=5)
    a, b = noise.normal((4000, 8)), noise.normal((4000, 8))
    bound = 5 / math.sqrt(4000 * 7)
    assert abs(float((a[1:] * a[:-1]).mean())) < bound  # neighbouring samples
    assert abs(float((a[:, 1:] * a[:, :-1]).mean())) < bound  # neighbouring elements
    assert abs(float((a * b).mean())) < 5 / math.sqrt(4000 * 8)  # successive draws


def test_a_sample_sees_the_same_noise_in_any_batch():
    whole = sd.PerSampleNoise(seed=1).normal((10, 3))
    part = sd.PerSampleNoise(seed=1, first_index=4).normal((3, 3))
    torch.testing.assert_close(part, whole[4:7], rtol=0, atol=0)
    assert not torch.equal(sd.PerSampleNoise(seed=2).normal((10, 3)), whole)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_device_follow_the_request(dtype):
    z = sd.PerSampleNoise(0).fresh(torch.empty(4, 2, 3, dtype=dtype))
    assert z.dtype == dtype and z.shape == (4, 2, 3) and torch.isfinite(z).all()


@pytest.mark.parametrize(
    "solver",
    [
        "heun",
        "euler_maruyama",
        "ancestral",
        "heun_sde",
        "ddim",
        "euler_ancestral",
        "dpm_2_ancestral",
        "dpmpp_2s_ancestral",
        "dpmpp_sde",
        "dpmpp_2m_sde",
        "dpmpp_3m_sde",
        "restart",
    ],
)
def test_samples_do_not_depend_on_the_batch_size(solver):
    sde, gmm = sd.EDMSDE(), sd.eight_gaussians()
    options = {"eta": 1.0} if solver == "ddim" else {}

    def draw(first, n):
        return sd.sample(
            gmm.score_fn(sde),
            sde,
            (n, 2),
            solver,
            steps=8,
            noise=sd.PerSampleNoise(7, first),
            **options,
        ).x

    whole = draw(0, 48)
    pieces = torch.cat([draw(0, 5), draw(5, 30), draw(35, 13)])
    torch.testing.assert_close(pieces, whole, rtol=0, atol=1e-6)


def test_negative_seed_is_rejected():
    with pytest.raises(ValueError, match="seed and first_index"):
        sd.PerSampleNoise(-1)
