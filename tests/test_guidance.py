"""Guidance wrappers, condition dropout and conditional networks, against exact mixtures."""

import math
from itertools import pairwise

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.networks import ResidualMLP, UNet
from sde_diffusion.parametrization import ScoreModel
from sde_diffusion.training import TrainConfig, Trainer
from sde_diffusion.training.data import load_data


def two_classes() -> sd.GaussianMixture:
    """Two overlapping isotropic classes on the x axis, unequal weights."""
    means = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    return sd.GaussianMixture(means, 0.5, [0.4, 0.6])


@pytest.mark.parametrize("solver", ["heun", "euler_maruyama"])
def test_scale_one_samples_the_class_law(solver):
    """w = 1 (Ho & Salimans' w' = 0) is the exact conditional model: class 0's law."""
    gmm, sde = two_classes(), sd.VPSDE()
    guided = sd.ClassifierFreeGuidance(gmm.score_fn(sde), 1.0, null=2)
    n = 4000
    res = sd.sample(
        guided,
        sde,
        (n, 2),
        solver,
        steps=200,
        cond=torch.zeros(n, dtype=torch.long),
        dtype=torch.float64,
    )
    se_mean, se_var = math.sqrt(0.5 / n), 0.5 * math.sqrt(2 / n)
    allowance = 0.03  # discretisation at 200 steps
    assert (res.x.mean(0) - gmm.means[0]).abs().max() < 5 * se_mean + allowance
    assert (torch.cov(res.x.T) - 0.5 * torch.eye(2)).abs().max() < 5 * se_var + allowance


def test_guidance_moves_samples_away_from_the_other_class():
    gmm, sde = two_classes(), sd.VPSDE()
    n = 2000
    labels = torch.zeros(n, dtype=torch.long)
    means = {}
    for scale in (0.0, 1.0, 3.0):
        guided = sd.ClassifierFreeGuidance(gmm.score_fn(sde), scale, null=2)
        res = sd.sample(guided, sde, (n, 2), "heun", steps=50, cond=labels, dtype=torch.float64)
        means[scale] = float(res.x[:, 0].mean())
    # w = 0: the unconditional law (mean 0.2); w = 1: class 0 (mean -1); w = 3: beyond it
    assert means[0.0] == pytest.approx(0.2, abs=0.1)
    assert means[1.0] == pytest.approx(-1.0, abs=0.1)
    assert means[3.0] < means[1.0] - 0.2


def test_guidance_is_one_batched_call_on_the_denoiser_line():
    """D(∅) + w (D(c) − D(∅)) from one network call on 2B samples."""
    gmm, sde = two_classes(), sd.EDMSDE()
    exact, batches = gmm.score_fn(sde), []

    def model(x, t, cond):
        batches.append(len(x))
        return exact(x, t, cond)

    guided = sd.ClassifierFreeGuidance(sd.FunctionModel(model, "score"), 2.5, null=2)
    x, t = torch.randn(5, 2, dtype=torch.float64), torch.full((5,), 1.3, dtype=torch.float64)
    c = torch.tensor([0, 1, 0, 1, 1])
    expected = exact(x, t, torch.full((5,), 2)) + 2.5 * (exact(x, t, c) - exact(x, t))
    torch.testing.assert_close(guided(x, t, c), expected)
    assert batches == [10]


def test_results_count_network_passes():
    gmm, sde = two_classes(), sd.EDMSDE()
    labels = torch.zeros(8, dtype=torch.long)
    guided = sd.ClassifierFreeGuidance(gmm.score_fn(sde), 2.0, null=2)
    res = sd.sample(guided, sde, (8, 2), "heun", steps=10, cond=labels)
    assert res.nfe == 20 and res.network_passes == 2 * res.nfe
    lo, hi = 0.5, 5.0
    windowed = sd.ClassifierFreeGuidance(gmm.score_fn(sde), 2.0, null=2, interval=(lo, hi), sde=sde)
    res = sd.sample(windowed, sde, (8, 2), "heun", steps=10, cond=labels)
    grid = res.ts.tolist()  # heun evaluates at every grid time but the last twice over
    times = [t for a, b in pairwise(grid) for t in (a, b)]
    inside = sum(lo <= t <= hi for t in times)
    assert res.nfe == 20 and res.network_passes == res.nfe + inside
    assert 0 < inside < res.nfe


@pytest.mark.parametrize("solver", ["dpm_adaptive", "rk45"])
def test_a_guidance_interval_is_judged_per_sample_so_adaptive_solvers_stay_batch_free(solver):
    """Adaptive solvers give every sample its own time: each sample is guided by its own
    noise level, so a batch of 8 gives each sample's solo result bit for bit."""
    gmm, sde = two_classes(), sd.EDMSDE()
    guided = sd.ClassifierFreeGuidance(gmm.score_fn(sde), 3.0, null=2, interval=(0.3, 4.0), sde=sde)
    labels = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0])
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ts = sd.timesteps(sde, 1)
    batch = sd.solve(guided, sde, x_T, ts, solver, cond=labels, rtol=1e-3, atol=1e-3).x
    solo = [
        sd.solve(guided, sde, x_T[i : i + 1], ts, solver, cond=labels[i : i + 1], rtol=1e-3,
                 atol=1e-3).x
        for i in range(8)
    ]  # fmt: skip
    assert torch.equal(batch, torch.cat(solo))
    unguided = sd.solve(gmm.score_fn(sde), sde, x_T, ts, solver, cond=labels, rtol=1e-3, atol=1e-3)
    assert (batch - unguided.x).abs().max() > 0.1  # the interval did guide


def test_classifier_guidance_with_the_exact_posterior_is_the_conditional_score():
    """∇ log p(x) + ∇ log p(c | x) = ∇ log p(x | c) (Bayes), with the exact class posterior."""
    gmm, sde = two_classes(), sd.VPSDE()

    def log_posterior(x, t, c):
        return (
            gmm.marginal_log_prob(sde, x, t, c)
            + gmm.weights.log()[c]
            - gmm.marginal_log_prob(sde, x, t)
        )

    guided = sd.ClassifierGuidance(gmm.score_fn(sde), log_posterior, 1.0, sde)
    x = torch.randn(6, 2, dtype=torch.float64)
    t = torch.full((6,), 0.3, dtype=torch.float64)
    c = torch.tensor([0, 1, 1, 0, 0, 1])
    torch.testing.assert_close(guided(x, t, c), gmm.score(sde, x, t, c))
    with torch.inference_mode():
        res = sd.sample(guided, sde, (6, 2), "euler", steps=3, cond=c)
    assert res.network_passes == res.nfe == 3


def test_guidance_errors():
    gmm, sde = two_classes(), sd.VPSDE()
    guided = sd.ClassifierFreeGuidance(gmm.score_fn(sde), 2.0, null=2)
    with pytest.raises(ValueError, match="needs cond"):
        sd.sample(guided, sde, (4, 2), "euler", steps=2)
    with pytest.raises(ValueError, match="needs the sde"):
        sd.ClassifierFreeGuidance(gmm.score_fn(sde), 2.0, null=2, interval=(0.1, 1.0))
    for bad in (float("nan"), float("inf"), 1e300, -2000.0):  # 1e300 overflowed float32
        with pytest.raises(ValueError, match=r"must be a number in \[-1000, 1000\]"):
            sd.ClassifierFreeGuidance(gmm.score_fn(sde), bad, null=2)
    with pytest.raises(ValueError, match="must be a number, got '2'"):
        sd.ClassifierFreeGuidance(gmm.score_fn(sde), "2", null=2)
    with pytest.raises(ValueError, match="0 <= lo < hi"):
        sd.ClassifierFreeGuidance(gmm.score_fn(sde), 2.0, null=2, interval=(1.0, 0.1), sde=sde)


def test_networks_take_labels_and_vectors():
    mlp = ResidualMLP(2, width=16, depth=1, emb_dim=8, num_classes=3, cond_dim=4)
    x, c_noise = torch.randn(5, 2), torch.randn(5)
    labels, vector = torch.tensor([0, 1, 2, 3, 0]), torch.randn(5, 4)
    assert mlp(x, c_noise, labels).shape == (5, 2)
    assert mlp(x, c_noise, {"labels": labels, "vector": vector}).shape == (5, 2)
    assert mlp(x, c_noise).shape == (5, 2)  # the null label
    with pytest.raises(ValueError, match="takes no vector condition"):
        ResidualMLP(2, num_classes=3)(x, c_noise, vector)
    unet = UNet(channels=8, channel_mult=(1,), num_res_blocks=1, cond_dim=3)
    assert unet(torch.randn(2, 1, 8, 8), torch.randn(2), torch.randn(2, 3)).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("drop", [0.0, 0.2])
def test_condition_dropout_trains_the_null_label(drop):
    """Without dropout the null row never sees a gradient; with it, it learns."""
    data = load_data("8gaussians", 2000)
    assert data.num_classes == 8 and data.config()["class_names"][3] == "3"
    torch.manual_seed(0)
    net = ResidualMLP(2, width=32, depth=1, emb_dim=16, num_classes=8)
    model = ScoreModel(net, sd.VPSDE(), "edm")
    before = net.cond.label.weight[8].clone()
    config = TrainConfig(steps=20, batch_size=64, warmup=1, cond_drop_prob=drop)
    Trainer(model, data, config).train(progress=False)
    changed = not torch.equal(net.cond.label.weight[8], before)
    assert changed == (drop > 0)


@pytest.mark.parametrize("width", [8, 16, 64])
def test_unet_output_depends_on_noise_level_and_label(width):
    """The embedding must survive the normalisation at every width."""
    torch.manual_seed(0)
    unet = UNet(channels=width, channel_mult=(1, 2), num_res_blocks=1, num_classes=3)
    for p in unet.parameters():  # the output layer starts at zero: give it a real output
        torch.nn.init.normal_(p, std=0.2)
    x, c = torch.randn(2, 1, 8, 8), torch.zeros(2)
    with torch.no_grad():
        base = unet(x, c, torch.tensor([0, 0]))
        assert (unet(x, c + 1, torch.tensor([0, 0])) - base).abs().max() > 1e-3
        assert (unet(x, c, torch.tensor([1, 1])) - base).abs().max() > 1e-3


# The guidance variants -----------------------------------------------------------------------


class Affine:
    """A noise predictor per class, affine in x: exact algebra for the variants."""

    prediction = "eps"

    def __init__(self, slope, shift):
        self.slope, self.shift = slope, shift

    def __call__(self, x, t, cond):
        k = sd.append_dims(cond.to(x), x.ndim)
        return x * (self.slope + 0.1 * k) + self.shift * (k - 1)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 4, 4, generator=g, dtype=torch.float64)
    return x, torch.full((4,), 0.4, dtype=torch.float64), torch.tensor([0, 1, 0, 1])


def test_cfg_rescale_is_diffusers_guidance_rescale():
    pipeline = pytest.importorskip("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion")
    sde, model = sd.VPSDE(), Affine(0.5, 0.3)
    x, t, c = batch()
    out = sd.ClassifierFreeGuidance(model, 6.0, 2, sde=sde, rescale=0.7)(x, t, c)
    e_c, e_u = model(x, t, c), model(x, t, torch.full_like(c, 2))
    expected = pipeline.rescale_noise_cfg(e_u + 6.0 * (e_c - e_u), e_c, guidance_rescale=0.7)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    plain = sd.ClassifierFreeGuidance(model, 6.0, 2)(x, t, c)
    full = sd.ClassifierFreeGuidance(model, 6.0, 2, sde=sde, rescale=1.0)(x, t, c)
    std = full.flatten(1).std(1)  # φ = 1: the guided prediction has the conditional's spread
    torch.testing.assert_close(std, e_c.flatten(1).std(1))
    assert not torch.allclose(plain, full)


def test_apg_projects_the_update_away_from_the_conditional_denoiser():
    sde, model = sd.VPSDE(), Affine(0.5, 0.3)
    x, t, c = batch(1)

    def x0(eps):
        return sd.parametrization.convert(eps, x, t, sde, "eps", "x0")

    d_c, d_u = x0(model(x, t, c)), x0(model(x, t, torch.full_like(c, 2)))
    plain = sd.ClassifierFreeGuidance(model, 4.0, 2)(x, t, c)
    whole = sd.ClassifierFreeGuidance(model, 4.0, 2, sde=sde, apg=sd.APG(eta=1.0))(x, t, c)
    torch.testing.assert_close(whole, plain)  # η = 1, no clipping: CFG itself
    apg = sd.ClassifierFreeGuidance(model, 4.0, 2, sde=sde, apg=sd.APG(eta=0.0))(x, t, c)
    change = x0(apg) - d_c  # (w − 1) Δ_⊥: orthogonal to D_c per sample
    norms = change.flatten(1).norm(dim=1) * d_c.flatten(1).norm(dim=1)
    cosine = (change * d_c).flatten(1).sum(1) / norms
    assert cosine.abs().max() < 1e-10
    clipped = sd.ClassifierFreeGuidance(
        model, 4.0, 2, sde=sde, apg=sd.APG(eta=1.0, norm_threshold=0.5)
    )(x, t, c)
    update = (x0(clipped) - d_c) / 3.0
    assert update.flatten(1).norm(dim=1).max() <= 0.5 + 1e-9
    assert (d_c - d_u).flatten(1).norm(dim=1).min() > 0.5  # so the clip acted


def test_apg_momentum_carries_within_a_solve_and_restarts_with_the_next():
    sde, model = sd.VPSDE(), Affine(0.5, 0.3)
    x, _, c = batch(2)
    guided = sd.ClassifierFreeGuidance(model, 3.0, 2, sde=sde, apg=sd.APG(eta=1.0, momentum=-0.5))
    plain = sd.ClassifierFreeGuidance(model, 3.0, 2)
    t0, t1 = torch.full((4,), 0.6, dtype=torch.float64), torch.full((4,), 0.3, dtype=torch.float64)
    torch.testing.assert_close(guided(x, t0, c), plain(x, t0, c))  # nothing to carry yet
    assert not torch.allclose(guided(x, t1, c), plain(x, t1, c))  # − 0.5 × the last update
    torch.testing.assert_close(guided(x, t0, c), plain(x, t0, c))  # t went up: a new solve


def test_cfg_zero_star_scales_the_unconditional_branch():
    sde = sd.VPSDE()

    class Proportional:  # ε_∅ = 2 ε_c: s* = 1/2 and the guided prediction is ε_c at any w
        prediction = "eps"

        def __call__(self, x, t, cond):
            return torch.where(sd.append_dims(cond == 2, x.ndim), 2 * x, x)

    x, t, c = batch(3)
    out = sd.ClassifierFreeGuidance(Proportional(), 7.5, 2, sde=sde, zero_star=True)(x, t, c)
    torch.testing.assert_close(out, x)
    plain = sd.ClassifierFreeGuidance(Proportional(), 7.5, 2)(x, t, c)
    torch.testing.assert_close(plain, 2 * x + 7.5 * (x - 2 * x))


def test_autoguidance_guides_with_a_weaker_model_of_the_same_condition():
    strong, weak = Affine(0.5, 0.3), Affine(0.8, 0.1)
    x, t, c = batch(4)
    guided = sd.ClassifierFreeGuidance(strong, 2.5, None, guide=weak)
    out = guided(x, t, c)
    torch.testing.assert_close(out, weak(x, t, c) + 2.5 * (strong(x, t, c) - weak(x, t, c)))
    assert guided.passes_per_call == 2
    same = sd.ClassifierFreeGuidance(strong, 2.5, None, guide=strong)(x, t, c)
    torch.testing.assert_close(same, strong(x, t, c))
    with pytest.raises(sd.ArgumentError, match="one parametrisation"):
        sd.ClassifierFreeGuidance(strong, 2.5, None, guide=sd.as_model(lambda x, t: -x))


def test_variants_compose_with_the_interval_and_count_passes():
    gmm, sde = two_classes(), sd.VPSDE()
    model = sd.ClassifierFreeGuidance(
        gmm.score_fn(sde), 3.0, 2, sde=sde, interval=(0.5, 2.0), rescale=0.5, zero_star=True
    )
    n = 64
    res = sd.sample(model, sde, (n, 2), "dpmpp_2m", steps=10, cond=torch.zeros(n, dtype=torch.long))
    grid = sd.timesteps(sde, 10, "karras").tolist()
    inside = [0.5 <= math.exp(-sde.log_snr(t).item()) <= 2.0 for t in grid[:-1]]
    assert res.nfe == 10 and res.network_passes == 10 + sum(inside)
    assert torch.isfinite(res.x).all()


def test_bad_variant_options_are_one_sentence():
    model = Affine(0.5, 0.3)
    with pytest.raises(sd.ArgumentError, match=r"rescale must lie in \[0, 1\]"):
        sd.ClassifierFreeGuidance(model, 2.0, 2, sde=sd.VPSDE(), rescale=1.5)
    with pytest.raises(sd.ArgumentError, match="need the sde"):
        sd.ClassifierFreeGuidance(model, 2.0, 2, zero_star=True)
    with pytest.raises(sd.ArgumentError, match="momentum must lie"):
        sd.APG(momentum=-1.0)


def test_cfg_pp_reads_the_unconditional_branch_even_at_scale_one():
    gmm, sde = two_classes(), sd.VPSDE()
    guided = sd.ClassifierFreeGuidance(gmm.score_fn(sde), 1.0, null=2)
    n = 16
    cond = torch.zeros(n, dtype=torch.long)
    pp = sd.sample(guided, sde, (n, 2), "euler_cfg_pp", steps=8, cond=cond, dtype=torch.float64)
    assert pp.network_passes == 2 * pp.nfe  # CFG++ at λ = 1 needs ε_∅: not plain Euler
    ddim = sd.sample(gmm.score_fn(sde), sde, (n, 2), "euler_cfg_pp", steps=8, cond=cond,
                     dtype=torch.float64)  # fmt: skip
    assert ddim.network_passes == ddim.nfe and not torch.allclose(pp.x, ddim.x)
