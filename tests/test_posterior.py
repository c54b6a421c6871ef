"""Measurement operators and the exact posterior of a Gaussian mixture under them."""

import math

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.measurements import (
    Blur,
    Colorize,
    Downsample,
    Identity,
    Inpaint,
    box_mask,
    gaussian_kernel,
    half_mask,
    random_mask,
)

EVENT = (3, 4, 4)
OPERATORS = {
    "identity": lambda: Identity(EVENT),
    "half": lambda: Inpaint(half_mask(EVENT)),
    "box": lambda: Inpaint(box_mask(EVENT, 1, 1, 2, 2)),
    "random": lambda: Inpaint(random_mask(EVENT, 0.5, seed=3)),
    "colorize": lambda: Colorize(EVENT),
    "downsample": lambda: Downsample(EVENT, 2),
    "blur": lambda: Blur(EVENT, gaussian_kernel(3, 0.8)),
}


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_operators_are_linear_with_their_adjoint_and_svd(name):
    op = OPERATORS[name]()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, *EVENT, generator=g, dtype=torch.float64)
    y = torch.randn(5, op.forward(x).shape[1], generator=g, dtype=torch.float64)
    assert torch.allclose((op.forward(x) * y).sum(), (x * op.adjoint(y)).sum())  # <Ax,y>=<x,Aᵀy>
    mat = op.matrix()
    assert torch.allclose(op.forward(x), x.flatten(1) @ mat.T)
    u, s, v = op.svd()
    assert torch.allclose(u @ torch.diag(s) @ v.T, mat, atol=1e-10)
    assert torch.allclose(v.T @ v, torch.eye(len(s), dtype=torch.float64), atol=1e-10)
    half = op.forward(x.float())  # the dtype follows the input
    assert half.dtype == torch.float32 and torch.allclose(half.double(), op.forward(x), atol=1e-5)


def test_measure_adds_seeded_noise_and_refuses_bad_levels():
    op = Colorize(EVENT)
    x = torch.randn(4, *EVENT)
    a = op.measure(x, 0.1, torch.Generator().manual_seed(1))
    b = op.measure(x, 0.1, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, op.forward(x))
    for bad in (-0.1, math.nan, math.inf, "0.1", None):
        with pytest.raises(sd.ArgumentError, match="sigma_y"):
            op.measure(x, bad)
    with pytest.raises(sd.ArgumentError, match=r"samples of shape \(B, 3, 4, 4\)"):
        op.measure(torch.randn(4, 1, 4, 4))
    with pytest.raises(sd.ArgumentError, match="does not divide"):
        Downsample(EVENT, 3)
    with pytest.raises(sd.ArgumentError, match="observes nothing"):
        Inpaint(torch.zeros(EVENT, dtype=torch.bool))


def brute_force(gmm, a, y, sigma_y, half_width=9.0, n=701):
    """Posterior mean and covariance of a 2-D mixture by Bayes' rule on a grid."""
    g = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    pts = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    log_prior = gmm.log_prob(pts)
    out = []
    for row in y:
        log_lik = -0.5 * ((pts @ a.T - row) ** 2).sum(1) / sigma_y**2
        w = torch.softmax(log_prior + log_lik, 0)
        mean = w @ pts
        out.append((mean, (pts - mean).T @ ((pts - mean) * w[:, None])))
    return out


@pytest.mark.parametrize(
    "a, sigma_y",
    [([[1.0, 0.5]], 0.3), ([[1.0, 0.0]], 0.2), ([[0.3, -1.0], [1.0, 1.0]], 1.5)],
)
def test_the_posterior_is_bayes_rule(a, sigma_y):
    gmm = sd.eight_gaussians()
    a = torch.tensor(a, dtype=torch.float64)
    y = torch.tensor([[2.0] * len(a), [-3.0] * len(a), [0.0] * len(a)], dtype=torch.float64)
    post = gmm.posterior(a, y, sigma_y)
    for b, (mean, cov) in enumerate(brute_force(gmm, a, y, sigma_y)):
        assert torch.allclose(post.mean()[b], mean, atol=1e-6)
        assert torch.allclose(post.covariance()[b], cov, atol=1e-6)
    assert torch.allclose(post.weights.sum(1), torch.ones(3, dtype=torch.float64))


def test_noiseless_inpainting_keeps_the_observed_entries():
    gmm = sd.high_dim_mixture(dim=48, num_components=6)
    op = Inpaint(half_mask(EVENT))
    x = gmm.sample(3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = op.forward(x.reshape(3, *EVENT))
    post = gmm.posterior(op, y, 0.0)
    assert torch.allclose(op.forward(post.mean().reshape(3, *EVENT)), y, atol=1e-8)
    draws = post.sample(4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(draws[..., op.observed], y[:, None, :].expand(3, 4, -1), atol=1e-6)


def test_bad_posterior_requests_are_clean_errors():
    gmm = sd.eight_gaussians()
    with pytest.raises(sd.ArgumentError, match="acts on 3 numbers"):
        gmm.posterior(torch.ones(1, 3), torch.zeros(2, 1))
    with pytest.raises(sd.ArgumentError, match=r"shape \(B, 1\)"):
        gmm.posterior(torch.ones(1, 2), torch.zeros(2, 2))
    with pytest.raises(sd.ArgumentError, match="singular"):
        gmm.posterior(torch.tensor([[1.0, 0.0], [2.0, 0.0]]), torch.zeros(2, 2), 0.0)
    with pytest.raises(sd.ArgumentError, match="sigma_y"):
        gmm.posterior(torch.ones(1, 2), torch.zeros(2, 1), -1.0)
    post = gmm.posterior(torch.ones(1, 2), torch.zeros(2, 1), 0.5)
    with pytest.raises(sd.ArgumentError, match="one row per measurement"):
        post.score(sd.EDMSDE(), torch.zeros(3, 2), 1.0)


def test_the_posterior_score_is_the_gradient_of_its_log_density():
    gmm = sd.high_dim_mixture(dim=48, num_components=6)
    op = Downsample(EVENT, 2)
    x0 = gmm.sample(4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    post = gmm.posterior(op, op.measure(x0.reshape(4, *EVENT), 0.2), 0.2)
    sde = sd.VPSDE()
    x = torch.randn(4, 48, dtype=torch.float64, requires_grad=True)
    for t in (0.05, 0.5):
        (grad,) = torch.autograd.grad(post.marginal_log_prob(sde, x, t).sum(), x)
        assert torch.allclose(post.score(sde, x.detach(), t), grad, atol=1e-8)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["half", "colorize", "downsample", "blur", "random"])
def test_sampling_the_exact_posterior_score_reproduces_its_mean_and_covariance(name):
    """heun, 200 Karras steps to t = 0 on the exact posterior score from its exact law at
    t = T: the samples' mean and covariance lie within 5 standard errors of the
    posterior's (one measurement, 2000 samples; standard errors from the posterior's own
    moments).  (Starting from the prior N(0, σ_max²) instead shifts the result by about
    √P·m/σ_max, the prior's own approximation error: 0.03 here.)"""
    op, n, sigma_y = OPERATORS[name](), 2000, 0.1
    gmm = sd.high_dim_mixture(dim=48, num_components=6, seed=1)
    truth = gmm.sample(1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y = op.measure(truth.reshape(1, *EVENT), sigma_y, torch.Generator().manual_seed(6))
    post = gmm.posterior(op, y.expand(n, -1), sigma_y)
    sde = sd.EDMSDE()
    g = torch.Generator().manual_seed(7)
    x_0 = post.sample(1, generator=g, dtype=torch.float64)[:, 0]
    x_T = x_0 + sde.sigma(sde.T) * torch.randn(n, 48, generator=g, dtype=torch.float64)
    grid = sd.timesteps(sde, 200, "karras", to_zero=True)
    x = sd.solve(post.score_fn(sde), sde, x_T, grid, "heun").x
    mean, cov = post.mean()[0], post.covariance()[0]
    se_mean = (torch.diagonal(cov) / n).sqrt()
    assert ((x.mean(0) - mean).abs() <= 5 * se_mean).all(), name
    many = gmm.posterior(op, y, sigma_y).sample(20_000, generator=g, dtype=torch.float64)[0]
    centred = many - mean
    se_cov = ((centred[:, :, None] * centred[:, None, :]).var(0) / n).sqrt()
    assert ((torch.cov(x.T) - cov).abs() <= 5 * se_cov + 1e-12).all(), name


def test_mixture_and_posterior_scores_take_an_image_view_of_the_vector():
    eye = torch.eye(48, dtype=torch.float64)
    prior = sd.GaussianMixture(
        torch.randn(3, 48, dtype=torch.float64), eye.expand(3, 48, 48), [1, 2, 3]
    )
    sde, t = sd.EDMSDE(), torch.full((5,), 0.7, dtype=torch.float64)
    x = torch.randn(5, *EVENT, dtype=torch.float64)
    flat = prior.score_fn(sde)(x.flatten(1), t)
    torch.testing.assert_close(prior.score_fn(sde)(x, t), flat.view_as(x))
    op = OPERATORS["half"]()
    post = prior.posterior(op, op.measure(x), 0.1)
    torch.testing.assert_close(
        post.score_fn(sde)(x, t), post.score(sde, x.flatten(1), t).view_as(x)
    )
    with pytest.raises(sd.ArgumentError):
        prior.score_fn(sde)(x.flatten()[:48], t[:1])  # one sample without its batch axis
