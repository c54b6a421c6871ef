"""The sdediff command line: every subcommand through CliRunner, the entry point for real."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import wait_until
from sdediff_cli.main import main

import sde_diffusion as sd
from sde_diffusion.training.checkpoint import load_checkpoint


def run(*args, cwd=None):
    runner = CliRunner()
    if cwd is None:
        return runner.invoke(main, list(args))
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(main, list(args))
    finally:
        os.chdir(old)


# -- solvers, info ------------------------------------------------------------------


def test_solvers_table_lists_the_registry():
    result = run("solvers")
    assert result.exit_code == 0
    for name in sd.solver_names():
        assert name in result.output


def test_solvers_kind_filter():
    result = run("solvers", "--kind", "ode")
    assert result.exit_code == 0
    assert "dpmpp_2m" in result.output and "euler_maruyama" not in result.output


def test_info_shows_a_shipped_model():
    result = run("info", "moons")
    assert result.exit_code == 0, result.output
    assert "VPSDE" in result.output and "3500 of 3500" in result.output
    from sde_diffusion.pretrained import load_pretrained

    params = sum(p.numel() for p in load_pretrained("moons")[0].parameters())  # not buffers
    assert f"parameters          │ {params:,}" in result.output


def sd_path(name):
    from sde_diffusion.pretrained import pretrained_path

    return pretrained_path(name)


def test_info_json_is_the_stored_config():
    result = run("info", "digits", "--json")
    assert result.exit_code == 0
    assert json.loads(result.output) == load_checkpoint(sd_path("digits"))[1]


# -- sample ---------------------------------------------------------------------------


def test_sample_npz_holds_samples_and_settings(tmp_path):
    out = tmp_path / "new" / "folders" / "ring.npz"  # created on the way
    result = run(
        "sample",
        "--model",
        "gmm8",
        "--solver",
        "ddim",
        "--eta",
        "0.5",
        "-n",
        "300",
        "--steps",
        "20",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert "NFE 20" in result.output and "samples/s" in result.output
    data = np.load(out)
    settings = json.loads(str(data["settings"]))
    assert data["samples"].shape == (300, 2)
    assert settings["solver_options"] == {"eta": 0.5} and settings["nfe"] == 20
    assert np.isfinite(data["samples"]).all()


def test_same_seed_same_samples_whatever_the_batch_size(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    common = [
        "sample",
        "--model",
        "gmm8",
        "--solver",
        "euler_maruyama",
        "-n",
        "100",
        "--steps",
        "10",
        "--seed",
        "3",
    ]
    assert run(*common, "--batch-size", "100", "--out", str(a)).exit_code == 0
    assert run(*common, "--batch-size", "7", "--out", str(b)).exit_code == 0
    np.testing.assert_allclose(np.load(a)["samples"], np.load(b)["samples"], rtol=0, atol=1e-6)
    c = tmp_path / "c.npz"
    assert run(*common[:-1], "4", "--out", str(c)).exit_code == 0
    assert not np.allclose(np.load(a)["samples"], np.load(c)["samples"])


def test_sample_digits_writes_a_picture(tmp_path):
    out = tmp_path / "digits.png"
    result = run("sample", "--solver", "dpmpp_2m", "--steps", "5", "-n", "9", "--out", str(out))
    assert result.exit_code == 0, result.output
    import matplotlib.image

    assert matplotlib.image.imread(out).ndim == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--solver", "hune"], "did you mean 'heun'"),
        (["--solver", "heun", "--eta", "0.3"], "does not take option(s) eta"),
        (["--solver", "ddim", "--eta", "2"], "eta must lie in [0, 1]"),
        (["--schedule", "cosine"], "'cosine' is not one of"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--steps", "0"], "0 is not in the range 1<=x<=100000"),
        (["--steps", str(10**9)], "1000000000 is not in the range 1<=x<=100000"),
        (["--seed", str(2**64)], "is not in the range 0<=x<=9223372036854775807"),
        (["--num-samples", "0"], "0 is not in the range x>=1"),
        (["--model", "missing/x.safetensors"], "no checkpoint at missing/x.safetensors"),
        (["--out", "x.txt"], "must end in .png or .npz"),
        (["--model", "digits", "--sde", "ve"], "--sde applies to analytic problems only"),
        (["--model", "gmm8", "-n", "2000000"], "a .png shows at most 1,000,000 points"),
        (["--model", "digits", "-n", "5000"], "a .png shows at most 4,096 images"),
        (["--model", "gmm64", "-n", str(10**15), "--out", "x.npz"], "GB are free there"),
        (["--model", "digits-cond", "--class", "3", "-n", str(10**15)], "write them to an .npz"),
    ],
)
def test_sample_usage_errors_exit_2(tmp_path, args, message):
    result = run("sample", *args, cwd=tmp_path)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_device_that_does_not_exist_is_a_usage_error(tmp_path):
    result = run("sample", "--device", "cuda", cwd=tmp_path)
    assert result.exit_code == 2 and "CUDA is not available" in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_is_a_usage_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    result = run("sample", "--out", str(locked / "s.png"))
    assert result.exit_code == 2 and "cannot write" in result.output


def test_out_in_a_non_directory_is_a_usage_error(tmp_path):
    (tmp_path / "file").write_text("x")
    result = run("sample", "--out", str(tmp_path / "file" / "s.png"))
    assert result.exit_code == 2 and "cannot write" in result.output


def test_corrupt_checkpoint_is_a_runtime_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    result = run("sample", "--model", str(bad), "--out", str(tmp_path / "s.png"))
    assert result.exit_code == 1
    assert "not a readable .safetensors checkpoint" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("out", ["s.png", "s.npz"])
def test_divergence_is_a_runtime_error_and_debug_shows_the_traceback(tmp_path, out):
    # srk in float16 with 3 steps overflows on the way down; the .npz streams batches
    args = ["sample", "--model", "gmm8", "--solver", "srk", "--dtype", "float16", "--steps"]
    args += ["3", "-n", "600", "--batch-size", "256", "--out", str(tmp_path / out)]
    result = run(*args)
    assert result.exit_code == 1 and "non-finite values" in result.output
    assert list(tmp_path.iterdir()) == []  # no picture, no partial .npz, no temporary file
    debug = run("--debug", *args)
    assert isinstance(debug.exception, sd.NonFiniteError)


# -- train ----------------------------------------------------------------------------


def test_train_config_file_resume_and_samples(tmp_path):
    out = tmp_path / "m.safetensors"
    config = tmp_path / "train.toml"
    config.write_text('[train]\ndata = "rings"\nsteps = 40\nbatch-size = 64\nwidth = 32\n')
    result = run(
        "train",
        "--config",
        str(config),
        "--steps",
        "30",
        "--checkpoint-every",
        "10",
        "--sample-every",
        "15",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    _, cfg = load_checkpoint(out)
    assert cfg["step"] == 30  # the flag beat the file
    assert cfg["train"]["batch_size"] == 64 and cfg["network"]["width"] == 32
    assert cfg["data"]["name"] == "rings"
    assert sorted(p.name for p in tmp_path.glob("m_samples_*.png")) == [
        "m_samples_000015.png",
        "m_samples_000030.png",
    ]
    result = run("train", "--config", str(config), "--resume", str(out))
    assert result.exit_code == 0, result.output
    assert "resumed from" in result.output and load_checkpoint(out)[1]["step"] == 40
    sampled = run(
        "sample", "--model", str(out), "-n", "16", "--steps", "5", "--out", str(tmp_path / "s.npz")
    )
    assert sampled.exit_code == 0, sampled.output


def test_training_that_goes_non_finite_stops_and_keeps_a_finite_checkpoint(tmp_path):
    out = tmp_path / "m.safetensors"
    args = ["--data", "moons", "--lr", "1e30", "--steps", "50", "--checkpoint-every", "1"]
    result = run("train", *args, "--out", str(out))
    assert result.exit_code == 1 and "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert re.search(r"the loss became (inf|nan) at step \d+", message)
    assert "lower --lr" in message and f"--resume {out}" in message
    tensors, config = load_checkpoint(out)
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())
    assert f"holds step {config['step']}" in message
    infinite = run("train", "--data", "moons", "--lr", "inf", "--out", str(tmp_path / "x.st"))
    assert infinite.exit_code == 2 and "must be a finite number" in infinite.output


def test_resume_keeps_the_run_settings_unless_a_flag_changes_them(tmp_path):
    """--resume FILE alone: same SDE, batch and target step; flags still win."""
    out = tmp_path / "m.safetensors"
    args = ["--data", "rings", "--sde", "ve", "--batch-size", "32", "--lr", "1e-3"]
    first = run("train", *args, "--steps", "6", "--checkpoint-every", "2", "--out", str(out))
    assert first.exit_code == 0, first.output
    again = run("train", "--resume", str(out), "--steps", "9", "--lr", "5e-4")
    assert again.exit_code == 0, again.output
    _, cfg = load_checkpoint(out)
    assert cfg["step"] == 9 and cfg["sde"]["type"] == "ve" and cfg["data"]["name"] == "rings"
    assert cfg["train"]["batch_size"] == 32 and cfg["train"]["checkpoint_every"] == 2
    assert cfg["train"]["lr"] == 5e-4


def test_resume_from_a_file_that_is_not_a_training_checkpoint_is_a_usage_error(tmp_path):
    from sde_diffusion.pretrained import pretrained_path

    shipped = tmp_path / "m.safetensors"
    shutil.copy(pretrained_path("moons"), shipped)  # weights and config, no training state
    result = run("train", "--resume", str(shipped), "--steps", "2")
    assert result.exit_code == 2 and "not a training checkpoint" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "nothing"], "no data set 'nothing'"),
        (["--data", "a\0b"], "no data set"),
        (["--data", ""], "no data set ''"),
        (["--network", "unet"], "the unet network needs images"),
        (["--lr", "0"], "--lr"),
        (["--sde", "banana"], "'banana' is not one of"),
    ],
)
def test_train_bad_input_is_a_usage_error(tmp_path, args, message):
    result = run("train", "--steps", "1", "--out", str(tmp_path / "m.safetensors"), *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "m.safetensors").exists()


def test_train_config_with_unknown_key_is_a_usage_error(tmp_path):
    config = tmp_path / "t.toml"
    config.write_text("stepz = 3\n")
    result = run("train", "--config", str(config))
    assert result.exit_code == 2 and "unknown key(s) stepz" in result.output


# -- bench, likelihood ------------------------------------------------------------------


def test_bench_writes_json_and_plot(tmp_path):
    out = tmp_path / "bench.json"
    result = run(
        "bench",
        "--model",
        "gmm8",
        "--solvers",
        "euler,heun",
        "--nfe",
        "6,12",
        "-n",
        "128",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    rows = {(r["solver"], r["nfe_budget"]): r for r in report["rows"]}
    assert set(rows) == {("euler", 6), ("euler", 12), ("heun", 6), ("heun", 12)}
    assert rows[("euler", 12)]["error"] < rows[("euler", 6)]["error"]
    assert (tmp_path / "bench.png").exists()


def test_bench_rejects_unknown_solvers_and_bad_budgets(tmp_path):
    result = run("bench", "--solvers", "euler,warp", "--out", str(tmp_path / "b.json"))
    assert result.exit_code == 2 and "unknown solver 'warp'" in result.output
    result = run("bench", "--nfe", "10,x", "--out", str(tmp_path / "b.json"))
    assert result.exit_code == 2 and "comma-separated list of integers" in result.output
    out = tmp_path / "adaptive.json"  # nothing to compare: no empty table, no empty plot
    args = ["--model", "gmm8", "--solvers", "euler,rk45", "--nfe", "10", "-n", "64"]
    result = run("bench", *args, "--out", str(out))
    assert result.exit_code == 2 and "rk45 cannot run at NFE 10" in result.output
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_likelihood_matches_the_exact_value_on_an_analytic_problem():
    result = run(
        "likelihood",
        "--model",
        "gmm8",
        "--sde",
        "vp",
        "-n",
        "64",
        "--estimator",
        "both",
        "--elbo-steps",
        "200",
    )
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines() if "±" in line}
    ode = float(lines["PF-ODE"].split("│")[2].split("±")[0])
    exact = float(lines["exact"].split("│")[2].split("±")[0])
    elbo = float(lines["ELBO"].split("│")[2].split("±")[0])
    assert abs(ode - exact) < 5e-3 and elbo > exact


# -- real processes ---------------------------------------------------------------------


def test_quick_start_sample_from_the_installed_entry_point(tmp_path):
    exe = shutil.which("sdediff")
    assert exe is not None, "the sdediff console script is not installed"
    out = subprocess.run(
        [exe, "sample", "--solver", "heun"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "NFE 50" in out.stdout
    assert (tmp_path / "samples.png").stat().st_size > 1000


def test_python_dash_m_runs():
    out = subprocess.run(
        [sys.executable, "-m", "sde_diffusion", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert sd.__version__ in out.stdout


def _interrupt_after(args, marker, cwd):
    """SIGINT as soon as ``marker`` is printed: the state the test needs, not a delay."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sde_diffusion", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if marker in line:
            break
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()  # never leave a run behind when the test fails
    return proc.returncode, err


def test_ctrl_c_during_sample_exits_cleanly(tmp_path):
    code, err = _interrupt_after(
        ["sample", "--model", "gmm64", "-n", "20000", "--steps", "2000", "--out", "s.png"],
        "sampling",
        tmp_path,
    )
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_train_saves_a_checkpoint(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sde_diffusion",
            "train",
            "--data",
            "moons",
            "--steps",
            "100000",
            "--checkpoint-every",
            "5",
            "--out",
            "m.safetensors",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(proc, (tmp_path / "m.safetensors").exists)  # the state: 5 steps are done
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    code = proc.returncode
    assert code == 130 and "checkpoint saved" in err and "Traceback" not in err
    _, config = load_checkpoint(tmp_path / "m.safetensors")
    assert 0 < config["step"] < 100000
    left = {p.name for p in tmp_path.iterdir()}  # the checkpoint and its log, no temporaries
    assert left - {"m.curves.png"} == {"m.safetensors", "m.metrics.jsonl"}


# -- conditional training and guided sampling ---------------------------------------


@pytest.fixture(scope="module")
def conditional_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("cond") / "c.safetensors"
    result = run(
        "train",
        "--data",
        "8gaussians",
        "--conditional",
        "--cond-drop",
        "0.2",
        "--steps",
        "30",
        "--batch-size",
        "64",
        "--keep-every",
        "10",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    return out


def test_training_keeps_early_models_that_guide_sampling(tmp_path, conditional_checkpoint):
    kept = sorted(p.name for p in conditional_checkpoint.parent.glob("c.step*.safetensors"))
    assert kept == ["c.step000010.safetensors", "c.step000020.safetensors",
                    "c.step000030.safetensors"]  # fmt: skip
    early = conditional_checkpoint.parent / kept[0]
    out = tmp_path / "auto.npz"
    args = ["--model", str(conditional_checkpoint), "--class", "2", "--steps", "6", "-n", "32"]
    result = run("sample", *args, "--guidance", "2", "--guide", str(early), "--out", str(out))
    assert result.exit_code == 0, result.output
    with np.load(out) as f:
        settings = json.loads(str(f["settings"]))
    assert settings["guide"] == str(early)
    assert settings["network_passes_per_batch"] == 2 * settings["nfe"]  # two networks a call
    both = run("sample", *args, "--guidance", "3", "--apg", "0,1,-0.5", "--guidance-rescale",
               "0.5", "--cfg-zero-star", "--out", str(tmp_path / "v.npz"))  # fmt: skip
    assert both.exit_code == 0, both.output
    with np.load(tmp_path / "v.npz") as f:
        settings = json.loads(str(f["settings"]))
    assert settings["apg"] == {"eta": 0.0, "norm_threshold": 1.0, "momentum": -0.5}
    assert settings["guidance_rescale"] == 0.5 and settings["cfg_zero_star"] is True
    for bad, message in [
        (["--apg", "2"], "eta in [0, 1]"),
        (["--guide", "moons"], "not a model of the same SDE"),
        (["--guidance-rescale", "2"], "--guidance-rescale"),
    ]:
        result = run("sample", *args, *bad, "--out", str(tmp_path / "x.npz"))
        assert result.exit_code == 2 and message in result.output, result.output
    plain = run("sample", "--model", "moons", "--cfg-zero-star", "-n", "4")
    assert plain.exit_code == 2 and "need --class" in plain.output


def test_conditional_training_records_the_classes(conditional_checkpoint):
    config = load_checkpoint(conditional_checkpoint)[1]
    assert config["network"]["num_classes"] == 8
    assert config["data"]["class_names"] == [str(k) for k in range(8)]
    assert config["train"]["cond_drop_prob"] == 0.2


def test_guided_sampling_writes_labels_and_counts_passes(tmp_path, conditional_checkpoint):
    out = tmp_path / "guided.npz"
    result = run(
        "sample",
        "--model",
        str(conditional_checkpoint),
        "--class",
        "all",
        "--guidance",
        "2",
        "--steps",
        "5",
        "-n",
        "20",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert "NFE 10 (20 network passes)" in result.output
    with np.load(out) as f:
        settings = json.loads(str(f["settings"]))
        assert f["samples"].shape == (24, 2)  # 3 per class, one row each
        assert f["labels"].tolist() == [k for k in range(8) for _ in range(3)]
    assert settings["class"] == "all" and "labels" not in settings  # no per-sample JSON
    assert settings["guidance"] == 2.0


def test_guided_sampling_of_an_exact_mixture_lands_in_its_class(tmp_path):
    out = tmp_path / "ring.npz"
    result = run(
        "sample",
        "--model",
        "gmm8",
        "--class",
        "2",
        "--guidance",
        "1.5",
        "--steps",
        "20",
        "-n",
        "64",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    with np.load(out) as f:
        x = torch.from_numpy(f["samples"])
    nearest = torch.cdist(x.double(), sd.eight_gaussians().means).argmin(1)
    assert bool((nearest == 2).all())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "moons", "--class", "1"], "needs a class-conditional model"),
        (["--model", "gmm8", "--class", "eight"], r"valid classes: 0, 1, .*7 \(or 'all'\)"),
        (["--model", "gmm8", "--guidance", "2"], "need --class"),
        (["--model", "gmm8", "--class", "1", "--guidance", "nan"], "--guidance"),
        (["--model", "gmm8", "--class", "1", "--guidance", "inf"], "--guidance"),
        (["--model", "gmm8", "--class", "1", "--guidance-interval", "2"], "expected LO,HI"),
        (["--model", "gmm8", "--class", "1", "--guidance-interval", "2,1"], "0 <= LO < HI"),
    ],
)
def test_class_and_guidance_usage_errors_exit_2(tmp_path, args, message):
    result = run("sample", *args, "--out", str(tmp_path / "x.png"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert re.search(message, result.output)


def test_nan_condition_dropout_is_a_usage_error(tmp_path):
    out = tmp_path / "m.safetensors"
    result = run(
        "train", "--data", "8gaussians", "--conditional", "--cond-drop", "nan", "--out", str(out)
    )
    assert result.exit_code == 2 and "must be a number, got nan" in result.output


def test_conditional_training_needs_labels(tmp_path):
    out = tmp_path / "m.safetensors"
    result = run("train", "--data", "moons", "--conditional", "--out", str(out))
    assert result.exit_code == 2 and "needs labelled data" in result.output


# -- hostile input: one regression test per kind of bad ending -------------------------


@pytest.mark.parametrize(
    "args",
    [["--method", "dp", "--solver", "euler"], ["--method", "dp+search"], ["--sde", "ve"]],
)
def test_tune_with_dp_or_on_ve_writes_a_grid_to_the_data(tmp_path, args):
    """The check after the fit compares with the best standard grid (never 'dp'), and a VE
    grid ends at t_min (sigma(0) > 0 there)."""
    out = tmp_path / "g.json"
    res = run("tune", "--model", "gmm8", "--nfe", "5", "--samples", "16", *args, "--out", str(out))
    assert res.exit_code == 0, res.output
    grid = sd.load_grid(out)
    sde = sd.VESDE() if "ve" in args else sd.EDMSDE()
    assert grid.times[-1] in (0.0, sde.t_min) and grid.record["standard"] in sd.SCHEDULES
    assert grid.record["standard"] in grid.record["check"]
    again = run(
        "sample",
        "--model",
        "gmm8",
        *args[-2:] * ("ve" in args),
        "--grid",
        str(out),
        "-n",
        "8",
        "--out",
        str(tmp_path / "s.npz"),
    )
    assert again.exit_code == 0, again.output


def test_seeds_use_all_their_bits(tmp_path):
    """2**32 is not seed 0 (torch's generators keep 32 bits; seeds are hashed down whole)."""
    model, sde = sd.eight_gaussians().score_fn(sd.EDMSDE()), sd.EDMSDE()
    samples = {
        seed: sd.sample(model, sde, (4, 2), "euler_maruyama", 3, seed=seed).x
        for seed in (0, 2**32, 2**62 + 7)
    }
    assert not torch.equal(samples[0], samples[2**32])
    assert not torch.equal(samples[2**32], samples[2**62 + 7])
    batched = {
        seed: sd.sample(model, sde, (4, 2), "euler_maruyama", 3, seed=seed, batch_size=2).x
        for seed in (0, 2**32)
    }
    assert not torch.equal(batched[0], batched[2**32])
    outs = []
    for seed in ("0", str(2**32)):
        out = tmp_path / f"s{seed}.npz"
        assert (
            run("sample", "--model", "gmm8", "-n", "4", "--seed", seed, "--out", str(out)).exit_code
            == 0
        )
        outs.append(np.load(out)["samples"])
    assert not np.array_equal(*outs)


def test_a_tuned_grid_file_is_read_safely_and_checked_before_sampling(tmp_path):
    """FIFOs, devices and deep JSON are usage errors at once; a file's solver options are
    kept unless a flag is given."""
    os.mkfifo(tmp_path / "fifo")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    for path, says in [
        (tmp_path / "fifo", "not a regular file"),
        ("/dev/zero", "not a regular file"),
        (deep, "nests too deeply"),
    ]:
        res = run(
            "sample", "--model", "gmm8", "--grid", str(path), "--out", str(tmp_path / "s.png")
        )
        assert res.exit_code == 2 and says in res.output, res.output
    sde = sd.EDMSDE()
    grid = sd.TunedGrid(
        sd.timesteps(sde, 4, to_zero=True).tolist(), "ddim", {"eta": 0.5}, 4, repr(sde)
    )
    grid.save(tmp_path / "g.json")
    for flags, eta in [([], 0.5), (["--eta", "0.25"], 0.25)]:
        out = tmp_path / "s.npz"
        res = run(
            "sample",
            "--model",
            "gmm8",
            "--grid",
            str(tmp_path / "g.json"),
            "-n",
            "4",
            *flags,
            "--out",
            str(out),
        )
        assert res.exit_code == 0, res.output
        assert json.loads(str(np.load(out)["settings"]))["solver_options"] == {"eta": eta}


def test_one_class_takes_no_memory_per_sample():
    from sdediff_cli.sample import class_labels

    from sde_diffusion.evaluation.problems import load_problem

    labels, _ = class_labels(load_problem("gmm8"), "gmm8", "3", 10**8)
    assert labels.shape == (10**8,) and labels.untyped_storage().nbytes() <= 8
    every, per = class_labels(load_problem("gmm8"), "gmm8", "all", 10**6)
    assert every.dtype == torch.uint8 and per == 125_000


def test_class_names_that_do_not_match_the_network_are_a_damaged_checkpoint(
    tmp_path, conditional_checkpoint
):
    from sde_diffusion.training.checkpoint import save_checkpoint

    tensors, config = load_checkpoint(conditional_checkpoint)
    config["data"]["class_names"] = [str(k) for k in range(9)]  # the network has 8 classes
    save_checkpoint(tmp_path / "c.safetensors", tensors, config)
    res = run(
        "sample",
        "--model",
        str(tmp_path / "c.safetensors"),
        "--class",
        "8",
        "--out",
        str(tmp_path / "s.png"),
    )
    assert res.exit_code == 1 and "names 9 classes but its network has 8" in res.output


def test_resume_refuses_flags_that_change_the_model_and_runs_with_no_steps_left(tmp_path):
    out = tmp_path / "m.safetensors"
    assert (
        run("train", "--data", "moons", "--steps", "3", "--width", "8", "--out", str(out)).exit_code
        == 0
    )
    for flag, value in [
        ("--parametrization", "x0"),
        ("--width", "16"),
        ("--data", "8gaussians"),
        ("--network", "unet"),
    ]:
        res = run("train", "--resume", str(out), "--steps", "5", flag, value)
        assert res.exit_code == 2 and f"Invalid value for {flag}" in res.output, res.output
    res = run("train", "--resume", str(out), "--steps", "3")
    assert res.exit_code == 2 and "at step 3 already" in res.output
    assert run("train", "--resume", str(out), "--steps", "4", "--lr", "1e-4").exit_code == 0


# -- compiled and autocast networks ------------------------------------------------------


def test_compiled_sampling_reports_compile_time_apart_and_matches_eager(tmp_path):
    outs = {}
    for flags in ((), ("--compile",)):
        out = tmp_path / f"s{len(flags)}.npz"
        result = run("sample", "--model", "moons", "-n", "64", "--steps", "8", "--out", str(out),
                     *flags)  # fmt: skip
        assert result.exit_code == 0, result.output
        outs[flags] = np.load(out)["samples"]
        assert ("compiling" in result.output) == bool(flags)
    np.testing.assert_allclose(outs[("--compile",)], outs[()], rtol=1e-5, atol=1e-5)


def test_precision_and_compile_reach_training_and_resume(tmp_path):
    out = tmp_path / "m.safetensors"
    common = ("--data", "moons", "--batch-size", "32", "--width", "32", "--out", str(out))
    result = run("train", *common, "--steps", "4", "--compile", "--precision", "fp16")
    assert result.exit_code == 0, result.output
    train = load_checkpoint(out)[1]["train"]
    assert train["precision"] == "fp16" and train["compile"] is True
    result = run("train", "--resume", str(out), "--steps", "6")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(out)[1]["train"]["precision"] == "fp16"  # the run's own precision


@pytest.mark.parametrize("command", ["sample", "train", "likelihood", "tune"])
def test_unknown_precision_is_a_usage_error(command):
    result = run(command, "--precision", "fp64")
    assert result.exit_code == 2
    assert "'fp64' is not one of 'fp32', 'bf16', 'fp16'" in result.output
