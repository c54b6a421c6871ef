"""Training recipes: the metrics log, post-hoc EMA, Min-SNR, immiscible noise, EDM2's
learning rate, and LoRA fine-tuning (library and command line)."""

import itertools
import re
import shutil

import numpy as np
import pytest
import torch
from helpers import run_in
from PIL import Image

import sde_diffusion as sd
from sde_diffusion.errors import ArgumentError
from sde_diffusion.evaluation.quality import quality_metric
from sde_diffusion.parametrization import ScoreModel
from sde_diffusion.pretrained import load_pretrained
from sde_diffusion.training import TrainConfig, Trainer, build_model, load_data
from sde_diffusion.training.checkpoint import load_checkpoint
from sde_diffusion.training.data import digits
from sde_diffusion.training.log import read_metrics
from sde_diffusion.training.lora import add_lora, apply_lora, lora_tensors, merge_lora, weights_hash
from sde_diffusion.training.losses import DenoisingScoreMatching, immiscible_noise
from sde_diffusion.training.posthoc_ema import (
    PowerEMA,
    gamma_from_sigma_rel,
    profile,
    reconstruct,
    save_snapshot,
    sigma_rel_from_gamma,
    snapshots,
    solve_coefficients,
)


def run(*args, cwd):
    return run_in(cwd, *args)


def moons_trainer(**options) -> Trainer:
    data = load_data("moons", 2000)
    torch.manual_seed(0)
    model = build_model(data, width=32)
    config = TrainConfig(**{"steps": 20, "batch_size": 32, "warmup": 5, **options})
    metric = quality_metric(data, samples=300) if config.eval_every else None
    return Trainer(model, data, config, metric)


# -- Min-SNR, immiscible, EDM2 learning rate --------------------------------------------


class Linear(torch.nn.Module):
    """A network that predicts ``kind`` as an affine map of ``(x, t)``."""

    def __init__(self, kind):
        super().__init__()
        self.prediction, self.lin = kind, torch.nn.Linear(3, 2)

    def forward(self, x, t, cond=None):
        return self.lin(torch.cat([x, t[:, None].to(x)], 1))


@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
def test_min_snr_is_the_papers_weighting_of_each_parametrisation(kind):
    """Hang et al.: min(SNR, g)/SNR on eps, min(SNR, g) on x0, min(SNR, g)/(SNR+1) on v."""
    sde, gamma = sd.VPSDE(), 5.0
    loss = DenoisingScoreMatching(sde, "min-snr", min_snr_gamma=gamma)
    torch.manual_seed(1)
    model, x0, eps = Linear(kind), torch.randn(64, 2), torch.randn(64, 2)
    t = torch.linspace(1e-3, 1, 64, dtype=torch.float64)  # SNR from ~4000 to ~4e-5
    alpha, sigma = sde.alpha(t).float()[:, None], sde.sigma(t).float()[:, None]
    x_t = alpha * x0 + sigma * eps
    snr = (alpha / sigma)[:, 0] ** 2
    value = model(x_t, t.float())
    targets = {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0}
    weights = {"eps": snr.clamp(max=gamma) / snr, "x0": snr.clamp(max=gamma)}
    weights["v"] = snr.clamp(max=gamma) / (snr + 1)
    paper = weights[kind] * (value - targets[kind]).pow(2).sum(1)
    ours = loss.loss_at(model, x0, t, eps)
    torch.testing.assert_close(ours, paper, rtol=2e-4, atol=1e-6)
    assert (snr > gamma).any() and (snr < gamma).any()  # both sides of the clamp


def test_immiscible_noise_is_the_optimal_assignment():
    torch.manual_seed(0)
    x0, eps = torch.randn(6, 1, 2, 2), torch.randn(6, 1, 2, 2)
    paired = immiscible_noise(x0, eps)
    rows = {tuple(r.flatten().tolist()) for r in eps}
    assert {tuple(r.flatten().tolist()) for r in paired} == rows  # a permutation of the noise

    def cost(noise):
        return float((x0 - noise).pow(2).sum())

    best = min(cost(eps[list(p)]) for p in itertools.permutations(range(6)))
    assert cost(paired) == pytest.approx(best, rel=1e-6)
    assert cost(paired) < cost(eps)


def test_edm2_learning_rate_warms_up_then_decays_as_inverse_square_root():
    trainer = moons_trainer(lr=1e-2, warmup=10, lr_schedule="edm2", lr_decay_steps=100)
    assert trainer.learning_rate(4) == pytest.approx(5e-3)
    assert trainer.learning_rate(99) == pytest.approx(1e-2)
    assert trainer.learning_rate(400) == pytest.approx(1e-2 / 2)
    assert trainer.learning_rate(10_000) == pytest.approx(1e-3)
    with pytest.raises(ArgumentError, match="constant, edm2"):
        TrainConfig(lr_schedule="cosine")


def test_immiscible_and_min_snr_runs_train(tmp_path):
    trainer = moons_trainer(steps=30, immiscible=True, loss_weighting="min-snr")
    history = trainer.train(checkpoint=tmp_path / "m.safetensors", progress=False)
    first, last = np.mean([h["loss"] for h in history[:5]]), history[-1]["loss"]
    assert np.isfinite(last) and last < first


# -- the metrics log ----------------------------------------------------------------------


def test_the_log_has_its_keys_and_monotone_steps_and_a_curves_picture(tmp_path):
    trainer = moons_trainer(steps=40, log_every=5, eval_every=20, checkpoint_every=20, warmup=10)
    trainer.train(checkpoint=tmp_path / "m.safetensors", progress=False)
    rows = read_metrics(tmp_path / "m.metrics.jsonl")
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == list(range(5, 41, 5))
    for row in train:
        assert set(row) == {"step", "time", "loss", "grad_norm", "lr", "samples_per_s"}
        assert row["loss"] > 0 and row["grad_norm"] > 0 and row["samples_per_s"] > 0
    assert train[0]["lr"] < train[-1]["lr"] == pytest.approx(trainer.config.lr)  # warm-up
    evals = [r for r in rows if "sliced_w2" in r]
    assert [r["step"] for r in evals] == [20, 40] and all(r["sliced_w2"] > 0 for r in evals)
    times = [r["time"] for r in rows]
    assert times == sorted(times)
    with Image.open(tmp_path / "m.curves.png") as picture:
        assert picture.size[0] > 800 and picture.size[1] > 500


def test_a_resumed_run_appends_to_its_log_from_the_step_it_resumes(tmp_path):
    """Rows past the checkpoint (a run that died after it) are replaced, not repeated."""
    trainer = moons_trainer(steps=100, log_every=5, checkpoint_every=10)
    trainer.train(steps=10, checkpoint=tmp_path / "m.safetensors", progress=False)
    shutil.copy(tmp_path / "m.safetensors", tmp_path / "at10.safetensors")
    trainer.train(steps=15, checkpoint=tmp_path / "m.safetensors", progress=False)
    assert [r["step"] for r in read_metrics(tmp_path / "m.metrics.jsonl")] == [5, 10, 15]
    again = moons_trainer(steps=100, log_every=5, checkpoint_every=10)
    again.resume(tmp_path / "at10.safetensors")
    again.train(steps=25, checkpoint=tmp_path / "m.safetensors", progress=False)
    rows = read_metrics(tmp_path / "m.metrics.jsonl")
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25]
    assert rows[2]["time"] >= rows[1]["time"]  # the clock continues too


def test_the_quality_metric_follows_the_data_and_ranks_models():
    moons = load_data("moons", 1000)
    metric = quality_metric(moons, samples=500)
    assert metric.name == "sliced_w2"
    trained, _ = load_pretrained("moons")
    torch.manual_seed(0)
    untrained = build_model(moons)
    assert metric.evaluate(trained) < 0.5 * metric.evaluate(untrained)
    assert quality_metric(digits("train")).name == "digits_fid"
    images = sd.training.Dataset(torch.zeros(10, 3, 4, 4), name="mine")
    assert quality_metric(images) is None  # nothing held out
    held = sd.training.Dataset(torch.zeros(2, 3, 4, 4), name="mine")
    assert quality_metric(images, held).name == "heldout_loss"


@pytest.mark.skipif(
    not __import__("importlib").util.find_spec("tensorboard"), reason="needs tensorboard"
)
def test_tensorboard_receives_the_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = moons_trainer(steps=20, log_every=5)
    trainer.train(
        checkpoint=tmp_path / "m.safetensors", progress=False, tensorboard=tmp_path / "tb"
    )
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"loss", "grad_norm", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [5, 10, 15, 20]


# -- post-hoc EMA -----------------------------------------------------------------------


@pytest.mark.parametrize("sigma_rel", [0.02, 0.05, 0.1, 0.2, 0.28])
def test_sigma_rel_and_gamma_are_inverse(sigma_rel):
    assert sigma_rel_from_gamma(gamma_from_sigma_rel(sigma_rel)) == pytest.approx(sigma_rel)
    gamma = gamma_from_sigma_rel(sigma_rel)
    w = profile(gamma, 100_000, 100_000)  # the discrete profile's own spread
    tau = np.arange(1, 100_001) / 100_000
    mean = (w * tau).sum()  # sigma_rel: the profile's standard deviation in units of training
    assert np.sqrt((w * (tau - mean) ** 2).sum()) == pytest.approx(sigma_rel, rel=1e-3)


def trajectory(steps=240, every=20):
    """A random-walk parameter trajectory, its power EMAs, and their snapshots' inputs."""
    gen = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.zeros(50, dtype=torch.float64))
    tracked = PowerEMA([param], (0.05, 0.10))
    direct = PowerEMA([param], (0.08,))  # a third length, tracked directly
    path = []
    for step in range(1, steps + 1):
        with torch.no_grad():
            param += torch.randn(50, generator=gen, dtype=torch.float64) + 0.05
        path.append(param.detach().clone())
        tracked.update()
        direct.update()
        yield step, tracked, direct, torch.stack(path), step % every == 0


def test_a_power_ema_is_its_profile_applied_to_the_trajectory():
    for step, tracked, _, path, _ in trajectory(steps=60):
        for gamma, average in zip(tracked.gammas, tracked.averages, strict=True):
            expected = torch.from_numpy(profile(gamma, step, step)) @ path
            torch.testing.assert_close(average[0], expected, rtol=1e-12, atol=1e-10)


def test_posthoc_reconstruction_equals_the_fitted_profile_and_the_tracked_ema(tmp_path):
    ckpt = tmp_path / "run.safetensors"
    for step, tracked, direct, path, snap in trajectory():  # noqa: B007 (the last ones stay)
        if snap:
            save_snapshot(ckpt, tracked, ["w"], step)
    found = snapshots(ckpt)
    assert [s.step for s in found] == list(range(20, 241, 20))
    # a stored length is recovered exactly
    weights, residual = reconstruct(found, 0.10)
    assert residual < 1e-12
    torch.testing.assert_close(weights["w"], tracked.averages[1][0], rtol=1e-12, atol=1e-9)
    # another length: the combination of snapshots is the fitted profile applied exactly
    weights, residual = reconstruct(found, 0.08)
    sources = [(gamma_from_sigma_rel(s), snap.count) for snap in found for s in snap.sigma_rels]
    coeffs, _ = solve_coefficients(sources, (gamma_from_sigma_rel(0.08), 240))
    fitted = sum(c * profile(g, t, 240) for c, (g, t) in zip(coeffs, sources, strict=True))
    torch.testing.assert_close(weights["w"], torch.from_numpy(fitted) @ path, rtol=1e-9, atol=1e-7)
    # ... and it differs from the directly tracked EMA by at most the fit's error
    target = profile(gamma_from_sigma_rel(0.08), 240, 240)
    bound = float(np.abs(fitted - target) @ path.abs().max(1).values.numpy())
    error = (weights["w"] - direct.averages[0][0]).abs().max()
    assert residual < 0.05 and error <= bound + 1e-9
    assert error < 0.01 * path.abs().max()


def test_a_posthoc_run_snapshots_resumes_and_exports_the_best_ema(tmp_path):
    args = ["train", "--data", "moons", "--batch-size", "64", "--steps", "60", "--ema", "posthoc"]
    args += ["--snapshot-every", "20", "--checkpoint-every", "20", "--out", "m.safetensors"]
    assert run(*args, cwd=tmp_path).exit_code == 0
    straight = load_checkpoint(tmp_path / "m.safetensors")[0]
    steps = [s.step for s in snapshots(tmp_path / "m.safetensors")]
    assert steps == [20, 40, 60]
    # the same run stopped at 40 and resumed: the same power averages and snapshots
    args[6] = "40"
    assert run(*args[:-1], "r.safetensors", cwd=tmp_path).exit_code == 0
    result = run("train", "--resume", "r.safetensors", "--steps", "60", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    resumed = load_checkpoint(tmp_path / "r.safetensors")[0]
    for key in (k for k in straight if k.startswith("phema/")):
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6)
    assert [s.step for s in snapshots(tmp_path / "r.safetensors")] == [20, 40, 60]
    result = run(
        "ema", "--run", "m.safetensors", "--sigma-rel", "0.05,0.12", "--samples", "200",
        "--out", "best.safetensors", cwd=tmp_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "checkpoint's EMA" in result.output and "sigma_rel 0.12" in result.output
    assert re.search(r"best: sigma_rel (0\.05|0\.12)", result.output)
    config = load_checkpoint(tmp_path / "best.safetensors")[1]
    assert config["posthoc_sigma_rel"] in (0.05, 0.12)
    sampled = run("sample", "--model", "best.safetensors", "-n", "16", "--out", "s.npz",
                  cwd=tmp_path)  # fmt: skip
    assert sampled.exit_code == 0, sampled.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sigma-rel", "0.3"], "(0, 0.2887)"),
        (["--sigma-rel", "a,b"], "comma-separated list of numbers"),
        (["--at-step", "100000"], "the last snapshot of"),
    ],
)
def test_ema_bad_input_is_a_usage_error(tmp_path, args, message):
    train = ["train", "--data", "moons", "--batch-size", "32", "--steps", "10"]
    assert run(*train, "--ema", "posthoc", "--snapshot-every", "5", "--out", "m.safetensors",
               cwd=tmp_path).exit_code == 0  # fmt: skip
    result = run("ema", "--run", "m.safetensors", *args, cwd=tmp_path)
    assert result.exit_code == 2 and message in result.output, result.output


def test_ema_of_a_run_without_snapshots_says_how_to_get_them(tmp_path):
    assert run("train", "--data", "moons", "--steps", "5", "--out", "m.safetensors",
               cwd=tmp_path).exit_code == 0  # fmt: skip
    result = run("ema", "--run", "m.safetensors", cwd=tmp_path)
    assert result.exit_code == 1 and "train with --ema posthoc" in result.output


# -- LoRA -------------------------------------------------------------------------------


def test_lora_starts_as_the_base_trains_only_the_adapter_and_merges_exactly():
    model, _ = load_pretrained("digits")
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 0.5)
    before = model(x, t)
    names = add_lora(model.net, rank=4)
    assert names and all("emb" in n or "qkv" in n or "proj" in n or "skip" in n or
                         "embed" in n for n in names)  # fmt: skip
    torch.testing.assert_close(model(x, t), before)  # B = 0: the base network exactly
    trainable = [n for n, p in model.net.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    adapter = sum(v.numel() for v in lora_tensors(model.net).values())
    assert adapter <= 0.05 * sum(p.numel() for n, p in model.net.named_parameters()
                                 if ".lora_" not in n)  # fmt: skip
    with torch.no_grad():
        for p in model.net.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
        for layer in model.net.modules():
            if hasattr(layer, "lora_A"):
                layer.scale = 0.8
    adapted = model(x, t)
    assert (adapted - before).abs().max() > 1e-3
    merge_lora(model.net)
    assert not any(".lora_" in n for n, _ in model.net.named_parameters())
    torch.testing.assert_close(model(x, t), adapted, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def threes(tmp_path_factory):
    """A short LoRA fine-tune of the shipped digits model on the 3s."""
    where = tmp_path_factory.mktemp("lora")
    data = digits("all")
    np.savez(where / "threes.npz", x=data.x[data.labels == 3].numpy())
    args = ["train", "--resume-weights", "digits", "--lora-rank", "2", "--data", "threes.npz"]
    args += ["--batch-size", "16", "--steps", "6", "--checkpoint-every", "3"]
    result = run(*args, "--out", "t.safetensors", cwd=where)
    assert result.exit_code == 0, result.output
    return where, args, result


def test_a_lora_run_writes_a_small_adapter_bound_to_its_base(threes):
    where, _, result = threes
    assert "LoRA adapter" in result.output
    tensors, config = load_checkpoint(where / "t.lora.safetensors")
    assert all(k.startswith("lora/") and ".lora_" in k for k in tensors)
    base, _ = load_pretrained("digits")
    assert config["lora"]["base"] == "digits"
    assert config["lora"]["base_hash"] == weights_hash(base.net.state_dict())
    size = (where / "t.lora.safetensors").stat().st_size
    assert size < 0.05 * sd.pretrained.pretrained_path("digits").stat().st_size
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 0.3)
    merged, _ = load_pretrained("digits")
    apply_lora(merged.net, where / "t.lora.safetensors", 0.8)
    unmerged, _ = load_pretrained("digits")
    apply_lora(unmerged.net, where / "t.lora.safetensors", 0.8, merge=False)
    torch.testing.assert_close(merged(x, t), unmerged(x, t), rtol=1e-4, atol=1e-5)
    assert (merged(x, t) - base(x, t)).abs().max() > 0  # it changed the model
    zero, _ = load_pretrained("digits")
    apply_lora(zero.net, where / "t.lora.safetensors", 0.0)
    torch.testing.assert_close(zero(x, t), base(x, t))


def test_a_lora_run_resumes_as_an_uninterrupted_run(threes):
    where, args, _ = threes
    short = [a if a != "6" else "3" for a in args]
    assert run(*short, "--out", "r.safetensors", cwd=where).exit_code == 0
    result = run("train", "--resume", "r.safetensors", "--steps", "6", cwd=where)
    assert result.exit_code == 0, result.output
    a, _ = load_checkpoint(where / "t.lora.safetensors")
    b, _ = load_checkpoint(where / "r.lora.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-7)


def test_sampling_with_an_adapter_and_a_mismatched_base_is_refused(threes):
    where, _, _ = threes
    ok = run("sample", "--model", "digits", "--lora", "t.lora.safetensors", "--lora-scale",
             "0.8", "-n", "8", "--out", "s.png", cwd=where)  # fmt: skip
    assert ok.exit_code == 0, ok.output
    bad = run("sample", "--model", "digits-cond", "--lora", "t.lora.safetensors", "-n", "8",
              "--out", "s.png", cwd=where)  # fmt: skip
    assert bad.exit_code == 2 and "adapts 'digits'" in bad.output, bad.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lora-rank", "4"], "name it with --resume-weights"),
        (["--resume-weights", "digits", "--lora-rank", "2", "--ema", "posthoc"], "not adapters"),
        (["--resume-weights", "digits", "--data", "moons"], "models data of shape (1, 8, 8)"),
        (["--resume-weights", "nope.safetensors"], "no model 'nope.safetensors'"),
        (
            [
                "--resume-weights",
                "digits",
                "--data",
                "digits",
                "--lora-rank",
                "2",
                "--lora-targets",
                "attention",
            ],
            "unknown LoRA target",
        ),
    ],
)
def test_fine_tune_bad_input_is_a_usage_error(tmp_path, args, message):
    result = run("train", "--steps", "2", *args, "--out", "m.safetensors", cwd=tmp_path)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "m.safetensors").exists()


def test_lora_needs_a_known_target_and_a_positive_rank():
    net = ScoreModel(torch.nn.Linear(2, 2), sd.VPSDE(), "eps").net
    with pytest.raises(ArgumentError, match="rank must be >= 1"):
        add_lora(net, rank=0)
