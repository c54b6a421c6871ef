"""Properties of the SDE library: closed forms, moment equations, prior, errors."""

import math

import pytest
import torch
from conftest import linear_beta_table
from hypothesis import given, settings
from hypothesis import strategies as st

import sde_diffusion as sd
from sde_diffusion.sdes import build_sde, sde_config, sde_from_config, sde_names

finite = dict(allow_nan=False, allow_infinity=False)


@st.composite
def sdes(draw):
    """Every registered SDE: the built-in ones with drawn parameters, others with defaults."""
    kind = draw(st.sampled_from(sde_names()))
    if kind == "rectified_flow":
        t_min = draw(st.floats(1e-5, 0.05, **finite))
        return sd.RectifiedFlow(t_min=t_min, T=draw(st.floats(0.5, 0.9999, **finite)))
    if kind == "discrete_vp":
        start = draw(st.floats(1e-5, 1e-3, **finite))
        end = draw(st.floats(5e-3, 0.05, **finite))
        return sd.DiscreteVPSDE(linear_beta_table(start, end, draw(st.integers(10, 1000))))
    if kind in ("vp", "subvp"):
        lo = draw(st.floats(0.01, 2.0, **finite))
        hi = draw(st.floats(lo + 1.0, 40.0, **finite))
        return (sd.VPSDE if kind == "vp" else sd.SubVPSDE)(beta_min=lo, beta_max=hi)
    if kind in ("ve", "edm"):
        lo = draw(st.floats(1e-3, 0.5, **finite))
        hi = draw(st.floats(lo * 10, 200.0, **finite))
        return (sd.VESDE if kind == "ve" else sd.EDMSDE)(sigma_min=lo, sigma_max=hi)
    return build_sde(kind)


def linear_drift_coefficient(sde, t):
    """f(t) of the linear drift f(x, t) = f(t) x."""
    return sde.drift(torch.ones(1, dtype=torch.float64), t)[0]


@settings(max_examples=60, deadline=None)
@given(sde=sdes(), u=st.floats(0.0, 1.0, **finite))
def test_alpha_sigma_ranges(sde, u):
    t = sde.t_min + u * (sde.T - sde.t_min)
    alpha, sigma = float(sde.alpha(t)), float(sde.sigma(t))
    assert sigma > 0
    assert 0 < alpha <= 1
    if isinstance(sde, sd.VPSDE):
        assert alpha**2 + sigma**2 == pytest.approx(1.0, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(sde=sdes(), u=st.floats(0.02, 0.98, **finite))
def test_moment_equations_by_autograd(sde, u):
    """d alpha/dt = f alpha and d sigma^2/dt = 2 f sigma^2 + g^2."""
    t = torch.tensor(sde.t_min + u * (sde.T - sde.t_min), dtype=torch.float64, requires_grad=True)
    alpha, var = sde.alpha(t), sde.sigma(t) ** 2
    dalpha, dvar = (
        torch.autograd.grad(v, t)[0] if v.requires_grad else torch.zeros(()) for v in (alpha, var)
    )  # a constant alpha = 1 carries no graph
    with torch.no_grad():
        f, g2 = linear_drift_coefficient(sde, t), sde.diffusion(t) ** 2
        assert float(dalpha) == pytest.approx(float(f * alpha), rel=1e-9, abs=1e-12)
        assert float(dvar) == pytest.approx(float(2 * f * var + g2), rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    sde=sdes(), event=st.lists(st.integers(1, 4), min_size=1, max_size=3), batch=st.integers(1, 5)
)
def test_prior_logp_matches_torch_distributions(sde, event, batch):
    g = torch.Generator().manual_seed(0)
    z = sde.prior_sample((batch, *event), generator=g, dtype=torch.float64)
    assert z.shape == (batch, *event)
    normal = torch.distributions.Normal(
        torch.zeros((), dtype=torch.float64), torch.tensor(sde.prior_std, dtype=torch.float64)
    )
    expected = normal.log_prob(z).flatten(1).sum(1)
    torch.testing.assert_close(sde.prior_logp(z), expected, rtol=1e-12, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(sde=sdes(), event=st.lists(st.integers(1, 4), min_size=0, max_size=3))
def test_marginal_broadcasts_over_any_event_rank(sde, event):
    x0 = torch.randn(3, *event, dtype=torch.float64)
    t = torch.tensor([sde.t_min, 0.5 * sde.T, sde.T], dtype=torch.float64)
    mean, std = sde.marginal(x0, t)
    assert mean.shape == x0.shape
    assert (mean + std * torch.randn_like(x0)).shape == x0.shape
    torch.testing.assert_close(mean[1], float(sde.alpha(t[1])) * x0[1])
    assert std.flatten()[2] == pytest.approx(sde.prior_std)


def test_drift_keeps_shape_and_per_sample_time(any_sde):
    x = torch.randn(4, 3, 5, 5)
    t = torch.linspace(any_sde.t_min, any_sde.T, 4)
    assert any_sde.drift(x, t).shape == x.shape
    assert any_sde.drift(x, 0.5 * any_sde.T).shape == x.shape


def test_forward_simulation_reproduces_marginal(any_sde):
    """Many small Euler–Maruyama steps of the forward SDE from a fixed x0."""
    torch.manual_seed(0)
    n, steps = 20000, 2000
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64)
    t_end = 0.6 * any_sde.T
    t0 = any_sde.t_min
    dt = (t_end - t0) / steps
    # start from the exact marginal at t0 so VE's sigma(0) = sigma_min is honoured
    mean0, std0 = any_sde.marginal(x0[None], t0)
    x = mean0 + std0 * torch.randn(n, 2, dtype=torch.float64)
    for i in range(steps):
        t = t0 + i * dt
        x = (
            x
            + any_sde.drift(x, t) * dt
            + any_sde.diffusion(t) * math.sqrt(dt) * torch.randn_like(x)
        )
    mean, std = any_sde.marginal(x0[None], t_end)
    std = float(std)
    se_mean = std / math.sqrt(n)
    se_std = std / math.sqrt(2 * n)
    assert (x.mean(0) - mean[0]).abs().max() < 4 * se_mean + 1e-3 * std
    assert (x.std(0) - std).abs().max() < 4 * se_std + 2e-3 * std


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: sd.VPSDE(beta_min=20.0, beta_max=0.1), "beta_min must be smaller"),
        (lambda: sd.VPSDE(beta_min=-1.0), "beta_min must be a positive"),
        (lambda: sd.SubVPSDE(beta_min=5.0, beta_max=5.0), "beta_min must be smaller"),
        (lambda: sd.VESDE(sigma_min=-0.1), "sigma_min must be a positive"),
        (lambda: sd.VESDE(sigma_min=10.0, sigma_max=1.0), "sigma_min must be smaller"),
        (lambda: sd.EDMSDE(sigma_max=float("nan")), "sigma_max must be a positive"),
        (lambda: sd.EDMSDE(sigma_min=0.0), "sigma_min must be a positive"),
    ],
)
def test_bad_parameters_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_time_outside_range_raises(any_sde):
    with pytest.raises(ValueError, match=r"time t=.* is outside \[0, T\]"):
        any_sde.sigma(any_sde.T * 1.5)
    with pytest.raises(ValueError, match="outside"):
        any_sde.alpha(torch.tensor([0.1 * any_sde.T, -0.1]))


def test_repr_names_parameters():
    assert (
        repr(sd.VPSDE(beta_min=0.2, beta_max=10.0))
        == "VPSDE(beta_min=0.2, beta_max=10.0, t_min=0.001)"
    )
    assert repr(sd.EDMSDE()) == "EDMSDE(sigma_min=0.002, sigma_max=80.0)"


def test_user_subclass_gets_the_rest():
    """Only drift/diffusion/alpha/sigma: an Ornstein–Uhlenbeck SDE."""

    class OU(sd.SDE):
        T, t_min = 3.0, 1e-3

        def drift(self, x, t):
            return -x

        def diffusion(self, t):
            return torch.full_like(sd.sdes.as_time(t), math.sqrt(2.0))

        def alpha(self, t):
            return torch.exp(-sd.sdes.as_time(t))

        def sigma(self, t):
            return torch.sqrt(-torch.expm1(-2 * sd.sdes.as_time(t)))

    ou = OU()
    z = ou.prior_sample((5, 2), generator=torch.Generator().manual_seed(1))
    assert ou.prior_logp(z).shape == (5,)
    t = ou.t_from_log_snr(ou.log_snr(torch.tensor([0.5, 2.0], dtype=torch.float64)))
    torch.testing.assert_close(t, torch.tensor([0.5, 2.0], dtype=torch.float64))
    _, std = ou.marginal(torch.ones(2, 2), 1.0)
    assert float(std) == pytest.approx(math.sqrt(1 - math.exp(-2)))


@pytest.mark.parametrize("name", sde_names())
def test_log_snr_inverse(name):
    sde = build_sde(name)
    t = torch.linspace(sde.t_min, sde.T, 17, dtype=torch.float64)
    torch.testing.assert_close(sde.t_from_log_snr(sde.log_snr(t)), t, rtol=1e-9, atol=1e-12)


def test_discrete_vp_is_exact_at_every_level():
    """ᾱ_k at t = (k+1)/N, clean data at t = 0, and g^2 = -2 f (variance preserving)."""
    abar = linear_beta_table(1e-4, 0.02, 1000)
    sde = sd.DiscreteVPSDE(abar)
    t = (torch.arange(1000, dtype=torch.float64) + 1) / 1000
    torch.testing.assert_close(sde.alpha(t) ** 2, abar, rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.alpha(t) ** 2 + sde.sigma(t) ** 2, torch.ones_like(t))
    assert float(sde.sigma(0.0)) == 0.0 and float(sde.alpha(0.0)) == 1.0
    torch.testing.assert_close(sde.diffusion(t) ** 2, -2 * sde.drift_coefficient(t))
    assert sde.t_min == pytest.approx(1e-3) and sde.T == 1.0


@pytest.mark.parametrize(
    "table, message",
    [([0.9], "at least 2 values"), ([0.5, 0.9], "decrease strictly"), ([1.2, 0.5], r"\(0, 1\]")],
)
def test_discrete_vp_rejects_bad_tables(table, message):
    with pytest.raises(ValueError, match=message):
        sd.DiscreteVPSDE(table)


def test_a_zero_terminal_snr_table_ends_at_the_vp_limit():
    """diffusers' rescale_betas_zero_snr tables end at ᾱ = 0: the last level continues the
    two before it geometrically, so α(T) is tiny but positive and σ(T) is 1 to rounding."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    root = abar.sqrt()
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])  # Lin et al. 2024, alg. 1
    table = root**2
    assert table[-1] == 0
    sde = sd.DiscreteVPSDE(table)
    expected = table[-2] ** 2 / table[-3]
    torch.testing.assert_close(sde.alpha(1.0) ** 2, expected, rtol=1e-9, atol=0)
    assert 0 < float(sde.alpha(1.0)) < 1e-3 and float(sde.sigma(1.0)) == pytest.approx(1.0)
    torch.testing.assert_close(sde.alpha(0.5) ** 2, table[499], rtol=1e-9, atol=0)
    assert torch.equal(sd.sdes.sde_from_config(sd.sdes.sde_config(sde)).alphas_cumprod, table)
    for bad in ([0.9, 0.0], [0.9, 0.0, 0.0]):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            sd.DiscreteVPSDE(bad)


@pytest.mark.parametrize("name", sde_names())
def test_every_registered_sde_saves_and_loads(name):
    """The registry reads each SDE's parameters from its __init__: a config round trip
    through JSON rebuilds the same SDE (DiscreteVPSDE's table included)."""
    import json

    sde = build_sde(name)
    config = json.loads(json.dumps(sde_config(sde)))
    again = sde_from_config(config)
    assert type(again) is type(sde) and again.name == name == config["type"]
    t = torch.linspace(sde.t_min, sde.T, 9, dtype=torch.float64)
    assert torch.equal(again.alpha(t), sde.alpha(t)) and torch.equal(again.sigma(t), sde.sigma(t))


def test_the_sde_registry_refuses_what_it_cannot_build_or_save():
    with pytest.raises(sd.ArgumentError, match=r"unknown SDE 'vpp'; choose one of .*\bvp\b"):
        build_sde("vpp")
    with pytest.raises(sd.ArgumentError, match=r"does not take option.* beta; it takes: sigma_min"):
        build_sde("edm", beta=1.0)

    class Unregistered(sd.EDMSDE):
        pass

    with pytest.raises(sd.ArgumentError, match="only registered SDEs can be saved"):
        sde_config(Unregistered())
    with pytest.raises(TypeError, match="every parameter needs a default"):

        @sd.sdes.register_sde("needs_a_table")
        class NeedsATable(sd.DiscreteVPSDE):
            def __init__(self, table):
                super().__init__(table)

    assert "needs_a_table" not in sde_names()
