"""Networks, parametrisations and denoising score matching."""

import math

import pytest
import torch
from scipy.integrate import quad

import sde_diffusion as sd
from sde_diffusion.networks import ResidualMLP, UNet, build_network
from sde_diffusion.parametrization import PARAMETRIZATIONS, ScoreModel, convert
from sde_diffusion.training.losses import DenoisingScoreMatching


@pytest.mark.parametrize(
    "size, mult", [(8, (1, 2)), (12, (1, 2)), (16, (1, 2, 2)), (32, (1, 2, 2, 2))]
)
@pytest.mark.parametrize("channels", [1, 3])
def test_unet_shapes_and_config_round_trip(size, mult, channels):
    net = UNet(
        in_channels=channels,
        channels=16,
        channel_mult=mult,
        image_size=size,
        num_classes=10,
        attention_below=8,
    )
    x = torch.randn(2, channels, size, size)
    assert net(x, torch.randn(2), torch.tensor([3, 10])).shape == x.shape
    assert net(x, torch.randn(2)).shape == x.shape  # null label when none is given
    assert build_network(net.config).config == net.config


def test_unet_rejects_indivisible_sizes():
    with pytest.raises(ValueError, match="must be divisible by 2"):
        UNet(channels=8, channel_mult=(1, 2))(torch.randn(1, 1, 7, 7), torch.randn(1))


@pytest.mark.parametrize("dim", [1, 2, 64])
def test_mlp_shapes(dim):
    net = ResidualMLP(dim, width=32, depth=2, emb_dim=16, embedding="sinusoidal")
    assert net(torch.randn(5, dim), torch.randn(5)).shape == (5, dim)
    with pytest.raises(ValueError, match=f"expects x of shape \\(B, {dim}\\)"):
        net(torch.randn(5, dim + 1), torch.randn(5))


@pytest.mark.parametrize(
    "source, via", [("eps", "score"), ("x0", "eps"), ("v", "x0"), ("score", "v"), ("v", "eps")]
)
def test_conversions_round_trip(any_sde, source, via):
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(6, 3, generator=g, dtype=torch.float64)
    value = torch.randn(6, 3, generator=g, dtype=torch.float64)
    t = torch.linspace(any_sde.t_min, any_sde.T, 6, dtype=torch.float64)
    there = convert(value, x_t, t, any_sde, source, via)
    torch.testing.assert_close(
        convert(there, x_t, t, any_sde, via, source), value, rtol=1e-10, atol=1e-10
    )


def test_conversions_agree_with_tweedie(any_sde):
    gmm = sd.eight_gaussians()
    t = 0.3 * any_sde.T
    x_t = gmm.marginal(any_sde, t).sample(16, dtype=torch.float64)
    score = gmm.score(any_sde, x_t, t)
    torch.testing.assert_close(
        convert(score, x_t, t, any_sde, "score", "x0"), gmm.denoise(any_sde, x_t, t)
    )


@pytest.mark.parametrize("parametrization", PARAMETRIZATIONS)
def test_score_model_is_consistent(any_sde, parametrization):
    torch.manual_seed(0)
    model = ScoreModel(
        ResidualMLP(2, width=16, depth=1, emb_dim=8), any_sde, parametrization
    ).double()
    for p in model.parameters():  # a non-trivial output
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(4, 2, dtype=torch.float64)
    t = torch.linspace(any_sde.t_min, any_sde.T, 4, dtype=torch.float64)
    with torch.no_grad():
        score, x0 = model.score(x, t), model.denoise(x, t)
    alpha, sigma = any_sde.alpha(t)[:, None], any_sde.sigma(t)[:, None]
    torch.testing.assert_close(x0, (x + sigma**2 * score) / alpha)


def test_bad_parametrization():
    with pytest.raises(ValueError, match="unknown parametrization 'y'"):
        ScoreModel(ResidualMLP(2), sd.VPSDE(), "y")


def test_sigma2_loss_is_the_seeds_one_line():
    """eps-prediction with sigma^2 weighting: mse(noise, model(x_t, t)) per sample."""
    sde = sd.VPSDE()
    model = ScoreModel(ResidualMLP(2, width=16, depth=1, emb_dim=8), sde, "eps").double()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x0 = torch.randn(8, 2, dtype=torch.float64)
    t = torch.rand(8, dtype=torch.float64) * (sde.T - sde.t_min) + sde.t_min
    noise = torch.randn(8, 2, dtype=torch.float64)
    loss = DenoisingScoreMatching(sde, "sigma2").loss_at(model, x0, t, noise)
    x_t = sde.alpha(t)[:, None] * x0 + sde.sigma(t)[:, None] * noise
    predicted_noise = model(x_t, t)
    assert model.prediction == "eps"
    torch.testing.assert_close(loss, ((noise - predicted_noise) ** 2).sum(1))


@pytest.mark.parametrize("make", [sd.VPSDE, sd.VESDE, sd.EDMSDE])
def test_likelihood_weighting_is_an_unbiased_importance_sample(make):
    """With eps_hat = 0 the g^2-weighted loss has mean d * int g^2 / sigma^2 dt."""
    sde = make()

    class Zero(torch.nn.Module):
        def forward(self, x, c):
            return torch.zeros_like(x)

    model = ScoreModel(Zero(), sde, "eps")
    loss = DenoisingScoreMatching(sde, "likelihood")
    values = loss(
        model,
        torch.zeros(200000, 3, dtype=torch.float64),
        generator=torch.Generator().manual_seed(0),
    )
    integral = quad(
        lambda t: float(sde.diffusion(t) ** 2 / sde.sigma(t) ** 2), sde.t_min, sde.T, limit=200
    )[0]
    se = values.std() / math.sqrt(values.numel())
    assert abs(values.mean() - 3 * integral) < 4 * se
    assert loss.normaliser == pytest.approx(integral, rel=1e-3)


def test_edm_weighting_formula():
    sde = sd.VPSDE()
    model = ScoreModel(
        ResidualMLP(2, width=16, depth=1, emb_dim=8), sde, "edm", sigma_data=0.5
    ).double()
    x0 = torch.randn(5, 2, dtype=torch.float64)
    t = torch.tensor([0.01, 0.1, 0.3, 0.6, 0.9], dtype=torch.float64)
    eps = torch.randn(5, 2, dtype=torch.float64)
    loss = DenoisingScoreMatching(sde, "edm").loss_at(model, x0, t, eps)
    x_t = sde.alpha(t)[:, None] * x0 + sde.sigma(t)[:, None] * eps
    nu = sde.sigma(t) / sde.alpha(t)
    weight = (nu**2 + 0.25) / (nu * 0.5) ** 2
    torch.testing.assert_close(loss, weight * ((model.denoise(x_t, t) - x0) ** 2).sum(1))


def test_flow_matching_regresses_onto_the_path_velocity(any_sde):
    """The flow target is alpha' x0 + sigma' eps (derivatives by autograd), for any SDE;
    for rectified flow that is eps - x0, and a velocity network is compared with it."""
    sde = any_sde
    model = ScoreModel(ResidualMLP(2, width=16, depth=1, emb_dim=8), sde, "velocity").double()
    x0, eps = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 6, dtype=torch.float64) * (sde.T - sde.t_min) + sde.t_min
    u = t.clone().requires_grad_(True)
    d_alpha, d_sigma = (  # a constant alpha = 1 has no graph: derivative 0
        torch.autograd.grad(v.sum(), u)[0] if v.requires_grad else torch.zeros_like(t)
        for v in (sde.alpha(u), sde.sigma(u))
    )
    target = d_alpha[:, None] * x0 + d_sigma[:, None] * eps
    x_t = sde.alpha(t)[:, None] * x0 + sde.sigma(t)[:, None] * eps
    loss = DenoisingScoreMatching(sde, "flow").loss_at(model, x0, t, eps)
    assert model.prediction == "velocity"
    torch.testing.assert_close(loss, ((model(x_t, t) - target) ** 2).sum(1))
    if isinstance(sde, sd.RectifiedFlow):
        torch.testing.assert_close(target, eps - x0)


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood", "edm", "flow"])
def test_training_times_lie_in_range(any_sde, weighting):
    t = DenoisingScoreMatching(any_sde, weighting).sample_times(
        5000, generator=torch.Generator().manual_seed(0)
    )
    assert t.min() >= any_sde.t_min and t.max() <= any_sde.T


def test_edm_times_follow_the_log_normal():
    sde = sd.EDMSDE()
    t = DenoisingScoreMatching(sde, "edm").sample_times(
        100000, generator=torch.Generator().manual_seed(0)
    )
    log_nu = t.log()
    inside = (t > sde.t_min) & (t < sde.T)
    assert abs(log_nu[inside].mean() + 1.2) < 0.02 and abs(log_nu.std() - 1.2) < 0.02


def test_unknown_weighting():
    with pytest.raises(ValueError, match="unknown loss weighting 'l1'"):
        DenoisingScoreMatching(sd.VPSDE(), "l1")


def test_unet_moves_dtype_and_trains():
    """A U-Net score model converts to float64 and its loss falls over a few steps."""
    from sde_diffusion.training import TrainConfig, Trainer
    from sde_diffusion.training.data import digits

    torch.manual_seed(0)
    net = UNet(channels=8, channel_mult=(1, 2), num_res_blocks=1, image_size=8, num_classes=10)
    model = ScoreModel(net, sd.VPSDE(), "edm").double().float()
    trainer = Trainer(
        model,
        digits("train"),
        TrainConfig(steps=60, batch_size=32, lr=3e-3, warmup=5, loss_weighting="edm"),
    )
    assert trainer._conditional
    history = trainer.train(progress=False)
    assert sum(h["loss"] for h in history[-10:]) < sum(h["loss"] for h in history[:10])
