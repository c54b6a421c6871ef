"""Data loading, checkpoints and the trainer."""

import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import sde_diffusion as sd
from sde_diffusion.networks import ResidualMLP
from sde_diffusion.parametrization import ScoreModel
from sde_diffusion.training import NonFiniteLossError, TrainConfig, Trainer, load_score_model
from sde_diffusion.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sde_diffusion.training.data import TOY_DATASETS, DataError, digits, load_data, toy_2d

# -- data ------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_sets_are_seeded(name):
    a, b = toy_2d(name, 500, seed=3), toy_2d(name, 500, seed=3)
    assert a.shape == (500, 2) and torch.equal(a, b)
    assert not torch.equal(a, toy_2d(name, 500, seed=4))
    assert a.abs().max() < 6


def test_digits_split_is_fixed_and_scaled():
    train, test = digits("train"), digits("test")
    assert train.x.shape == (1437, 1, 8, 8) and test.x.shape == (360, 1, 8, 8)
    assert train.x.min() == -1 and train.x.max() == 1
    assert torch.equal(train.x, digits("train").x)
    assert torch.equal(train.to_data_units(train.x).round(), train.to_data_units(train.x))
    flat = {tuple(v) for v in train.x.flatten(1).tolist()}
    assert sum(tuple(v) in flat for v in test.x.flatten(1).tolist()) < 5  # disjoint up to dupes


def test_arrays_and_image_folders_load(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((4, 3), np.float32))
    np.savez(tmp_path / "b.npz", x=np.zeros((2, 5)), y=np.ones(2))
    assert load_data(str(tmp_path / "a.npy")).x.shape == (4, 3)
    assert load_data(str(tmp_path / "b.npz")).x.shape == (2, 5)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((6, 6, 3), 80 * i, np.uint8)).save(folder / f"{i}.png")
    data = load_data(str(folder))
    assert data.x.shape == (3, 3, 6, 6) and data.x.min() == -1
    torch.testing.assert_close(data.to_data_units(data.x[2]), torch.full((3, 6, 6), 160.0))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: str(p / "missing.npy"), "no such file or folder"),
        (lambda p: (np.save(p / "flat.npy", np.ones(5)), str(p / "flat.npy"))[1], "shape"),
        (
            lambda p: (np.save(p / "nan.npy", np.array([[1.0], [np.nan]])), str(p / "nan.npy"))[1],
            "1 sample",
        ),
        (
            lambda p: (
                np.savez(p / "two.npz", a=np.ones((2, 2)), b=np.ones((2, 2))),
                str(p / "two.npz"),
            )[1],
            "one named 'x'",
        ),
        (
            lambda p: ((p / "bad.npy").write_text("not numpy"), str(p / "bad.npy"))[1],
            "not a readable",
        ),
        (lambda p: ((p / "empty").mkdir(), str(p / "empty"))[1], "no PNG or JPEG"),
        (lambda p: ((p / "x.csv").write_text("1,2"), str(p / "x.csv"))[1], "expected a .npy"),
    ],
)
def test_bad_data_is_explained(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        load_data(make(tmp_path))


def test_mixed_image_sizes_are_refused(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(DataError, match="must share one size"):
        load_data(str(tmp_path))


def test_unknown_toy_name():
    with pytest.raises(DataError, match="unknown toy data set 'spiral'"):
        toy_2d("spiral", 10)


# -- checkpoints -------------------------------------------------------------------


def _trainer(steps=40, **overrides):
    torch.manual_seed(0)
    model = ScoreModel(ResidualMLP(2, width=32, depth=2, emb_dim=16), sd.VPSDE())
    config = TrainConfig(steps=steps, batch_size=32, warmup=5, checkpoint_every=1000, **overrides)
    return Trainer(model, load_data("moons", 1000), config)


def test_checkpoint_rebuilds_an_identical_score_model(tmp_path):
    trainer = _trainer()
    trainer.train(progress=False)
    path = trainer.save(tmp_path / "m.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's 0600
    for ema in (True, False):
        model, config = load_score_model(path, ema=ema)
        reference = trainer.ema.module if ema else trainer.model
        x, t = torch.randn(6, 2), torch.linspace(0.01, 1.0, 6)
        with torch.no_grad():
            torch.testing.assert_close(model(x, t), reference(x, t), rtol=0, atol=0)
    assert config["step"] == 40 and config["sde"]["type"] == "vp"
    assert config["data"]["name"] == "moons"


def test_damaged_truncated_and_foreign_checkpoints(tmp_path):
    path = _trainer(steps=2).save(tmp_path / "m.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.safetensors").write_bytes(b"\x00\x01garbage" * 10)
    save_file({"w": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        load_checkpoint(tmp_path / "cut.safetensors")
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        load_checkpoint(tmp_path / "noise.safetensors")
    with pytest.raises(CheckpointError, match="not an sde-diffusion checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_files_of_other_tools_and_versions_say_what_to_do(tmp_path):
    """A torch pickle is never opened; a diffusers file names its adapter; a checkpoint of
    a newer format names the version."""
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match=r"PyTorch pickle .* never loads.*from_kdiffusion"):
        load_checkpoint(tmp_path / "model.pth")
    diffusers_keys = {"conv_in.weight": torch.zeros(2), "down_blocks.0.w": torch.zeros(1)}
    save_file(diffusers_keys, tmp_path / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match=r"diffusers model.*from_diffusers"):
        load_checkpoint(tmp_path / "diffusion_pytorch_model.safetensors")
    newer = {"format": "sde-diffusion/2", "config": "{}"}
    save_file({"w": torch.zeros(2)}, tmp_path / "newer.safetensors", metadata=newer)
    with pytest.raises(CheckpointError, match=r"format 'sde-diffusion/2'.*upgrade"):
        load_checkpoint(tmp_path / "newer.safetensors")


def test_failed_write_leaves_the_old_checkpoint_intact(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(3)}, {"a": 1})
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 (safetensors' own error type)
        save_checkpoint(path, {"w": torch.ones(3), "bad": "not a tensor"}, {"a": 2})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]  # no temp left


# -- training ------------------------------------------------------------------------


def test_resumed_training_is_bit_identical(tmp_path):
    straight = _trainer()
    straight.train(progress=False)
    first = _trainer()
    first.train(steps=20, checkpoint=tmp_path / "half.safetensors", progress=False)
    resumed = _trainer()
    resumed.resume(tmp_path / "half.safetensors")
    assert resumed.step == 20
    resumed.train(progress=False)
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.parameters(), resumed.ema.parameters(), strict=True):
        assert torch.equal(a, b)
    assert straight.history[-1] == resumed.history[-1]


def test_interrupt_saves_a_checkpoint(tmp_path):
    class StopAtFive(Trainer):
        def train_step(self):
            if self.step == 5:
                raise KeyboardInterrupt
            return super().train_step()

    trainer = _trainer()
    trainer.__class__ = StopAtFive
    with pytest.raises(KeyboardInterrupt):
        trainer.train(checkpoint=tmp_path / "ckpt.safetensors", progress=False)
    assert load_checkpoint(tmp_path / "ckpt.safetensors")[1]["step"] == 5


def test_loss_decreases_and_warmup_ramps():
    trainer = _trainer(steps=300, lr=3e-3)
    assert trainer.learning_rate(0) == pytest.approx(3e-3 / 5)
    assert trainer.learning_rate(10) == pytest.approx(3e-3)
    history = trainer.train(progress=False)
    early = np.mean([h["loss"] for h in history[:30]])
    late = np.mean([h["loss"] for h in history[-30:]])
    assert late < 0.8 * early


def test_a_non_finite_loss_stops_before_the_weights_change_and_keeps_them(tmp_path):
    """lr = 1e30: the first step is finite but huge, the second loss overflows."""
    trainer = _trainer(steps=50, lr=1e30)
    trainer.config.checkpoint_every = 1
    path = tmp_path / "m.safetensors"
    with pytest.raises(NonFiniteLossError, match=r"at step (\d+).*learning rate") as caught:
        trainer.train(checkpoint=path, progress=False)
    step = int(caught.value.args[0].split("at step ")[1].split(",")[0])
    assert trainer.step == step - 1 >= 1  # the failing step was not taken
    tensors, config = load_checkpoint(path)
    assert config["step"] == trainer.step
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())
    left = {p.name for p in tmp_path.iterdir()}  # the checkpoint and its log, no temporaries
    assert left - {"m.curves.png"} == {"m.safetensors", "m.metrics.jsonl"}


def test_non_finite_weights_are_never_written(tmp_path):
    trainer = _trainer(steps=2)
    trainer.train(progress=False)
    path = trainer.save(tmp_path / "m.safetensors")
    before = path.read_bytes()
    with torch.no_grad():
        next(trainer.net.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="not finite; they were not written"):
        trainer.save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


@pytest.mark.parametrize(
    "bad", [dict(steps=0), dict(lr=0.0), dict(lr=float("inf")), dict(ema_decay=1.0)]
)
def test_bad_training_config(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_periodic_evaluation_samples_and_bf16():
    trainer = _trainer(steps=20, sample_every=10, sample_count=16, sample_steps=4, precision="bf16")
    seen = {}
    history = trainer.train(progress=False, on_samples=lambda step, x: seen.update({step: x}))
    assert sorted(seen) == [10, 20]
    assert seen[20].shape == (16, 2) and torch.isfinite(seen[20]).all()
    assert all(np.isfinite(h["loss"]) for h in history)
    torch.testing.assert_close(trainer.evaluation_samples(), seen[20])  # seeded


def test_a_unet_checkpoint_from_before_the_scale_shift_fix_is_explained(tmp_path):
    """Residual-block embeddings of the old width (C, not 2C) name the cause in one sentence."""
    from sde_diffusion.pretrained import pretrained_path

    tensors, config = load_checkpoint(pretrained_path("digits"))
    old = {
        k: v[: v.shape[0] // 2] if k.endswith(".emb.weight") or k.endswith(".emb.bias") else v
        for k, v in tensors.items()
    }
    save_checkpoint(tmp_path / "old.safetensors", old, config)
    with pytest.raises(CheckpointError, match=r"earlier U-Net .* retrain it"):
        load_score_model(tmp_path / "old.safetensors")
