"""``sdediff restore`` and ``sdediff edit``: outputs, units, and bad input as usage errors."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from sdediff_cli.main import main

from sde_diffusion.analytic import high_dim_mixture
from sde_diffusion.measurements import Downsample
from sde_diffusion.training.data import digits


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_restore_writes_restorations_measurement_and_mask_in_data_units(tmp_path):
    out = tmp_path / "r.npz"
    result = run("restore", "--task", "inpaint", "--mask", "half", "--method", "ddrm",
                 "--steps", 20, "-n", 6, "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    with np.load(out) as data:
        samples, truth, y, mask = data["samples"], data["truth"], data["y"], data["mask"]
        settings = json.loads(str(data["settings"]))
    assert samples.shape == truth.shape == (6, 1, 8, 8) and mask.shape == (1, 8, 8)
    expected = digits("test").x[:6] * 8 + 8  # the held-out digits, in data units (0-16)
    np.testing.assert_allclose(truth, expected.numpy(), atol=1e-5)
    assert mask[:, :4].all() and not mask[:, 4:].any()  # the lower half hidden
    observed = samples[:, mask]  # noise-free: the observed pixels are kept
    np.testing.assert_allclose(observed, truth[:, mask], atol=1e-3)
    assert y.shape == (6, 32) and settings["method"] == "ddrm" and settings["nfe"] == 20


def test_restore_takes_what_sample_writes_and_an_image_folder(tmp_path):
    first = tmp_path / "s.npz"
    assert run("sample", "-n", 4, "--steps", 5, "--out", first).exit_code == 0
    out = tmp_path / "r.npz"
    result = run("restore", "--input", first, "--task", "super-resolve", "--method", "diffpir",
                 "--steps", 10, "--sigma-y", 0.05, "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    with np.load(first) as s, np.load(out) as r:
        np.testing.assert_allclose(r["truth"], s["samples"], atol=1e-5)  # same units
        restored = torch.from_numpy(r["samples"]) / 8 - 1
        pooled = torch.nn.functional.avg_pool2d(restored, 2).flatten(1)
        assert (pooled - torch.from_numpy(r["y"])).pow(2).mean().sqrt() < 3 * 0.05
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        pixels = (np.arange(64).reshape(8, 8) * 4 + i).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    png = tmp_path / "r.png"
    result = run("restore", "--input", folder, "--method", "pigdm", "--steps", 10, "--out", png)
    assert result.exit_code == 0, result.output
    with Image.open(png) as picture:
        assert picture.size[0] == picture.size[1]  # 3 columns, 3 rows of 8×8 tiles, scaled


def test_restore_exact_on_a_mixture_draws_its_posterior(tmp_path):
    out = tmp_path / "post.npz"
    result = run("restore", "--model", "gmm64", "--method", "exact", "--task",
                 "super-resolve", "-n", 1, "--per-input", 400, "--steps", 40,
                 "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    with np.load(out) as data:
        x, y = torch.from_numpy(data["samples"]).double(), torch.from_numpy(data["y"][:1]).double()
    assert x.shape == (400, 64)
    op = Downsample((1, 8, 8), 2)
    post = high_dim_mixture().posterior(op, y, 0.0)
    se = (post.covariance()[0].diagonal() / 400).sqrt()
    assert ((x.mean(0) - post.mean()[0]).abs() / se).max() < 6


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "colorize"], "colorize needs colour images"),
        (["--mask", "random:1.5"], "hidden share must lie in [0, 1)"),
        (["--mask", "ellipse"], "a mask is half, box, random:P or the path of a .png"),
        (["--task", "super-resolve", "--factor", "3"], "factor 3 does not divide the 8×8"),
        (["--sigma-y", "-0.1"], "--sigma-y"),
        (["--sigma-y", "nan"], "must be a number, got nan"),
        (["--method", "exact"], "exact needs an analytic problem"),
        (["--method", "ddrm", "--solver", "heun"], "ddrm has an update rule of its own"),
        (["--option", "scale"], "expected KEY=NUMBER"),
        (["--method", "dps", "--option", "eta=1"], "dps takes the options scale; got eta"),
        (["--model", "gmm8", "--task", "super-resolve"], "downsampling needs images"),
    ],
)
def test_restore_refuses_bad_input_in_one_sentence(args, message, tmp_path):
    result = run("restore", *args, "--steps", 2, "-n", 2, "--out", tmp_path / "r.png")
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and not (tmp_path / "r.png").exists()


def test_restore_refuses_a_mask_image_of_the_wrong_size(tmp_path):
    mask = tmp_path / "mask.png"
    Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(mask)
    result = run("restore", "--mask", mask, "--out", tmp_path / "r.png")
    assert result.exit_code == 2 and "is 4×4; the images are 8×8" in result.output
    big = tmp_path / "wide.npz"
    np.savez(big, samples=np.zeros((2, 1, 4, 4), np.float32))
    result = run("restore", "--input", big, "--out", tmp_path / "r.png")
    assert result.exit_code == 2 and "samples of shape (1, 4, 4)" in result.output


def test_a_mask_image_marks_hidden_pixels_white(tmp_path):
    mask = tmp_path / "mask.png"
    pixels = np.zeros((8, 8), np.uint8)
    pixels[:, 4:] = 255  # the right half hidden
    Image.fromarray(pixels, mode="L").save(mask)
    out = tmp_path / "r.npz"
    result = run("restore", "--mask", mask, "--steps", 5, "-n", 2, "--out", out)
    assert result.exit_code == 0, result.output
    with np.load(out) as data:
        assert data["mask"][:, :, :4].all() and not data["mask"][:, :, 4:].any()


def test_edit_at_strength_zero_returns_the_input_and_writes_pictures(tmp_path):
    first = tmp_path / "s.npz"
    assert run("sample", "-n", 3, "--steps", 5, "--out", first).exit_code == 0
    out = tmp_path / "e.npz"
    result = run("edit", "--input", first, "--strength", 0, "--out", out)
    assert result.exit_code == 0, result.output
    with np.load(first) as s, np.load(out) as e:
        np.testing.assert_allclose(e["samples"], s["samples"], atol=1e-5)
    result = run("edit", "--strength", 0.5, "-n", 4, "--out", tmp_path / "e.png")
    assert result.exit_code == 0 and (tmp_path / "e.png").exists()
    assert "NFE" in result.output
    bad = run("edit", "--strength", 1.5, "--out", tmp_path / "x.png")
    assert bad.exit_code == 2 and "1.5 is not in the range 0<=x<=1" in bad.output
