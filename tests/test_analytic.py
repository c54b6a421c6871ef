"""GaussianMixture: exact score, log-density, denoiser and sampling."""

import math

import pytest
import torch

import sde_diffusion as sd


def small_mixture():
    means = torch.tensor([[-2.0, 0.5], [1.5, -1.0], [0.0, 2.5]], dtype=torch.float64)
    covs = torch.tensor(
        [[[0.5, 0.2], [0.2, 0.3]], [[0.2, -0.1], [-0.1, 0.4]], [[0.1, 0.0], [0.0, 0.6]]],
        dtype=torch.float64,
    )
    return sd.GaussianMixture(means, covs, [0.2, 0.5, 0.3])


MIXTURES = {
    "small": small_mixture,
    "ring": sd.eight_gaussians,
    "highdim": lambda: sd.high_dim_mixture(dim=16, num_components=4),
}


@pytest.mark.parametrize("mixture", list(MIXTURES))
@pytest.mark.parametrize("frac", [0.0, 0.01, 0.3, 1.0])
def test_score_equals_autograd_of_log_prob(any_sde, mixture, frac):
    gmm = MIXTURES[mixture]()
    t = any_sde.t_min + frac * (any_sde.T - any_sde.t_min)
    std = math.sqrt(float(any_sde.alpha(t)) ** 2 * 4 + float(any_sde.sigma(t)) ** 2)
    x = std * torch.randn(
        64, gmm.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(gmm.marginal_log_prob(any_sde, x, t).sum(), x)
    score = gmm.score(any_sde, x.detach(), t)
    torch.testing.assert_close(score, grad, rtol=1e-8, atol=1e-8 / std)


def test_per_sample_times_match_scalar_times(any_sde):
    gmm = small_mixture()
    x = torch.randn(5, 2, dtype=torch.float64)
    ts = torch.linspace(any_sde.t_min, any_sde.T, 5, dtype=torch.float64)
    batched = gmm.score(any_sde, x, ts)
    for i, t in enumerate(ts.tolist()):
        torch.testing.assert_close(batched[i], gmm.score(any_sde, x[i : i + 1], t)[0])


def test_log_prob_matches_torch_distributions():
    gmm = small_mixture()
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(gmm.weights),
        torch.distributions.MultivariateNormal(gmm.means, gmm.covs),
    )
    x = torch.randn(100, 2, dtype=torch.float64) * 3
    torch.testing.assert_close(gmm.log_prob(x), mix.log_prob(x), rtol=1e-12, atol=1e-12)


def test_marginal_mixture_matches_marginal_log_prob(any_sde):
    gmm = small_mixture()
    t = 0.2 * any_sde.T
    x = torch.randn(50, 2, dtype=torch.float64)
    torch.testing.assert_close(
        gmm.marginal(any_sde, t).log_prob(x),
        gmm.marginal_log_prob(any_sde, x, t),
        rtol=1e-12,
        atol=1e-12,
    )


def test_denoiser_is_posterior_mean_tweedie():
    """E[x0 | x_t] by Monte Carlo over the joint law matches the exact denoiser."""
    sde, gmm = sd.EDMSDE(), small_mixture()
    g = torch.Generator().manual_seed(0)
    x0 = gmm.sample(400000, generator=g, dtype=torch.float64)
    t = 0.8
    xt = x0 + t * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    # linear regression of x0 on a fine indicator of the x_t cell near a point
    point = torch.tensor([0.0, 0.5], dtype=torch.float64)
    near = (xt - point).norm(dim=1) < 0.05
    mc = x0[near].mean(0)
    exact = gmm.denoise(sde, point[None], t)[0]
    se = x0[near].std(0) / math.sqrt(int(near.sum()))
    assert ((mc - exact).abs() < 4 * se + 0.02).all()


def test_sample_moments():
    gmm = small_mixture()
    x = gmm.sample(200000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(x.mean(0), gmm.mean(), atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), gmm.covariance(), atol=0.03, rtol=0)


def test_float32_follows_input():
    sde, gmm = sd.VPSDE(), sd.high_dim_mixture()
    x = torch.randn(8, 64)
    score = gmm.score_fn(sde)(x, torch.full((8,), 0.5))
    assert score.dtype == torch.float32 and score.shape == x.shape
    ref = gmm.score(sde, x.double(), 0.5)
    torch.testing.assert_close(score.double(), ref, rtol=1e-4, atol=1e-4)


def test_score_stays_finite_far_in_the_tails():
    sde, gmm = sd.EDMSDE(), sd.eight_gaussians()
    x = torch.tensor([[1e3, -1e3], [50.0, 0.0]], dtype=torch.float32)
    assert torch.isfinite(gmm.score(sde, x, sde.t_min)).all()


def test_high_dim_mixture_is_seeded():
    a, b = sd.high_dim_mixture(seed=3), sd.high_dim_mixture(seed=3)
    assert a.dim == 64 and a.num_components == 10
    torch.testing.assert_close(a.covs, b.covs)
    assert not torch.equal(a.means, sd.high_dim_mixture(seed=4).means)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(means=[1.0, 2.0]), "means must have shape"),
        (dict(means=[[0.0, 0.0]], covs=torch.ones(1, 3, 3)), "covs must have shape"),
        (dict(means=[[0.0, 0.0]], covs=[[[1.0, 0.5], [0.0, 1.0]]]), "symmetric"),
        (dict(means=[[0.0, 0.0]], covs=[[[1.0, 2.0], [2.0, 1.0]]]), "positive definite"),
        (dict(means=[[0.0], [1.0]], weights=[1.0, -1.0]), "non-negative"),
    ],
)
def test_bad_mixture_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sd.GaussianMixture(**kwargs)


def test_conditional_score_is_the_score_of_the_chosen_components(any_sde):
    """cond = indices or a mask: exactly the score of the mixture of those components."""
    gmm = small_mixture()
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.linspace(any_sde.t_min, 0.7 * any_sde.T, 6, dtype=torch.float64)
    model = gmm.score_fn(any_sde)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    for k in range(3):
        rows = labels == k
        torch.testing.assert_close(
            model(x, t, labels)[rows], gmm.components([k]).score(any_sde, x[rows], t[rows])
        )
    mask = torch.tensor([[True, False, True]]).expand(6, 3)
    torch.testing.assert_close(model(x, t, mask), gmm.components([0, 2]).score(any_sde, x, t))
    with pytest.raises(ValueError, match="component indices must lie in"):
        model(x, t, torch.full((6,), 4))
    with pytest.raises(ValueError, match="mask of shape"):
        model(x, t, torch.zeros(6, 2))
