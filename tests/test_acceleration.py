"""Compiled and autocast networks (``sd.accelerate``): same samples, no recompiles across
steps, a fallback that warns once, training that follows the eager run."""

import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import sde_diffusion as sd
from sde_diffusion.acceleration import AcceleratedModel, FastNetwork
from sde_diffusion.networks import ResidualMLP
from sde_diffusion.parametrization import ScoreModel
from sde_diffusion.pretrained import load_pretrained
from sde_diffusion.training import TrainConfig, Trainer
from sde_diffusion.training.data import load_data


@pytest.fixture(scope="module")
def moons():
    model, _ = load_pretrained("moons")
    return model


def _draw(model, sde, **kw):
    with torch.inference_mode():
        return sd.sample(model, sde, (256, 2), "dpmpp_2m", 12, seed=3, **kw)


def test_compiled_sampling_equals_eager_and_reports_its_compile_time(moons):
    eager = _draw(moons, moons.sde)
    compiled = _draw(moons, moons.sde, compile=True)
    torch.testing.assert_close(compiled.x, eager.x, rtol=1e-5, atol=1e-5)
    assert compiled.nfe == eager.nfe and eager.compile_time == 0.0
    assert 0 < compiled.compile_time < compiled.wall_time
    assert compiled.sampling_time == pytest.approx(compiled.wall_time - compiled.compile_time)


def test_steps_do_not_recompile(moons):
    """The time enters as a tensor: a 30-step solve compiles the network once."""
    torch._dynamo.reset()
    fast = sd.accelerate(moons, compile=True)
    with torch._dynamo.config.patch(error_on_recompile=True), warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would warn
        _draw(fast, moons.sde)
        with torch.inference_mode():
            sd.sample(fast, moons.sde, (256, 2), "heun", 30, seed=4)
    assert fast.net.compiled


def test_the_parameters_are_shared_and_the_state_dict_is_the_networks(moons):
    fast = sd.accelerate(moons, compile=True, precision="bf16")
    assert isinstance(fast, ScoreModel) and isinstance(fast.net, FastNetwork)
    assert fast.net.net is moons.net and fast.prediction == moons.prediction
    assert list(fast.net.state_dict()) == [f"net.{k}" for k in moons.net.state_dict()]
    assert sd.accelerate(moons) is moons  # nothing asked: the model itself


FALLBACK = """
import warnings, torch
from sde_diffusion.acceleration import FastNetwork
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.SiLU(), torch.nn.Linear(8, 2))
fast = FastNetwork(net, compile=True)
x = torch.randn(5, 3)
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    first, second = fast(x), fast(x)
ours = [str(w.message) for w in seen if w.category is RuntimeWarning]
print(len(ours), ours[0] if ours else "", fast.compiled)
print(torch.equal(first, net(x)) and torch.equal(second, net(x)))
"""


def test_a_network_that_cannot_compile_runs_eagerly_after_one_warning(tmp_path):
    """No working C++ compiler (Inductor's CPU backend needs one): one warning, eager results."""
    env = {**os.environ, "CXX": str(tmp_path / "no-such-g++")}
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "cache")  # no kernel compiled before
    run = subprocess.run(
        [sys.executable, "-c", FALLBACK], env=env, capture_output=True, text=True, check=True
    )
    count, rest = run.stdout.splitlines()[0].split(" ", 1)
    assert count == "1" and "could not be compiled" in rest and "C++ compiler" in rest
    assert rest.endswith("running it eagerly False")
    assert run.stdout.splitlines()[1] == "True"


def test_the_command_line_samples_eagerly_after_one_warning_line(tmp_path):
    env = {**os.environ, "CXX": str(tmp_path / "no-such-g++")}
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "cache")
    out = tmp_path / "s.npz"
    flags = ["--model", "moons", "-n", "32", "--steps", "4", "--compile"]
    args = ["sample", *flags, "--out", str(out)]
    run = subprocess.run(
        [sys.executable, "-m", "sde_diffusion", *args], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    ours = [line for line in run.stderr.splitlines() if "could not be compiled" in line]
    assert len(ours) == 1 and ours[0].startswith("Warning: the network could not be compiled")
    assert "return self._call_impl" not in run.stderr  # no source line after it
    assert out.is_file()


def test_the_networks_own_error_is_not_a_compile_failure():
    fast = FastNetwork(nn.Linear(3, 2), compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(RuntimeError, match="cannot be multiplied"):
            fast(torch.randn(4, 5))


def test_bf16_runs_the_network_in_bf16_and_keeps_the_state_in_float32(moons):
    seen = []
    hook = moons.net.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    try:
        fp32 = _draw(moons, moons.sde)
        bf16 = _draw(moons, moons.sde, precision="bf16")
    finally:
        hook.remove()
    assert seen[0] == torch.float32 and seen[-1] == torch.bfloat16
    assert bf16.x.dtype == torch.float32
    gap = (bf16.x - fp32.x).pow(2).mean().sqrt() / fp32.x.std()
    assert 0 < gap < 0.05  # bf16's rounding, not a different sampler


def test_guidance_and_plain_models_are_accelerated_inside(moons):
    cfg = sd.ClassifierFreeGuidance(moons, 2.0, 10)
    fast = sd.accelerate(cfg, precision="bf16")
    assert isinstance(fast.model.net, FastNetwork) and fast.scale == 2.0
    assert cfg.model is moons  # the original wrapper is untouched
    fn = sd.accelerate(lambda x, t: -x, compile=True)
    assert isinstance(fn, AcceleratedModel) and fn.prediction == "score"
    x = torch.randn(8, 2)
    torch.testing.assert_close(fn(x, torch.rand(8)), -x)


def test_unknown_precision_is_refused_with_the_valid_names(moons):
    with pytest.raises(sd.ArgumentError, match="fp32, bf16, fp16"):
        sd.accelerate(moons, precision="fp64")
    with pytest.raises(sd.ArgumentError, match="fp32, bf16, fp16"):
        TrainConfig(precision="half")
    with pytest.raises(sd.ArgumentError, match=r"unknown compile mode 'fastest'.*max-autotune"):
        sd.accelerate(moons, compile="fastest")


def _trainer(**overrides):
    torch.manual_seed(0)
    model = ScoreModel(ResidualMLP(2, width=32, depth=2, emb_dim=16), sd.VPSDE())
    config = TrainConfig(steps=8, batch_size=64, warmup=2, checkpoint_every=1000, **overrides)
    return Trainer(model, load_data("moons", 1000), config)


def test_compiled_training_follows_the_eager_run():
    eager, compiled = _trainer(), _trainer(compile=True)
    eager.train(progress=False)
    compiled.train(progress=False)
    assert (
        isinstance(compiled.forward_model.net, FastNetwork) and compiled.forward_model.net.compiled
    )
    losses = [[h["loss"] for h in t.history] for t in (eager, compiled)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    for a, b in zip(eager.net.parameters(), compiled.net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    # the checkpoint holds the bare network's names, as an eager run's
    assert set(compiled.net.state_dict()) == set(eager.net.state_dict())


def test_fp16_training_scales_the_loss_and_resumes_its_scale(tmp_path):
    straight = _trainer(precision="fp16")
    assert straight.scaler.is_enabled()
    straight.train(progress=False)
    first = _trainer(precision="fp16")
    first.train(steps=5, checkpoint=tmp_path / "half.safetensors", progress=False)
    resumed = _trainer(precision="fp16")
    resumed.resume(tmp_path / "half.safetensors")
    assert resumed.scaler.state_dict() == first.scaler.state_dict()  # the growth count too
    resumed.train(progress=False)
    assert resumed.scaler.state_dict() == straight.scaler.state_dict()
    for a, b in zip(straight.net.parameters(), resumed.net.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.cuda
def test_cuda_graph_sampling_equals_eager():
    """On CUDA ``compile=True`` replays CUDA graphs (mode reduce-overhead); the samples and
    the multistep history (kept across replays) equal the eager run's."""
    model, _ = load_pretrained("digits", device="cuda")
    with torch.inference_mode():
        runs = [
            sd.sample(model, model.sde, (64, 1, 8, 8), "dpmpp_2m", 20, seed=0, device="cuda",
                      compile=c)
            for c in (False, True, True)
        ]  # fmt: skip
    for res in runs[1:]:
        torch.testing.assert_close(res.x, runs[0].x, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
def test_cuda_compiled_bf16_training_runs():
    torch.manual_seed(0)
    model = ScoreModel(ResidualMLP(2, width=32, depth=2, emb_dim=16), sd.VPSDE())
    config = TrainConfig(steps=20, batch_size=64, device="cuda", compile=True, precision="bf16")
    trainer = Trainer(model, load_data("moons", 1000), config)
    history = trainer.train(progress=False)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
