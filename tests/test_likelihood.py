"""PF-ODE log-likelihoods against closed-form mixture densities."""

import math

import pytest
import torch
from helpers import small_mixture

import sde_diffusion as sd
from sde_diffusion.evaluation.likelihood import pixel_range

# SDEs whose p_T matches the prior to well under 1e-3 nats for this mixture:
# VP with alpha(1) = 4.4e-5, VE/EDM with sigma_max = 1e4 (mismatch ~ |mu| / sigma_max).
MATCHED = {
    "vp": lambda: sd.VPSDE(beta_max=40.0),
    "ve": lambda: sd.VESDE(sigma_max=1e4),
    "edm": lambda: sd.EDMSDE(sigma_max=1e4),
}


def _points(gmm, sde, n=16, seed=0):
    return gmm.marginal(sde, sde.t_min).sample(
        n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


@pytest.mark.parametrize("name", list(MATCHED))
def test_matches_closed_form_mixture_density(name):
    sde, gmm = MATCHED[name](), small_mixture()
    x = _points(gmm, sde)
    result = sd.likelihood_terms(gmm.score_fn(sde), sde, x, rtol=1e-8, atol=1e-8)
    exact = gmm.marginal(sde, sde.t_min).log_prob(x)
    assert result.divergence == "exact" and result.nfe > 0
    assert (result.log_likelihood - exact).abs().max() < 1e-3


def test_defaults_are_accurate_in_low_dimension():
    sde, gmm = MATCHED["edm"](), small_mixture()
    x = _points(gmm, sde)
    exact = gmm.marginal(sde, sde.t_min).log_prob(x)
    assert (sd.log_likelihood(gmm.score_fn(sde), sde, x) - exact).abs().max() < 1e-3


@pytest.mark.parametrize("solver", ["heun", "lms"])
def test_fixed_grid_integrators_converge_to_the_density(solver):
    sde, gmm = MATCHED["vp"](), small_mixture()
    x = _points(gmm, sde, n=8)
    exact = gmm.marginal(sde, sde.t_min).log_prob(x)
    score = gmm.score_fn(sde)
    coarse = sd.log_likelihood(score, sde, x, solver=solver, steps=25)
    fine = sd.log_likelihood(score, sde, x, solver=solver, steps=400)
    assert (fine - exact).abs().max() < 1e-3
    assert (fine - exact).abs().max() < (coarse - exact).abs().max()


def test_t_start_later_than_t_min():
    sde, gmm = MATCHED["vp"](), small_mixture()
    x = _points(gmm, sde, n=8)
    logp = sd.log_likelihood(gmm.score_fn(sde), sde, x, t_start=0.2, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(logp, gmm.marginal(sde, 0.2).log_prob(x), atol=1e-3, rtol=0)


@pytest.mark.slow
def test_hutchinson_is_unbiased_in_64_dimensions():
    sde, gmm = sd.VPSDE(beta_max=40.0), sd.high_dim_mixture()
    x = _points(gmm, sde, n=4)
    score = gmm.score_fn(sde)
    options = dict(solver="heun", steps=20)
    exact = sd.log_likelihood(score, sde, x, divergence="exact", **options)
    g = torch.Generator().manual_seed(0)
    estimates = torch.stack(
        [
            sd.log_likelihood(score, sde, x, divergence="hutchinson", generator=g, **options)
            for _ in range(40)
        ]
    )
    mean, se = estimates.mean(0), estimates.std(0) / math.sqrt(estimates.shape[0])
    assert ((mean - exact).abs() < 3 * se).all(), (mean - exact, se)
    assert (se > 0).all()
    # Gaussian probes and several probes per trajectory are unbiased too and vary less
    averaged = torch.stack(
        [
            sd.log_likelihood(
                score,
                sde,
                x,
                divergence="hutchinson",
                probes=4,
                generator=g,
                probe_dist="gaussian",
                **options,
            )
            for _ in range(10)
        ]
    )
    assert ((averaged.mean(0) - exact).abs() < 3 * averaged.std(0) / math.sqrt(10)).all()


def test_auto_picks_hutchinson_in_high_dimension():
    sde, gmm = sd.VPSDE(), sd.high_dim_mixture()
    x = _points(gmm, sde, n=2)
    result = sd.likelihood_terms(gmm.score_fn(sde), sde, x, solver="euler", steps=4)
    assert result.divergence == "hutchinson" and result.log_likelihood.shape == (2,)


def test_bits_per_dim_accounts_for_scaling_and_dequantisation():
    """A factorised discretised Gaussian: the exact NLL of u is known in closed form."""
    sde, levels = sd.VPSDE(beta_max=40.0), 16
    # data y ~ N(0, 0.3^2 I) in 3 dims: exact score of p_t
    var0 = 0.09

    def score(x, t):
        var = sde.alpha(t) ** 2 * var0 + sde.sigma(t) ** 2
        return -x / var.to(x)[:, None]

    x_int = torch.randint(0, levels, (32, 3), generator=torch.Generator().manual_seed(0))
    bpd = sd.bits_per_dim(
        score,
        sde,
        x_int,
        levels=levels,
        generator=torch.Generator().manual_seed(1),
        rtol=1e-8,
        atol=1e-8,
    )
    noise = torch.rand(x_int.shape, generator=torch.Generator().manual_seed(1))
    y = -1 + 2 * (x_int + noise) / levels
    var_tmin = float(sde.alpha(sde.t_min)) ** 2 * var0 + float(sde.sigma(sde.t_min)) ** 2
    logp_y = torch.distributions.Normal(0.0, var_tmin**0.5).log_prob(y).sum(1)
    expected = -(logp_y + 3 * math.log(2 / levels)) / (3 * math.log(2))
    torch.testing.assert_close(bpd, expected.to(bpd.dtype), atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(solver="dpmpp_2m"),
            r"uses only the PF-ODE velocity \(dop853, euler, .*got .dpmpp_2m.",
        ),
        (dict(solver="euler_maruyama"), "deterministic solver"),
        (dict(divergence="fast"), "divergence must be"),
        (dict(probes=0), "probes >= 1"),
        (dict(t_start=5.0), r"t_start must lie in \(0, T\)"),
    ],
)
def test_bad_options_raise(kwargs, message):
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match=message):
        sd.log_likelihood(small_mixture().score_fn(sde), sde, torch.zeros(2, 2), **kwargs)


def test_bits_per_dim_rejects_non_integer_pixels():
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="integer pixel values"):
        sd.bits_per_dim(small_mixture().score_fn(sde), sde, torch.full((2, 2), 0.5))
    with pytest.raises(ValueError, match=r"must lie in \[0, 255\]"):
        sd.bits_per_dim(small_mixture().score_fn(sde), sde, torch.full((2, 2), 300))


@pytest.mark.parametrize("make", [sd.VPSDE, sd.SubVPSDE, sd.VESDE, sd.EDMSDE])
def test_only_the_prior_mismatch_separates_default_sdes_from_the_density(make):
    """log p_T(x_T) - log prior(x_T), added back, closes the gap to 1e-5 nats."""
    sde, gmm = make(), small_mixture()
    x = _points(gmm, sde, n=8)
    result = sd.likelihood_terms(gmm.score_fn(sde), sde, x, rtol=1e-8, atol=1e-8)
    mismatch = gmm.marginal(sde, sde.T).log_prob(result.x_T) - sde.prior_logp(result.x_T)
    exact = gmm.marginal(sde, sde.t_min).log_prob(x)
    assert (result.log_likelihood + mismatch - exact).abs().max() < 1e-5


def _gap(sde, steps, n=1000):
    """Closed-form log p_{t_min} minus the ELBO: mean and standard error."""
    gmm = sd.eight_gaussians()
    x = _points(gmm, sde, n=n, seed=1)
    bound = sd.elbo(
        gmm.score_fn(sde), sde, x, steps=steps, generator=torch.Generator().manual_seed(2)
    )
    gap = gmm.marginal_log_prob(sde, x, sde.t_min) - bound
    return float(gap.mean()), float(gap.std()) / math.sqrt(n)


@pytest.mark.parametrize("make", [sd.VPSDE, sd.EDMSDE])
def test_elbo_bounds_the_log_density_and_tightens_like_one_over_steps(make):
    """With the exact score the only gap is discretisation: >= 0, shrinking ~1/N to ~0."""
    sde = make()
    coarse, coarse_se = _gap(sde, 100)
    fine, fine_se = _gap(sde, 1000)
    assert coarse > 3 * coarse_se and fine > -3 * fine_se  # a lower bound, within noise
    assert fine < coarse / 4  # ~1/N: measured ratios 7-9
    assert fine < 0.2  # nats, 2-D


def test_elbo_terms_add_up_and_count_evaluations():
    sde, gmm = sd.VPSDE(), small_mixture()
    x = _points(gmm, sde, n=8)
    res = sd.elbo_terms(gmm.score_fn(sde), sde, x, steps=50)
    torch.testing.assert_close(res.elbo, -(res.prior_kl + res.diffusion_kl + res.reconstruction))
    assert res.nfe == 50 and res.elbo.shape == (8,)
    assert (res.prior_kl >= 0).all() and (res.diffusion_kl >= 0).all()


def test_elbo_bits_per_dim_is_above_the_ode_bits_per_dim():
    """Same data and dequantisation noise: the bound costs bits, as theory says."""
    sde, levels = sd.VPSDE(), 16
    gmm = sd.GaussianMixture(torch.tensor([[-0.5, 0.0], [0.5, 0.2]]), torch.tensor([0.04, 0.09]))
    x_int = torch.randint(0, levels, (400, 2), generator=torch.Generator().manual_seed(0))
    kwargs = dict(levels=levels, low=-1.0, high=1.0)
    ode = sd.bits_per_dim(
        gmm.score_fn(sde), sde, x_int.double(), generator=torch.Generator().manual_seed(1), **kwargs
    )
    bound = sd.bits_per_dim(
        gmm.score_fn(sde),
        sde,
        x_int.double(),
        generator=torch.Generator().manual_seed(1),
        estimator="elbo",
        steps=200,
        **kwargs,
    )
    diff = bound - ode
    assert float(diff.mean()) > 3 * float(diff.std()) / math.sqrt(len(diff))


def test_pixel_range_centres_each_level_on_its_training_value():
    low, high = pixel_range(scale=8.0, shift=8.0, levels=17)  # digits
    assert (low, high) == (-1.0625, 1.0625)
    width = (high - low) / 17
    for k in (0, 8, 16):
        centre = low + (k + 0.5) * width
        assert math.isclose(centre, k / 8 - 1)


def test_elbo_rejects_bad_input():
    sde = sd.VPSDE()
    score = small_mixture().score_fn(sde)
    with pytest.raises(ValueError, match="steps >= 2"):
        sd.elbo(score, sde, torch.zeros(2, 2), steps=1)
    with pytest.raises(ValueError, match="estimator must be"):
        sd.bits_per_dim(score, sde, torch.zeros(2, 2), estimator="vlb")
