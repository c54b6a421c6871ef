"""Latent diffusion: the KL autoencoder, its training, latent score models that decode, the
U-Net's cross-attention, and the command line around them."""

import numpy as np
import pytest
import torch
from helpers import run_in
from safetensors.torch import load_file, save_file

import sde_diffusion as sd
from sde_diffusion.latent import (
    DecodedMeasurement,
    LatentModel,
    latent_inpainting,
    latent_model_of,
)
from sde_diffusion.measurements import Downsample, Inpaint, half_mask
from sde_diffusion.networks import Autoencoder, UNet
from sde_diffusion.networks.autoencoder import kl_to_standard_normal
from sde_diffusion.training import TrainConfig, Trainer
from sde_diffusion.training.autoencoding import (
    AutoencoderModel,
    AutoencoderObjective,
    encode_dataset,
    latent_statistics,
    reconstruction_error,
)
from sde_diffusion.training.checkpoint import CheckpointError, load_checkpoint
from sde_diffusion.training.data import Dataset, digits, digits32, digits32_to_8
from sde_diffusion.training.losses import DenoisingScoreMatching
from sde_diffusion.training.state import autoencoder_source, load_autoencoder, load_score_model


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_the_autoencoder_maps_images_to_latents_f_times_smaller_and_back(factor):
    ae = Autoencoder(1, factor=factor, latent_channels=3, channels=4)
    x = torch.randn(2, 1, 16, 16)
    mean, logvar = ae.posterior(x)
    assert mean.shape == logvar.shape == (2, 3, 16 // factor, 16 // factor)
    assert ae.latent_shape((1, 16, 16)) == (3, 16 // factor, 16 // factor)
    assert ae.decode_raw(mean).shape == x.shape
    with pytest.raises(sd.ArgumentError, match="divisible by"):
        ae.posterior(torch.randn(2, 1, 12, 10) if factor == 8 else torch.randn(2, 1, 9, 9))
    with pytest.raises(sd.ArgumentError, match="factor must be one of 2, 4, 8"):
        Autoencoder(1, factor=3)


def test_scaled_latents_invert_to_the_raw_ones():
    torch.manual_seed(0)
    ae = Autoencoder(1, 2, 2, 4, latent_scale=2.5, latent_shift=0.3).eval()
    x = torch.randn(3, 1, 8, 8)
    mean, _ = ae.posterior(x)
    z = ae.encode(x)
    torch.testing.assert_close(z, (mean - 0.3) * 2.5)
    torch.testing.assert_close(ae.decode(z), ae.decode_raw(mean))
    sampled = ae.encode(x, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(sampled, z)


def test_the_kl_term_is_torchs_and_the_loss_is_reconstruction_plus_weighted_kl():
    torch.manual_seed(0)
    mean, logvar = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(kl_to_standard_normal(mean, logvar), expected)
    ae = Autoencoder(1, 2, 2, 4)
    model, x = AutoencoderModel(ae), torch.randn(4, 1, 6, 6)
    objective = AutoencoderObjective(ae, kl_weight=0.1, reconstruction="l2")
    draws = objective.draw(4, torch.Generator().manual_seed(1), 0, x)
    recon, m, lv = ae(x, draws["eps"])
    manual = (recon - x).square().flatten(1).mean(1) + 0.1 * kl_to_standard_normal(m, lv) / 36
    torch.testing.assert_close(objective.loss(model, x, draws, None), manual)
    with pytest.raises(sd.ArgumentError, match="l1, l2"):
        AutoencoderObjective(ae, reconstruction="lpips")


def _ae_trainer(data, steps, seed=0):
    torch.manual_seed(seed)
    ae = Autoencoder(1, factor=2, latent_channels=2, channels=8)
    config = TrainConfig(steps=steps, batch_size=32, lr=2e-3, warmup=10, ema_decay=0.9)
    return Trainer(AutoencoderModel(ae), data, config, objective=AutoencoderObjective(ae))


def test_training_learns_to_reconstruct_and_records_the_latent_statistics(tmp_path):
    data = digits("train")
    trainer = _ae_trainer(data, 150)
    untrained = reconstruction_error(trainer.net.eval(), data.x)
    trainer.net.train()
    trainer.train(checkpoint=tmp_path / "ae.safetensors", progress=False)
    ae = load_autoencoder(tmp_path / "ae.safetensors")
    error = reconstruction_error(ae, data.x)
    assert error < 0.15 * float(data.x.var()) < untrained  # most of the variance is kept
    _, config = load_checkpoint(tmp_path / "ae.safetensors")
    assert config["reconstruction_mse"] == pytest.approx(error, rel=1e-5)
    shift, scale = latent_statistics(ae, data.x)
    assert (ae.config["latent_shift"], ae.config["latent_scale"]) == pytest.approx((shift, scale))
    latents = encode_dataset(data, ae, autoencoder_source(tmp_path / "ae.safetensors"))
    assert latents.x.shape == (len(data.x), 2, 4, 4)
    assert float(latents.x.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(latents.x.std()) == pytest.approx(1.0, abs=1e-5)
    assert latents.info["latent"]["image_shape"] == [1, 8, 8]
    assert torch.equal(latents.labels, data.labels)


def test_an_autoencoder_run_resumes_as_if_uninterrupted(tmp_path):
    data = digits("train")
    whole = _ae_trainer(data, 8)
    whole.train(progress=False)
    first = _ae_trainer(data, 8)
    first.train(4, checkpoint=tmp_path / "ae.safetensors", progress=False)
    second = _ae_trainer(data, 8, seed=5)  # other initial weights: all come from the file
    second.resume(tmp_path / "ae.safetensors")
    second.train(progress=False)
    for a, b in zip(whole.net.parameters(), second.net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class Doubling(torch.nn.Module):
    """An exact linear 'autoencoder': latents are the image halved, decoding doubles."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # something to move and cast

    def encode(self, x, generator=None):
        return x / 2

    def decode(self, z):
        return 2 * z + self.anchor


def _exact_latent_model():
    """N(0, 0.25 I) latents: the exact score, so decoded samples are N(0, I) images."""
    sde = sd.VPSDE()
    model = sd.FunctionModel(
        lambda x, t: -x / sd.append_dims(sde.alpha(t) ** 2 * 0.25 + sde.sigma(t) ** 2, x.ndim),
        "score",
        conditional=False,
    )
    return LatentModel(model, Doubling(), (1, 4, 4), (1, 4, 4)), sde


@torch.no_grad()
def test_sampling_a_latent_model_returns_decoded_images_and_the_latents():
    model, sde = _exact_latent_model()
    res = sd.sample(model, sde, (4000, 1, 4, 4), "heun", 20, seed=0)
    torch.testing.assert_close(res.x, 2 * res.latent)
    assert float(res.latent.std()) == pytest.approx(0.5, rel=0.03)
    assert float(res.x.std()) == pytest.approx(1.0, rel=0.03)
    kept = sd.sample(model, sde, (4000, 1, 4, 4), "heun", 20, seed=0, decode=False)
    torch.testing.assert_close(kept.x, res.latent)
    batched = sd.sample(model, sde, (10, 1, 4, 4), "heun", 5, seed=0, batch_size=4)
    whole = sd.sample(model, sde, (10, 1, 4, 4), "heun", 5, seed=0, batch_size=10)
    torch.testing.assert_close(batched.x, whole.x)
    assert float(batched.x.std()) > 0.5  # decoded: images of std 1, not latents of 0.5


def test_a_guided_latent_model_still_decodes():
    sde = sd.VPSDE()
    net = UNet(1, channels=8, channel_mult=(1,), num_res_blocks=1, image_size=4, num_classes=3)
    inner = sd.ScoreModel(net, sde, "edm", 1.0)
    model = LatentModel(inner, Doubling(), (1, 4, 4), (1, 4, 4))
    guided = sd.ClassifierFreeGuidance(model, 2.0, null=3)
    assert latent_model_of(guided) is model and latent_model_of(inner) is None
    labels = torch.tensor([0, 1])
    with torch.no_grad():
        res = sd.sample(guided, sde, (2, 1, 4, 4), "dpmpp_2m", 4, cond=labels, seed=0)
    torch.testing.assert_close(res.x, 2 * res.latent)
    fast = sd.sample(guided, sde, (2, 1, 4, 4), "dpmpp_2m", 4, cond=labels, seed=0,
                     precision="bf16")  # fmt: skip
    assert fast.x.shape == (2, 1, 4, 4) and torch.allclose(fast.x, 2 * fast.latent)


def test_restoring_with_a_latent_model_measures_through_the_decoder():
    """Inpainting N(0, I) images with the exact latent model: DPS pulls the kept pixels to
    the measurement (within about its step, as in pixel space); methods that need a linear
    operator refuse any other measurement with a sentence naming what runs."""
    model, sde = _exact_latent_model()
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[:, :2] = True
    measurement = Inpaint(mask)
    truth = torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = measurement.forward(truth)
    res = sd.restore(model, sde, measurement, y, 0.0, "dps", steps=200, scale=0.5)
    with torch.no_grad():
        free = sd.sample(model, sde, (64, 1, 4, 4), "ddim", 200, seed=0, eta=1.0)
    error = float((measurement.forward(res.x) - y).square().mean())
    assert error < 0.15 * float((measurement.forward(free.x) - y).square().mean())
    torch.testing.assert_close(res.x, 2 * res.latent)
    small = Downsample((1, 4, 4), 2)
    with pytest.raises(sd.ArgumentError, match="dps restores any measurement"):
        sd.restore(model, sde, small, small.forward(truth), 0.0, "ddrm", steps=10)
    with pytest.raises(sd.ArgumentError, match="takes images of shape"):
        DecodedMeasurement(Inpaint(torch.ones(1, 8, 8, dtype=torch.bool)), model)


class Blocks(torch.nn.Module):
    """An exact linear autoencoder with f = 2: a latent is the image's 2×2 block means, an
    image the latent's cells repeated over their blocks."""

    def encode(self, x, generator=None):
        return torch.nn.functional.avg_pool2d(x, 2)

    def decode(self, z):
        return z.repeat_interleave(2, 2).repeat_interleave(2, 3)


def _latent_problem(prior, sigma_y, n, mask=None):
    """Block images of a 1×4×4 latent ``prior``, inpainted with the upper half (whole blocks)
    observed; the latent reading of the same draw; the image and latent operators."""
    model = LatentModel(prior.score_fn(SDE), Blocks(), (1, 8, 8), (1, 4, 4))
    op = Inpaint(half_mask((1, 8, 8)) if mask is None else mask)
    z = prior.sample(1, generator=torch.Generator().manual_seed(1)).reshape(1, 1, 4, 4)
    y1 = op.measure(Blocks().decode(z.double()), sigma_y, torch.Generator().manual_seed(2))
    cells = Inpaint(half_mask((1, 4, 4)))
    reading = cells.forward(Blocks().encode(op.adjoint(y1)))
    return model, op, cells, y1.expand(n, -1).float(), reading


SDE = sd.EDMSDE()


def test_inpainting_a_latent_model_is_inpainting_its_latents_exactly():
    """With a linear block autoencoder and a block-aligned mask, every method but DPS runs
    the latent problem itself: the observed cells, the encoded reading, the noise carried
    through the encoder (σ_y/2 for a 2×2 mean). ΠGDM on a Gaussian latent prior then
    samples the exact latent posterior (as in pixel space), and its decoded images are
    those of the latent run."""
    prior = sd.GaussianMixture(torch.zeros(1, 16), 0.49 * torch.eye(16)[None], [1.0])
    n = 4000
    model, op, cells, y, reading = _latent_problem(prior, 0.1, n)
    options = dict(solver="heun", steps=100, data_std=0.7, seed=3, dtype=torch.float64)
    res = sd.restore(model, SDE, op, y, 0.1, "pigdm", **options)
    direct = sd.restore(prior.score_fn(SDE), SDE, cells, reading.expand(n, -1).float(), 0.05,
                        "pigdm", **options)  # fmt: skip
    torch.testing.assert_close(res.latent, direct.x, rtol=0, atol=1e-6)
    torch.testing.assert_close(res.x, Blocks().decode(res.latent))
    post = prior.posterior(cells, reading, 0.05)
    x, mean, cov = res.latent.flatten(1), post.mean()[0], post.covariance()[0]
    assert ((x.mean(0) - mean).abs() / (cov.diagonal() / n).sqrt()).max() < 5
    assert ((x.var(0) - cov.diagonal()).abs() / (cov.diagonal() * (2 / n) ** 0.5)).max() < 5


@pytest.mark.parametrize("method", ["replacement", "repaint", "mcg", "pigdm", "ddrm", "diffpir",
                                    "daps"])  # fmt: skip
def test_every_linear_method_inpaints_a_latent_model_keeping_the_observed_pixels(method):
    """Noise-free latent inpainting meets the observed cells exactly, so the decoded images
    keep the observed pixels (a block decoder: each pixel is its cell)."""
    prior = sd.GaussianMixture(torch.zeros(1, 16), 0.49 * torch.eye(16)[None], [1.0])
    model, op, _, y, _ = _latent_problem(prior, 0.0, 16)
    options = {"jump": 2, "resample": 2} if method == "repaint" else {}
    res = sd.restore(model, SDE, op, y, 0.0, method, steps=12, **options)
    assert res.x.shape == (16, 1, 8, 8) and res.latent.shape == (16, 1, 4, 4)
    assert (op.forward(res.x) - y).abs().max() < 1e-4


def test_measurement_noise_reaches_the_latents_through_the_encoders_gain_whatever_the_batch():
    """σ_y becomes σ_y·g: g = 1/2 for the 2×2 block mean; for a trained-style network
    encoder a positive number that one row alone gets as a whole batch does, also under
    inference mode; the reading is the encoded image at the observed cells."""
    prior = sd.GaussianMixture(torch.zeros(1, 16), 0.49 * torch.eye(16)[None], [1.0])
    model, op, cells, y, reading = _latent_problem(prior, 0.1, 3)
    operator, latent_y, sigma = latent_inpainting(op, model, y, 0.1)
    assert torch.equal(operator.mask, cells.mask) and sigma == pytest.approx(0.05, rel=1e-6)
    torch.testing.assert_close(latent_y, reading.float().expand(3, -1))
    ae = Autoencoder(1, 4, 2, 8).eval()
    network = LatentModel(model.model, ae, (1, 16, 16), (2, 4, 4))
    op = Inpaint(half_mask((1, 16, 16)))
    y = op.forward(torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(0)))
    with torch.inference_mode():
        _, latent_y, many = latent_inpainting(op, network, y, 0.1)
        _, first, one = latent_inpainting(op, network, y[:1], 0.1)
    assert 0 < many == one
    torch.testing.assert_close(first, latent_y[:1])  # one row alone reads as in the batch
    assert latent_y.shape == (5, 16)  # the upper two rows of 4×4 cells, 2 channels


def test_latent_inpainting_refuses_a_mask_that_observes_no_whole_block():
    prior = sd.GaussianMixture(torch.zeros(1, 16), 0.49 * torch.eye(16)[None], [1.0])
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None]) % 2 == 0
    model, op, _, y, _ = _latent_problem(prior, 0.0, 4, checker[None])
    with pytest.raises(sd.ArgumentError, match="no 2×2 block of the mask is wholly observed"):
        sd.restore(model, SDE, op, y, 0.0, "ddrm", steps=4)
    assert sd.restore(model, SDE, op, y, 0.0, "dps", steps=4).x.shape == (4, 1, 8, 8)
    vectors = LatentModel(model.model, Doubling(), (16,), (16,))
    line = Inpaint(torch.arange(16) < 8)
    with pytest.raises(sd.ArgumentError, match="latents of shape \\(C, H, W\\)"):
        sd.restore(vectors, SDE, line, torch.zeros(2, 8), 0.0, "ddrm", steps=4)
    odd = LatentModel(model.model, Blocks(), (1, 8, 6), (1, 4, 4))
    with pytest.raises(sd.ArgumentError, match="a whole factor larger"):
        sd.restore(odd, SDE, Inpaint(half_mask((1, 8, 6))), torch.zeros(2, 24), 0.0, "ddrm")


def _cross_attention_task(n, generator):
    """Images whose top or bottom half is bright, told apart only by a sequence condition:
    three tokens near one of two class vectors."""
    classes = torch.randint(0, 2, (n,), generator=generator)
    images = torch.full((n, 1, 8, 8), -0.5)
    images[classes == 0, :, :4] = 0.5
    images[classes == 1, :, 4:] = 0.5
    codes = torch.tensor([[1.0, -1.0, 0.5, 0.0], [-1.0, 1.0, 0.0, 0.5]])
    tokens = codes[classes][:, None] + 0.3 * torch.randn(n, 3, 4, generator=generator)
    return images, tokens, classes


def test_cross_attention_reads_a_sequence_condition_and_learns_a_toy_task():
    torch.manual_seed(0)
    net = UNet(1, channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_below=4,
               image_size=8, context_dim=4)  # fmt: skip
    model = sd.ScoreModel(net, sd.VPSDE(), "edm", 0.5)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 0.5)
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    with torch.no_grad():  # the projections start at zero: the context is not read yet
        torch.testing.assert_close(model(x, t, a), model(x, t, b))
        torch.testing.assert_close(model(x, t, {"context": a}), model(x, t, None))
    loss = DenoisingScoreMatching(model.sde, "edm")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        images, tokens, _ = _cross_attention_task(64, g)
        value = loss(model, images, cond=tokens, generator=g).mean()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    images, tokens, classes = _cross_attention_task(200, g)
    with torch.no_grad():
        assert not torch.allclose(model(x, t, a), model(x, t, b), atol=1e-3)
        res = sd.sample(model, model.sde, (200, 1, 8, 8), "heun", 10, cond=tokens, seed=1)
    top_brighter = res.x[:, 0, :4].mean((1, 2)) > res.x[:, 0, 4:].mean((1, 2))
    accuracy = float((top_brighter == (classes == 0)).float().mean())
    assert accuracy > 0.95
    with pytest.raises(sd.ArgumentError, match=r"shape \(2, L, 4\)"):
        model(x, t, torch.randn(2, 3, 5))
    plain = sd.ScoreModel(UNet(1, 8, (1,), 1, image_size=8), sd.VPSDE(), "edm")
    with pytest.raises(sd.ArgumentError, match="no sequence condition"):
        plain(x, t, a)


def test_a_latent_checkpoint_finds_its_autoencoder_beside_it_or_says_what_is_wrong(tmp_path):
    data = digits("train")
    ae_trainer = _ae_trainer(data, 2)
    ae_trainer.train(checkpoint=tmp_path / "ae.safetensors", progress=False)
    latents = encode_dataset(data, load_autoencoder(tmp_path / "ae.safetensors"),
                             autoencoder_source(tmp_path / "ae.safetensors"))  # fmt: skip
    net = UNet(2, channels=8, channel_mult=(1,), num_res_blocks=1, image_size=4)
    trainer = Trainer(sd.ScoreModel(net, sd.VPSDE(), "edm", 1.0), latents, TrainConfig(steps=1))
    trainer.train(progress=False)
    trainer.export(tmp_path / "latent.safetensors")
    model, _ = load_score_model(tmp_path / "latent.safetensors")
    assert isinstance(model, LatentModel) and model.image_shape == (1, 8, 8)
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("ae.safetensors", "latent.safetensors"):
        (tmp_path / name).rename(moved / name)
    assert isinstance(load_score_model(moved / "latent.safetensors")[0], LatentModel)
    tensors = load_file(moved / "ae.safetensors")
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] += 1.0
    save_file(tensors, moved / "ae.safetensors", metadata=_metadata(moved / "ae.safetensors"))
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        load_score_model(moved / "latent.safetensors")
    (moved / "ae.safetensors").unlink()
    with pytest.raises(CheckpointError, match="put it beside the checkpoint"):
        load_score_model(moved / "latent.safetensors")


def _metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_digits32_is_the_8x8_set_upsampled_and_maps_back_exactly():
    small, large = digits("test"), digits32("test")
    assert large.x.shape == (len(small.x), 1, 32, 32)
    assert (large.scale, large.shift) == (small.scale, small.shift)
    torch.testing.assert_close(digits32_to_8(large.x), small.x, atol=1e-5, rtol=0)
    assert float(large.x.min()) >= -1.0 and float(large.x.max()) <= 1.0


def test_the_command_line_trains_an_autoencoder_then_a_latent_model_and_samples_images(tmp_path):
    images = digits("train").x[:200].numpy()
    np.save(tmp_path / "small.npy", images)
    r = run_in(tmp_path, "train-autoencoder", "--data", "small.npy", "--factor", "2",
               "--channels", "2", "--width", "4", "--steps", "6", "--batch-size", "16",
               "--out", "ae.safetensors")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "reconstruction MSE" in r.output and "latent scale" in r.output
    r = run_in(tmp_path, "train-autoencoder", "--resume", "ae.safetensors", "--factor", "4")
    assert r.exit_code == 2 and "trained with factor 2, not 4" in r.output
    r = run_in(tmp_path, "train-autoencoder", "--resume", "ae.safetensors", "--steps", "8")
    assert r.exit_code == 0 and "resumed from ae.safetensors at step 6" in r.output
    r = run_in(tmp_path, "train-autoencoder", "--data", "moons", "--steps", "2")
    assert r.exit_code == 2 and "needs images (C, H, W)" in r.output
    r = run_in(tmp_path, "train", "--latent", "ae.safetensors", "--data", "small.npy",
               "--steps", "3", "--batch-size", "16", "--out", "latent.safetensors")  # fmt: skip
    assert r.exit_code == 0, r.output
    r = run_in(tmp_path, "train", "--latent", "ae.safetensors", "--data", "moons")
    assert r.exit_code == 2 and "encodes images (1, H, W)" in r.output
    for out in ("s.png", "s.npz"):
        r = run_in(tmp_path, "sample", "--model", "latent.safetensors", "-n", "4", "--steps",
                   "3", "--out", out)  # fmt: skip
        assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "s.npz")["samples"].shape == (4, 1, 8, 8)  # decoded images
    r = run_in(tmp_path, "likelihood", "--model", "latent.safetensors", "--data", "small.npy",
               "-n", "4", "--solver", "heun", "--steps", "3")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "In latent space" in r.output
    r = run_in(tmp_path, "tune", "--model", "latent.safetensors", "--solver", "dpmpp_2m", "--nfe",
               "3", "--samples", "4", "--max-evaluations", "6", "--out", "g.json")  # fmt: skip
    assert r.exit_code == 0, r.output
    r = run_in(tmp_path, "sample", "--model", "latent.safetensors", "--grid", "g.json", "-n",
               "4", "--out", "g.npz")  # fmt: skip
    assert r.exit_code == 0 and np.load(tmp_path / "g.npz")["samples"].shape == (4, 1, 8, 8)
    r = run_in(tmp_path, "restore", "--model", "latent.safetensors", "--input", "s.npz",
               "--task", "inpaint", "--method", "dps", "--steps", "4", "-n", "2", "--out",
               "r.png")  # fmt: skip
    assert r.exit_code == 0, r.output
    r = run_in(tmp_path, "restore", "--model", "latent.safetensors", "--input", "s.npz",
               "--task", "inpaint", "--method", "ddrm", "--steps", "4", "-n", "2", "--out",
               "d.npz")  # fmt: skip
    assert r.exit_code == 0 and np.load(tmp_path / "d.npz")["samples"].shape == (2, 1, 8, 8)
    r = run_in(tmp_path, "restore", "--model", "latent.safetensors", "--input", "s.npz",
               "--task", "deblur", "--method", "ddrm", "--steps", "4", "-n", "2")  # fmt: skip
    assert r.exit_code == 2 and "dps restores any measurement" in r.output
    r = run_in(tmp_path, "info", "latent.safetensors")
    assert r.exit_code == 0 and "ae.safetensors" in r.output
    r = run_in(tmp_path, "info", "ae.safetensors")
    assert r.exit_code == 0 and "reconstruction MSE" in r.output


def test_a_dataset_of_latents_keeps_the_image_units():
    data = Dataset(torch.randn(10, 1, 4, 4), None, "x", scale=3.0, shift=1.0)
    ae = Autoencoder(1, 2, 1, 4).eval()
    latents = encode_dataset(data, ae, {"autoencoder": "a", "autoencoder_path": "/a",
                                        "autoencoder_sha256": "0"})  # fmt: skip
    assert (latents.scale, latents.shift) == (3.0, 1.0)
    assert latents.config()["event_shape"] == [1, 2, 2]


def test_posterior_sample_encoding_draws_a_fresh_latent_of_each_image_every_step():
    """encode="sample" keeps each image's posterior spread; the trainer then trains on
    z = mean + spread * noise, a new draw each step (the noise from its own generator)."""
    torch.manual_seed(0)
    ae = Autoencoder(1, 2, 2, 4, latent_scale=2.0).eval()
    images = digits("train")
    latents = encode_dataset(images, ae, {"autoencoder": "a"}, "sample")
    mean, logvar = ae.posterior(images.x[:3])
    torch.testing.assert_close(latents.x[:3], 2.0 * mean)
    torch.testing.assert_close(latents.spread[:3], 2.0 * (0.5 * logvar).exp())
    assert encode_dataset(images, ae, {"autoencoder": "a"}).spread is None
    with pytest.raises(sd.ArgumentError, match="mean, sample"):
        encode_dataset(images, ae, {}, "median")

    seen = []

    class Recording(sd.training.objectives.DenoisingObjective):
        def loss(self, model, x0, draws, cond):
            seen.append(x0.detach().clone())
            return super().loss(model, x0, draws, cond)

    one = Dataset(torch.full((1, 1, 4, 4), 0.5), spread=torch.full((1, 1, 4, 4), 0.2))
    net = UNet(1, channels=8, channel_mult=(1,), num_res_blocks=1, image_size=4)
    model = sd.ScoreModel(net, sd.VPSDE(), "edm", 1.0)
    config = TrainConfig(steps=40, batch_size=64, lr=1e-4)
    trainer = Trainer(model, one, config, objective=Recording(DenoisingScoreMatching(model.sde)))
    trainer.train(progress=False)
    drawn = torch.stack(seen)
    assert float(drawn.mean()) == pytest.approx(0.5, abs=0.005)
    assert float(drawn.std()) == pytest.approx(0.2, rel=0.02)
    assert not torch.equal(drawn[0], drawn[1])


@torch.no_grad()
def test_sdedit_on_a_latent_model_encodes_edits_in_latent_space_and_decodes():
    model, sde = _exact_latent_model()
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    res = sd.sdedit(model, sde, x, 0.5, "heun", 10, seed=1)
    inner = sd.sdedit(model.model, sde, x / 2, 0.5, "heun", 10, seed=1)  # the latent edit
    torch.testing.assert_close(res.latent, inner.x)
    torch.testing.assert_close(res.x, 2 * inner.x)
    assert torch.equal(sd.sdedit(model, sde, x, 0.0).x, x)


@torch.no_grad()
@pytest.mark.parametrize("name", [info.name for info in sd.list_solvers()])
def test_every_solver_samples_a_latent_model_as_its_score_model_then_decodes(name):
    """Every registered solver (the CFG++ ones under guidance): the latents are the inner
    score model's samples from the same seed, bit for bit, and the images their decoding."""
    latent, sde = _exact_latent_model()
    solver, cond = sd.get_solver(name), None
    model, inner = latent, latent.model
    if "guided" in solver.uses:  # CFG++ reads both branches of a guided call
        conditional = sd.FunctionModel(lambda x, t, c: latent(x, t), "score")
        wrapped = LatentModel(conditional, latent.autoencoder, (1, 4, 4), (1, 4, 4))
        model = sd.ClassifierFreeGuidance(wrapped, 1.5, null=0)
        inner = sd.ClassifierFreeGuidance(conditional, 1.5, null=0)
        cond = torch.ones(64, dtype=torch.long)
    res = sd.sample(model, sde, (64, 1, 4, 4), solver, 8, seed=0, cond=cond)
    plain = sd.sample(inner, sde, (64, 1, 4, 4), solver, 8, seed=0, cond=cond)
    assert torch.equal(res.latent, plain.x) and res.nfe == plain.nfe
    torch.testing.assert_close(res.x, 2 * plain.x)
