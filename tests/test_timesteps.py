"""Time grids and the shared grid validator."""

import pytest
import torch

import sde_diffusion as sd


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
