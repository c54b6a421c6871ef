"""The driver loop: grids, checks, NFE, callbacks, denoising, noise, errors."""

import numpy as np
import pytest
import torch
from helpers import gaussian_score, small_mixture

import sde_diffusion as sd


def test_sample_result_fields():
    sde = sd.EDMSDE()
    res = sd.sample(gaussian_score(sde), sde, (10, 2), "heun", steps=4, return_trajectory=True)
    assert res.x.shape == (10, 2) and res.nfe == 8 and res.solver == "heun"
    assert res.ts.shape == (5,) and res.wall_time > 0
    assert res.trajectory.shape == (5, 10, 2)
    torch.testing.assert_close(res.trajectory[-1], res.x)


def test_solver_instance_and_name_agree():
    sde = sd.VPSDE()
    score = gaussian_score(sde)
    a = sd.sample(score, sde, (8, 2), sd.get_solver("lms", order=3), steps=5)
    b = sd.sample(score, sde, (8, 2), "lms", steps=5, order=3)
    torch.testing.assert_close(a.x, b.x)
    with pytest.raises(ValueError, match="pass them with a solver name"):
        sd.sample(score, sde, (8, 2), sd.get_solver("lms"), steps=5, order=3)


def test_callback_sees_every_step():
    sde = sd.VPSDE()
    seen = []
    sd.sample(gaussian_score(sde), sde, (4, 2), "euler", steps=6, callback=seen.append)
    assert [s.index for s in seen] == list(range(6))
    assert [s.nfe for s in seen] == list(range(1, 7))
    assert all(s.t1 < s.t0 for s in seen) and seen[-1].x.shape == (4, 2)


def test_denoise_appends_one_tweedie_step():
    sde = sd.VPSDE()
    score = small_mixture().score_fn(sde)
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = sd.timesteps(sde, 5)
    plain = sd.solve(score, sde, x_T, ts, "euler").x
    res = sd.sample(score, sde, (16, 2), "euler", steps=5, denoise=True, dtype=torch.float64)
    assert res.nfe == 6
    t = ts[-1].item()
    expected = small_mixture().denoise(sde, plain, t)
    torch.testing.assert_close(sd.solve(score, sde, x_T, ts, "euler", denoise=True).x, expected)
    with pytest.raises(ValueError, match="already ends at t=0"):
        sd.solve(score, sde, x_T, torch.tensor([1.0, 0.5, 0.0]), "euler", denoise=True)


def test_bad_grid_is_explained():
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="strictly decreasing"):
        sd.solve(gaussian_score(sde), sde, torch.zeros(2, 2), torch.tensor([0.1, 0.5]), "euler")


def test_bad_start_point():
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="floating-point tensor"):
        sd.solve(
            gaussian_score(sde),
            sde,
            torch.zeros(2, 2, dtype=torch.long),
            sd.timesteps(sde, 3),
            "euler",
        )


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda x, t: x[:, :1], r"the model returned shape \(4, 1\) for x of shape \(4, 2\)"),
        (lambda x, t: x.long(), "the model returned torch.int64 on cpu for x of torch.float32"),
        (lambda x, t: x.numpy(), "the model must return a tensor, got ndarray"),
    ],
)
def test_model_output_mismatch_is_one_sentence(bad, message):
    sde = sd.VPSDE()
    with pytest.raises(sd.ModelOutputError, match=message):
        sd.sample(bad, sde, (4, 2), "heun", steps=3)


def test_model_precision_is_cast_at_the_boundary():
    """A float64 model under a float32 state: the state stays float32, values agree."""
    sde = sd.VPSDE()
    score = gaussian_score(sde)
    wide = sd.sample(lambda x, t: score(x.double(), t.double()), sde, (8, 2), "heun", steps=4)
    plain = sd.sample(score, sde, (8, 2), "heun", steps=4)
    assert wide.x.dtype == torch.float32
    torch.testing.assert_close(wide.x, plain.x)


@pytest.mark.parametrize(
    "name, step", [("euler", 3), ("heun", 2), ("euler_maruyama", 3), ("dpmpp_2m", 3)]
)
def test_blow_up_names_solver_and_step(name, step):
    """The score is NaN from ts[3] on; Heun's corrector meets it one step earlier."""
    sde = sd.VPSDE()
    exact = gaussian_score(sde)
    ts = sd.timesteps(sde, 10)
    bad_from = ts[3].item()

    def score_fn(x, t):
        return torch.where(t[:, None] <= bad_from, torch.nan, exact(x, t))

    with pytest.raises(
        sd.NonFiniteError,
        match=rf"solver '{name}' produced non-finite values at "
        rf"step {step} \(t=",
    ):
        sd.solve(score_fn, sde, sde.prior_sample((4, 2)), ts, name)


def test_unknown_solver_through_sample():
    sde = sd.VPSDE()
    with pytest.raises(sd.UnknownSolverError, match="did you mean 'euler'"):
        sd.sample(gaussian_score(sde), sde, (4, 2), "eulr", steps=3)


def test_brownian_noise_is_one_path_at_every_resolution():
    x = torch.zeros(5, 3, dtype=torch.float64)
    noise = sd.BrownianNoise(x, 1.0, 0.1, seed=0)
    whole = noise.increment(1.0, 0.1)
    parts = noise.increment(1.0, 0.6) + noise.increment(0.6, 0.25) + noise.increment(0.25, 0.1)
    torch.testing.assert_close(whole, parts)
    z = noise(x, 1.0, 0.6)
    torch.testing.assert_close(z, noise.increment(1.0, 0.6) / 0.4**0.5)
    with pytest.raises(ValueError, match="t_start > t_end"):
        sd.BrownianNoise(x, 0.1, 1.0)


def test_sample_does_not_depend_on_global_rng():
    sde = sd.EDMSDE()
    score = small_mixture().score_fn(sde)
    torch.manual_seed(1)
    a = sd.sample(score, sde, (8, 2), "euler_maruyama", steps=5, seed=3)
    torch.manual_seed(2)
    b = sd.sample(score, sde, (8, 2), "euler_maruyama", steps=5, seed=3)
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)


def test_sample_batched_streams_each_batch_to_a_sink_in_order_and_keeps_none():
    sde, gmm = sd.EDMSDE(), sd.eight_gaussians()
    args = (gmm.score_fn(sde), sde, (11, 2), "heun", 4)
    whole = sd.sample_batched(*args, batch_size=4, seed=5)
    seen = []
    res = sd.sample_batched(
        *args, batch_size=4, seed=5, sink=lambda start, stop, rows: seen.append((start, stop, rows))
    )
    assert res.x is None and res.nfe == whole.nfe
    assert [(start, stop) for start, stop, _ in seen] == [(0, 4), (4, 8), (8, 11)]
    assert torch.equal(torch.cat([rows for *_, rows in seen]), whole.x)


def test_npz_writer_streams_rows_that_numpy_loads(tmp_path):
    from sde_diffusion.npz import NpzWriter

    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    with NpzWriter(tmp_path / "a.npz", "samples", x.shape) as npz:
        for block in np.array_split(x, 4):
            npz.write(block)
        npz.add("settings", '{"k": 1}')
    loaded = np.load(tmp_path / "a.npz")
    assert np.array_equal(loaded["samples"], x) and str(loaded["settings"]) == '{"k": 1}'
    with (
        pytest.raises(ValueError, match="rows of shape"),
        NpzWriter(tmp_path / "b.npz", "samples", (2, 3)) as npz,
    ):
        npz.write(np.zeros((3, 3)))
    with (
        pytest.raises(ValueError, match="1 of 2 rows were written"),
        NpzWriter(tmp_path / "c.npz", "samples", (2, 3)) as npz,
    ):
        npz.write(np.zeros((1, 3)))
