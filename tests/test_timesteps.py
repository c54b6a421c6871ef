"""Time grids and the shared grid validator."""

import math

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.timesteps import AYS_LEVELS


@pytest.mark.parametrize("schedule", sd.SCHEDULES)
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_grid_shape_ends_and_monotone(any_sde, schedule, steps):
    ts = sd.timesteps(any_sde, steps, schedule)
    assert ts.shape == (steps + 1,) and ts.dtype == torch.float64
    assert ts[0].item() == pytest.approx(any_sde.T, rel=1e-12)
    assert ts[-1].item() == pytest.approx(any_sde.t_min, rel=1e-9)
    assert (ts[1:] < ts[:-1]).all()
    sd.validate_grid(any_sde, ts)


def test_karras_on_edm_matches_formula():
    sde, n, rho = sd.EDMSDE(), 10, 7.0
    i = torch.arange(n + 1, dtype=torch.float64)
    lo, hi = sde.sigma_min ** (1 / rho), sde.sigma_max ** (1 / rho)
    expected = (hi + i / n * (lo - hi)) ** rho
    torch.testing.assert_close(sd.timesteps(sde, n, "karras"), expected, rtol=1e-12, atol=0)


def test_logsnr_is_uniform_in_lambda(any_sde):
    lam = any_sde.log_snr(sd.timesteps(any_sde, 12, "logsnr"))
    diffs = lam.diff()
    torch.testing.assert_close(diffs, diffs.mean().expand(12), rtol=1e-7, atol=1e-9)


def test_quadratic_is_dense_near_data():
    ts = sd.timesteps(sd.VPSDE(), 20, "quadratic")
    assert (ts[-2] - ts[-1]) < (ts[0] - ts[1]) / 10


def test_to_zero_appends_zero_and_keeps_steps():
    ts = sd.timesteps(sd.EDMSDE(), 10, "karras", to_zero=True)
    assert ts.shape == (11,) and ts[-1] == 0 and ts[-2] == pytest.approx(0.002)
    with pytest.raises(ValueError, match=r"sigma\(0\) = 0"):
        sd.timesteps(sd.VESDE(), 10, to_zero=True)


def test_device_and_dtype():
    ts = sd.timesteps(sd.VPSDE(), 5, "karras", dtype=torch.float32, device="cpu")
    assert ts.dtype == torch.float32 and ts.device.type == "cpu"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=0), r"steps must be an integer in \[1, 1,000,000\], got 0"),
        (dict(steps=10**9), r"steps must be an integer in \[1, 1,000,000\]"),
        (dict(steps=2.5), "steps must be an integer in"),
        (dict(steps=5, schedule="cosine"), "unknown schedule 'cosine'; choose one of uniform"),
        (dict(steps=5, schedule="karras", rho=-1.0), "rho must be a positive"),
    ],
)
def test_bad_requests_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sd.timesteps(sd.VPSDE(), **kwargs)


@pytest.mark.parametrize(
    "grid, message",
    [
        ([[1.0, 0.5]], "1-D with at least 2 points, got shape"),
        ([1.0], "1-D with at least 2 points"),
        ([1.0, float("nan"), 0.1], "must be finite"),
        ([1.0, 0.5, 0.7], "strictly decreasing"),
        ([1.0, 1.0, 0.1], "strictly decreasing"),
        ([2.0, 0.5], r"must lie in \[0, T\] = \[0, 1.0\]"),
        ([1.0, -0.1], r"must lie in \[0, T\]"),
    ],
)
def test_validate_grid_errors(grid, message):
    with pytest.raises(ValueError, match=message):
        sd.validate_grid(sd.VPSDE(), torch.tensor(grid))


def test_validate_grid_zero_end_needs_zero_sigma():
    assert sd.validate_grid(sd.VPSDE(), torch.tensor([1.0, 0.5, 0.0]))[-1] == 0.0
    with pytest.raises(ValueError, match=r"sigma\(0\) = 0.01"):
        sd.validate_grid(sd.VESDE(), torch.tensor([1.0, 0.5, 0.0]))


# ComfyUI's schedules ------------------------------------------------------------------------


def stable_diffusion_sde() -> sd.DiscreteVPSDE:
    """SD 1.5's discrete VP table: ν from 0.0292 to 14.61, the range AYS and GITS were made on."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return sd.DiscreteVPSDE(torch.cumprod(1 - betas, 0))


def noise_levels(sde, ts):
    return torch.exp(-sde.log_snr(ts))


@pytest.mark.parametrize("schedule", sd.SCHEDULES)
@pytest.mark.parametrize("steps", [2, 3, 10, 40])
def test_every_schedule_reaches_zero(schedule, steps):
    for sde in (sd.VPSDE(), sd.EDMSDE(), sd.RectifiedFlow()):
        ts = sd.timesteps(sde, steps, schedule, to_zero=True)
        assert ts.shape == (steps + 1,) and ts[0] == pytest.approx(sde.T) and ts[-1] == 0
        sd.validate_grid(sde, ts)


def test_align_your_steps_reproduces_the_published_levels_on_stable_diffusion():
    sde = stable_diffusion_sde()
    published = torch.tensor(AYS_LEVELS["ays"], dtype=torch.float64)
    ts = sd.timesteps(sde, 10, "ays")
    torch.testing.assert_close(noise_levels(sde, ts), published, rtol=1e-6, atol=0)
    ours = sd.timesteps(sde, 10, "ays", to_zero=True)  # ComfyUI: the last level becomes 0
    torch.testing.assert_close(noise_levels(sde, ours[:-1]), published[:-1], rtol=1e-6, atol=0)


def test_gits_picks_stable_diffusion_levels():
    sde = stable_diffusion_sde()
    nu = noise_levels(sde, sd.timesteps(sde, 6, "gits"))
    levels = torch.tensor(
        [14.61464119, 5.85520077, 2.05039096, 0.95350921, 0.45573691, 0.17026083, 0.02916753],
        dtype=torch.float64,
    )  # GITS's 6-step row at 1.20
    torch.testing.assert_close(nu, levels, rtol=2e-3, atol=0)


def test_kl_optimal_polyexponential_and_aliases_on_edm():
    sde, n = sd.EDMSDE(), 8
    u = torch.arange(n + 1, dtype=torch.float64) / n
    lo, hi = sde.sigma_min, sde.sigma_max
    kl = torch.tan((1 - u) * math.atan(hi) + u * math.atan(lo))
    torch.testing.assert_close(sd.timesteps(sde, n, "kl_optimal"), kl, rtol=1e-10, atol=0)
    poly = torch.exp(math.log(lo) + (1 - u) ** 2 * (math.log(hi) - math.log(lo)))
    torch.testing.assert_close(
        sd.timesteps(sde, n, "polyexponential", rho=2.0), poly, rtol=1e-10, atol=0
    )
    torch.testing.assert_close(
        sd.timesteps(sde, n, "polyexponential"), sd.timesteps(sde, n, "logsnr")
    )
    assert torch.equal(sd.timesteps(sde, n, "exponential"), sd.timesteps(sde, n, "logsnr"))
    assert torch.equal(sd.timesteps(sde, n, "Normal"), sd.timesteps(sde, n, "uniform"))


def test_comfyui_time_schedules_on_vp():
    sde, n = sd.VPSDE(), 4
    simple = sd.timesteps(sde, n, "simple", to_zero=True)
    torch.testing.assert_close(
        simple, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64)
    )
    stride = (1 - sde.t_min) / n
    sgm = sd.timesteps(sde, n, "sgm_uniform", to_zero=True)
    torch.testing.assert_close(sgm[:-1], 1 - stride * torch.arange(4, dtype=torch.float64))
    ddim = sd.timesteps(sde, n, "ddim_uniform", to_zero=True)  # leading: t_min + j·stride
    torch.testing.assert_close(
        ddim[1:-1], sde.t_min + stride * torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    )
    beta = sd.timesteps(sde, 100, "beta")  # Beta(0.6, 0.6): dense at both ends
    gaps = beta.diff().abs()
    assert gaps[0] < gaps[50] and gaps[-1] < gaps[50]
    torch.testing.assert_close(gaps, gaps.flip(0), rtol=1e-6, atol=1e-9)  # symmetric law


def test_linear_quadratic_is_mochis_on_rectified_flow():
    sde = sd.RectifiedFlow(T=1.0 - 1e-6)
    ts = sd.timesteps(sde, 8, "linear_quadratic", to_zero=True)
    # linear to 0.025 over the first 4 steps, then quadratic to 1 (Genmo's Mochi schedule)
    torch.testing.assert_close(
        ts[1:4],
        1 - 0.025 * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) / 4,
        rtol=1e-5,
        atol=1e-6,
    )
    second = ts[4:-1].diff().diff()
    assert (second < 0).all()  # the quadratic part falls ever faster


def test_laplace_concentrates_around_nu_one():
    sde = sd.EDMSDE()
    nu = sd.timesteps(sde, 40, "laplace")
    near_one = ((nu > 0.3) & (nu < 3)).sum().item()
    assert near_one > 20  # more than half the points within a factor 3 of e^μ = 1
