"""The shipped models, and the package as a user installs it."""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.evaluation.metrics import noise_floor, sliced_wasserstein
from sde_diffusion.pretrained import available, load_pretrained
from sde_diffusion.training.data import toy_2d


def test_shipped_moons_model_is_within_three_noise_floors():
    assert "moons" in available()
    model, config = load_pretrained("moons")
    assert config["data"]["name"] == "moons" and config["metrics"]["ratio"] < 3
    with torch.no_grad():
        res = sd.sample(model, model.sde, (4000, 2), "heun", steps=50, schedule="karras", seed=1)
    sw = sliced_wasserstein(
        res.x, toy_2d("moons", 4000, seed=99), generator=torch.Generator().manual_seed(0)
    )
    floor = noise_floor(lambda n, s: toy_2d("moons", n, seed=1000 + s), 4000)
    assert sw < 3 * floor, (sw, floor)


def test_unknown_pretrained_name():
    with pytest.raises(
        ValueError,
        match="no shipped model 'cats'; available: digits, digits-cond, digits-cond-guide, "
        "digits-fast, digits32, digits32-latent, moons",
    ):
        load_pretrained("cats")


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_fresh_virtualenv_install_gives_a_working_sdediff(tmp_path, editable):
    """pip install [-e] . into a new virtualenv (its build backend from the registry, the
    dependencies from the site-packages of the interpreter running the tests).

    ``--system-site-packages`` would show the base interpreter's packages, not those of a
    virtualenv the tests run in; a ``.pth`` file names this interpreter's folders instead.
    """
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    inner = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    outer = dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib"))
    (Path(inner) / "outer-site-packages.pth").write_text("\n".join(outer) + "\n")
    args = ["-e", str(root)] if editable else [str(root)]
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", *args], check=True, cwd=tmp_path
    )
    out = subprocess.run(
        [str(venv / "bin" / "sdediff"), "solvers"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert "dpmpp_2m" in out.stdout
    probe = (
        "import sde_diffusion, sde_diffusion.networks as n, sdediff_cli; "
        "from sde_diffusion.pretrained import available; "
        "print(sde_diffusion.__file__, available())"
    )
    out = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert "moons" in out.stdout
    inside_venv = str(venv) in out.stdout
    assert inside_venv != editable  # a real install copies the package into the venv


def test_shipped_conditional_digits_model_draws_the_requested_class():
    """digits-cond without guidance: >= 90% of 20 samples per class are that class."""
    from sde_diffusion.evaluation.digits_eval import class_accuracy, confident_fraction

    model, config = load_pretrained("digits-cond")
    assert config["network"]["num_classes"] == 10 and config["train"]["cond_drop_prob"] == 0.1
    labels = torch.arange(10).repeat_interleave(20)
    with torch.no_grad():
        res = sd.sample(model, model.sde, (200, 1, 8, 8), "heun", steps=25, cond=labels, seed=2)
    samples = res.x.clamp(-1, 1)
    assert class_accuracy(samples, labels) >= 0.9
    assert confident_fraction(samples) >= 0.9
    assert config["metrics"]["class_accuracy"] >= 0.95


def test_shipped_digits_model_meets_its_quality_bar():
    """digits-FID within 3x the train/test FID, >= 90% recognised with max softmax >= 0.9."""
    from sde_diffusion.evaluation.digits_eval import confident_fraction, digits_fid
    from sde_diffusion.training.data import digits

    model, config = load_pretrained("digits")
    with torch.no_grad():
        res = sd.sample(
            model, model.sde, (1000, 1, 8, 8), "heun", steps=25, schedule="karras", seed=1
        )
    samples = res.x.clamp(-1, 1)
    floor = digits_fid(digits("train").x, digits("test").x)
    assert digits_fid(samples, digits("test").x) < 3 * floor
    assert confident_fraction(samples) >= 0.9
    assert config["metrics"]["nfe"] == res.nfe == 50


def test_shipped_fast_student_beats_its_teacher_at_its_nfe():
    """digits-fast: its own solver and times from its metadata, NFE = its steps; its
    digits are legible (>= 85 % judged with confidence) and its digits-FID is under half the
    teacher's at the same NFE (DPM-Solver++(3M) on the log-SNR grid: the teacher's best of
    every solver and grid at 2 NFE in benchmarks/distillation.py), from the same seed."""
    from sde_diffusion.evaluation.digits_eval import confident_fraction, digits_fid
    from sde_diffusion.training.data import digits

    model, config = load_pretrained("digits-fast")
    teacher, _ = load_pretrained("digits")
    sampling = config["sampling"]
    grid = torch.tensor(sampling["times"], dtype=torch.float64)
    shape, test = (1000, 1, 8, 8), digits("test").x
    with torch.no_grad():
        res = sd.sample(model, model.sde, shape, sampling["solver"], grid=grid, seed=1)
        nfe = res.nfe
        base = sd.sample(teacher, teacher.sde, shape, "dpmpp_3m", nfe, schedule="logsnr", seed=1)
    assert nfe == len(grid) - 1 == config["metrics"]["nfe"] == base.nfe <= 4
    student = res.x.clamp(-1, 1)
    assert confident_fraction(student) >= 0.85
    assert digits_fid(student, test) < 0.5 * digits_fid(base.x.clamp(-1, 1), test)
    assert config["objective"]["teacher"] == "digits"


@pytest.mark.parametrize(("name", "event"), [("moons", (2,)), ("digits", (1, 8, 8))])
def test_trained_networks_repeat_bit_for_bit_and_agree_across_batch_sizes(name, event):
    """What the README claims: the same seed and batch size give identical samples;
    another batch size changes only the float32 rounding of the batched network
    (measured after 10 heun steps: 1.2e-6 moons, 3.4e-5 digits)."""
    model, _ = load_pretrained(name)
    with torch.no_grad():
        runs = [
            sd.sample_batched(model, model.sde, (32, *event), "heun", 10, batch_size=b, seed=3).x
            for b in (32, 32, 1)
        ]
    assert torch.equal(runs[0], runs[1])
    torch.testing.assert_close(runs[2], runs[0], rtol=0, atol=1e-4)


def test_samples_do_not_depend_on_import_order(tmp_path):
    """The command line or diffusers imported before or after: the same bytes."""
    probe = (
        "import hashlib, importlib, sys, torch\n"
        "mods = sys.argv[1].split(',')\n"
        "for m in mods: importlib.import_module(m)\n"
        "import sde_diffusion as sd\n"
        "from sde_diffusion.pretrained import load_pretrained\n"
        "model, _ = load_pretrained('moons')\n"
        "with torch.no_grad():\n"
        "    x = sd.sample(model, model.sde, (64, 2), 'dpmpp_2m_sde', 8, seed=5).x\n"
        "print(hashlib.sha256(x.numpy().tobytes()).hexdigest())\n"
    )
    orders = ["sdediff_cli.main", "sde_diffusion"]
    if __import__("importlib.util").util.find_spec("diffusers") is not None:
        orders += ["diffusers,sde_diffusion", "sde_diffusion,diffusers"]
    digests = {
        subprocess.run(
            [sys.executable, "-c", probe, order], capture_output=True, text=True, check=True
        ).stdout.strip()
        for order in orders
    }
    assert len(digests) == 1, digests


def test_shipped_latent_digits32_samples_decode_to_legible_32x32_digits():
    """digits32-latent loads with the autoencoder shipped beside it; sd.sample returns 32x32
    images whose 8x8 versions reach its recorded digits-FID (median of three seeds) and
    the judge reads with confidence."""
    from sde_diffusion.evaluation.digits_eval import confident_fraction, digits_fid
    from sde_diffusion.training.data import digits, digits32_to_8

    model, config = load_pretrained("digits32-latent")
    assert isinstance(model, sd.LatentModel)
    assert (model.latent_shape, model.image_shape) == ((4, 8, 8), (1, 32, 32))
    with torch.no_grad():
        res = sd.sample(model, model.sde, (1000, *model.latent_shape), "heun", 25, seed=1)
    assert res.x.shape == (1000, 1, 32, 32) and res.latent.shape == (1000, 4, 8, 8)
    small = digits32_to_8(res.x.clamp(-1, 1))
    assert digits_fid(small, digits("test").x) < 1.1 * config["metrics"]["fid"]
    assert confident_fraction(small) >= 0.9


def test_shipped_pixel_digits32_samples_are_legible():
    """digits32, the pixel-space model of the same budget: 300 samples at 12 steps are
    32x32 digits the judge reads with confidence (0.90 measured; 0.875 at NFE 50 on 1000)."""
    from sde_diffusion.evaluation.digits_eval import confident_fraction
    from sde_diffusion.training.data import digits32_to_8

    model, config = load_pretrained("digits32")
    assert config["data"]["name"] == "digits32" and config["data"]["event_shape"] == [1, 32, 32]
    with torch.no_grad():
        res = sd.sample(model, model.sde, (300, 1, 32, 32), "dpmpp_2m", 12, seed=1)
    assert confident_fraction(digits32_to_8(res.x.clamp(-1, 1))) >= 0.8
