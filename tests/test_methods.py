"""Exact identities of individual methods (each against a closed form or another method)."""

import math

import pytest
import torch
from helpers import fitted_order, rms, small_mixture
from scipy.integrate import quad

import sde_diffusion as sd
from sde_diffusion.evaluation.metrics import sliced_wasserstein
from sde_diffusion.solvers.lms import adams_bashforth_weights
from sde_diffusion.solvers.stochastic import posterior_coefficients
from sde_diffusion.solvers.unipc import unipc_weights

CLASSICAL_AB = {
    1: [1],
    2: [3 / 2, -1 / 2],
    3: [23 / 12, -16 / 12, 5 / 12],
    4: [55 / 24, -59 / 24, 37 / 24, -9 / 24],
}


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_adams_bashforth_weights_on_a_uniform_grid_are_classical(k):
    h = -0.05
    times = [1.0 - h * j for j in range(k)]  # newest first, uniform spacing
    weights = adams_bashforth_weights(times, 1.0 + h)
    assert weights == pytest.approx([h * c for c in CLASSICAL_AB[k]], rel=1e-12)


def test_adams_bashforth_weights_integrate_cubics_exactly_on_uneven_steps():
    times, t1 = [0.9, 1.3, 2.0, 3.5], 0.4
    weights = adams_bashforth_weights(times, t1)
    for m in range(4):  # integral of tau^m from t0 to t1
        exact = (t1 ** (m + 1) - times[0] ** (m + 1)) / (m + 1)
        assert sum(w * tau**m for w, tau in zip(weights, times, strict=True)) == pytest.approx(
            exact
        )


def test_ancestral_posterior_is_consistent_with_the_marginals(any_sde):
    """Averaging q(x_s | x_t, x0) over x_t ~ p(x_t | x0) gives p(x_s | x0)."""
    t, s = 0.6 * any_sde.T, 0.25 * any_sde.T
    process = sd.ReverseProcess(lambda x, t: x, any_sde, torch.zeros(1, 1))
    w_x, w_x0, post_var, _ = posterior_coefficients(process.at(t), process.at(s))
    alpha_t, sigma_t = any_sde.alpha(t), any_sde.sigma(t)
    alpha_s, sigma_s = any_sde.alpha(s), any_sde.sigma(s)
    assert float(w_x * alpha_t + w_x0) == pytest.approx(float(alpha_s), rel=1e-12)
    assert float(w_x**2 * sigma_t**2 + post_var) == pytest.approx(float(sigma_s**2), rel=1e-12)


def test_heun_sde_without_churn_is_heun_on_edm():
    sde = sd.EDMSDE()
    score = small_mixture().score_fn(sde)
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = sd.timesteps(sde, 12, "karras", to_zero=True)
    churnless = sd.solve(score, sde, x_T, ts, "heun_sde", churn=0.0).x
    torch.testing.assert_close(churnless, sd.solve(score, sde, x_T, ts, "heun").x)


def test_pc_without_corrector_is_its_predictor():
    sde = sd.VESDE()
    score = small_mixture().score_fn(sde)
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = sd.timesteps(sde, 10, "karras")
    a = sd.solve(
        score, sde, x_T, ts, "pc", corrector_steps=0, generator=torch.Generator().manual_seed(5)
    ).x
    b = sd.solve(score, sde, x_T, ts, "ancestral", generator=torch.Generator().manual_seed(5)).x
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_milstein_is_euler_maruyama_on_additive_noise():
    """g depends on t only, so Milstein's correction vanishes: same path, same result."""
    sde = sd.VPSDE()
    score = small_mixture().score_fn(sde)
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = sd.timesteps(sde, 20)
    noise = sd.BrownianNoise(x_T, sde.T, sde.t_min, seed=1)
    torch.testing.assert_close(
        sd.solve(score, sde, x_T, ts, "milstein", noise=noise).x,
        sd.solve(score, sde, x_T, ts, "euler_maruyama", noise=noise).x,
    )


def test_ddim_eta_one_is_ancestral_posterior_sampling():
    sde = sd.VPSDE()
    score = small_mixture().score_fn(sde)
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = sd.timesteps(sde, 10)
    a = sd.solve(score, sde, x_T, ts, "ddim", eta=1.0, generator=torch.Generator().manual_seed(2)).x
    b = sd.solve(score, sde, x_T, ts, "ancestral", generator=torch.Generator().manual_seed(2)).x
    torch.testing.assert_close(a, b)


def _paths(sde, names_and_options, steps=12):
    score = small_mixture().score_fn(sde)
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = sd.timesteps(sde, steps, "karras", to_zero=float(sde.sigma(0.0)) == 0.0)
    return [sd.solve(score, sde, x_T, ts, sd.get_solver(n, **o)).x for n, o in names_and_options]


@pytest.mark.parametrize("make", [sd.EDMSDE, sd.VPSDE], ids=["edm", "vp"])
def test_unipc_first_order_predictor_is_ddim(make):
    a, b = _paths(make(), [("unipc", {"order": 1, "corrector": False}), ("ddim", {})])
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("make", [sd.EDMSDE, sd.VPSDE], ids=["edm", "vp"])
def test_unipc_second_order_predictor_bh2_is_dpmpp_2m(make):
    """With one history node, rho = 1/2 and B(h) = e^{-h} - 1 give DPM-Solver++(2M)."""
    a, b = _paths(make(), [("unipc", {"order": 2, "corrector": False}), ("dpmpp_2m", {})])
    torch.testing.assert_close(a, b)


def test_unipc_weights_integrate_polynomials_exactly():
    """For x̂_0 = c τ^m (τ = λ − λ_t) the update's correction −α_s B Σ_j ρ_j D_j equals the
    exact α_s c ∫_0^h e^{−(h−τ)} τ^m dτ when m ≤ number of nodes; D_j = c h^m r_j^{m−1}."""
    h, ratios = 0.7, [-1.3, -0.6, 1.0]
    for variant in ("bh1", "bh2"):
        weights, scale = unipc_weights(ratios, h, variant)
        for m in range(1, len(ratios) + 1):
            exact = quad(lambda u, m=m: math.exp(-h * (1 - u)) * u**m, 0, 1)[0]
            moment = sum(w * r ** (m - 1) for w, r in zip(weights, ratios, strict=True))
            assert -scale * moment == pytest.approx(h * exact, rel=1e-9)


def _adaptive_problem(batch=32):
    sde = sd.EDMSDE()
    score = small_mixture().score_fn(sde)
    g = torch.Generator().manual_seed(0)
    return sde, score, sde.prior_sample((batch, 2), generator=g, dtype=torch.float64)


@pytest.mark.parametrize("order", [2, 3])
def test_dpm_adaptive_error_falls_at_least_at_its_order_in_nfe(order):
    """Tighter tolerances buy accuracy at the method's order (or faster: the controller
    also moves the steps where they pay): error ∝ NFE^-p with p ≥ order - 0.3."""
    sde, score, x_T = _adaptive_problem()
    ts = sd.timesteps(sde, 1)
    ref = sd.solve(score, sde, x_T, ts, "dop853", rtol=1e-12, atol=1e-12).x
    runs = [
        sd.solve(score, sde, x_T, ts, "dpm_adaptive", order=order, rtol=tol, atol=tol)
        for tol in (1e-3, 1e-4, 1e-5, 1e-6)
    ]
    nfe, errors = [r.nfe for r in runs], [rms(r.x, ref) for r in runs]
    assert nfe == sorted(nfe) and errors == sorted(errors, reverse=True)
    assert fitted_order(nfe, errors) >= order - 0.3, (nfe, errors)


def test_dpm_adaptive_is_batch_invariant_and_counts_the_busiest_sample():
    """Each sample has its own step sizes: a batch gives each sample's solo result, bit
    for bit; over one grid interval the NFE is the largest solo NFE."""
    sde, score, x_T = _adaptive_problem(batch=6)
    for ts in (sd.timesteps(sde, 3, "karras", to_zero=True), sd.timesteps(sde, 1)):
        batch = sd.solve(score, sde, x_T, ts, "dpm_adaptive", rtol=1e-3, atol=1e-3)
        solo = [
            sd.solve(score, sde, x_T[i : i + 1], ts, "dpm_adaptive", rtol=1e-3, atol=1e-3)
            for i in range(6)
        ]
        assert torch.equal(batch.x, torch.cat([r.x for r in solo]))
    assert batch.nfe == max(r.nfe for r in solo) and len({r.nfe for r in solo}) > 1


def test_dpm_adaptive_keeps_its_nfe_budget():
    sde, score, x_T = _adaptive_problem()
    ts = sd.timesteps(sde, 4, "karras", to_zero=True)
    free = sd.solve(score, sde, x_T, ts, "dpm_adaptive", rtol=1e-4, atol=1e-4)
    for cap in (free.nfe // 2, 20, 10):  # 10: the least for 3 intervals of order 3 and t = 0
        capped = sd.solve(score, sde, x_T, ts, "dpm_adaptive", rtol=1e-4, atol=1e-4, max_nfe=cap)
        assert capped.nfe <= cap and torch.isfinite(capped.x).all()
    with pytest.raises(ValueError, match="max_nfe=9 is below the 10 evaluations"):
        sd.solve(score, sde, x_T, ts, "dpm_adaptive", max_nfe=9)
    with pytest.raises(ValueError, match=r"max_nfe must be 0 \(no cap\) or a whole number >= 3"):
        sd.get_solver("dpm_adaptive", max_nfe=2)


def test_dpm_adaptive_stops_on_a_non_finite_model_and_on_unreachable_tolerances():
    sde = sd.EDMSDE()

    def broken(x, t):
        return torch.where(t[:, None] < 1.0, torch.nan, -x / (1 + t[:, None] ** 2))

    with pytest.raises(sd.NonFiniteError, match="dpm_adaptive: the error estimate"):
        sd.sample(broken, sde, (4, 2), "dpm_adaptive", steps=1)
    with pytest.raises(ValueError, match=r"rtol and atol must be >= 1\.2e-06 for torch\.float32"):
        sd.sample(broken, sde, (4, 2), "dpm_adaptive", steps=1, rtol=1e-9)


@pytest.mark.parametrize("base", ["heun", "dpmpp_2m"])
def test_restart_without_restarts_is_its_base(base):
    a, b = _paths(sd.EDMSDE(), [("restart", {"base": base, "restarts": 0}), (base, {})])
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_restart_pulls_a_coarse_ode_path_towards_the_data_law():
    """Xu et al.'s contraction: 5 Heun steps leave the law far off (sliced W2 0.92
    measured); two restarts of the interval sigma in [0.1, 2] bring it to 0.11."""
    gmm, sde = small_mixture(), sd.EDMSDE()
    target = gmm.marginal(sde, sde.t_min).sample(
        20000, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )

    def distance(name, **options):
        g = torch.Generator().manual_seed(0)
        x = sd.sample(
            gmm.score_fn(sde),
            sde,
            (20000, 2),
            name,
            steps=5,
            dtype=torch.float64,
            generator=g,
            **options,
        ).x
        return sliced_wasserstein(x, target)

    assert distance("restart") < 0.3 * distance("heun")


def test_restart_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="fixed-step ODE solver"):
        sd.get_solver("restart", base="euler_maruyama")
    with pytest.raises(ValueError, match="restart_min < restart_max"):
        sd.get_solver("restart", restart_min=1.0, restart_max=0.5)
    sde = sd.VESDE(sigma_max=1.0)
    with pytest.raises(ValueError, match="above the SDE's largest noise level"):
        sd.sample(small_mixture().score_fn(sde), sde, (4, 2), "restart", steps=4)


def test_dpmpp_sde_keeps_its_two_noises_on_one_brownian_path_with_any_source():
    """The step's noise contains the stage's (as on one Brownian path), so fresh normals
    give the law a replayed Brownian path gives, even at 3 steps (with two independent
    draws the variance was 38 % off)."""
    gmm = sd.GaussianMixture(
        torch.zeros(1, 1, dtype=torch.float64), torch.full((1, 1, 1), 0.25, dtype=torch.float64)
    )
    sde, n = sd.EDMSDE(), 20000
    x_T = sde.prior_sample((n, 1), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = sd.timesteps(sde, 3, "karras")

    def variance(noise):
        return float(sd.solve(gmm.score_fn(sde), sde, x_T, ts, "dpmpp_sde", noise=noise).x.var())

    brownian = variance(sd.BrownianNoise(x_T, sde.T, sde.t_min, seed=1))
    fresh = variance(sd.PerSampleNoise(3))
    assert abs(math.log(fresh / brownian)) < 4.5 * math.sqrt(4 / n)  # two sample variances


def test_ipndm_is_lms_on_the_edm_formulation():
    """α = 1 and σ = t: Adams–Bashforth in ρ is Adams–Bashforth in t (to t_min; a last
    step to t = 0 differs: lms extrapolates its history there, ipndm returns x̂_0)."""
    sde = sd.EDMSDE()
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts, score = sd.timesteps(sde, 12, "karras"), small_mixture().score_fn(sde)
    a, b = (sd.solve(score, sde, x_T, ts, name).x for name in ("ipndm", "lms"))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make", [sd.EDMSDE, sd.VPSDE], ids=["edm", "vp"])
def test_deis_first_order_is_ddim(make):
    a, b = _paths(make(), [("deis", {"order": 1}), ("ddim", {})])
    torch.testing.assert_close(a, b)


def test_deis_weights_integrate_polynomials_in_log_rho_exactly():
    """Σ_j w_j ε_j = ∫ ε dρ for ε = (log ρ)^m, m below the number of nodes."""
    from sde_diffusion.solvers.deis import log_rho_weights

    nodes, rho_next = [2.0, 3.5, 7.0], 1.2
    weights = log_rho_weights(nodes, rho_next)
    for m in range(3):
        exact = quad(lambda r, m=m: math.log(r) ** m, nodes[0], rho_next)[0]
        assert sum(w * math.log(r) ** m for w, r in zip(weights, nodes, strict=True)) == (
            pytest.approx(exact, rel=1e-10)
        )


@pytest.mark.parametrize("name", ["ipndm", "deis"])
def test_analytical_first_step_replaces_the_first_call_by_its_exact_value_at_a_point_mass(name):
    """Data at the origin: ε̂ = y/ρ exactly, so skipping the first call changes nothing
    but the NFE."""
    sde = sd.VPSDE()

    def point_mass(x, t):  # the score of N(0, σ²) around x_0 = 0
        return -x / sde.sigma(t)[:, None] ** 2

    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = sd.timesteps(sde, 8, "logsnr")
    plain = sd.solve(point_mass, sde, x_T, ts, name)
    afs = sd.solve(point_mass, sde, x_T, ts, name, afs=True)
    torch.testing.assert_close(afs.x, plain.x)
    assert afs.nfe == plain.nfe - 1 == sd.get_solver(name, afs=True).expected_nfe(ts.tolist())


@pytest.mark.parametrize("name", ["ipndm", "deis"])
def test_lower_order_final_ends_short_runs_with_a_ddim_step_and_leaves_long_ones(name):
    sde = sd.EDMSDE()
    score = small_mixture().score_fn(sde)
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def run(steps, solver, **options):
        return sd.solve(score, sde, x_T, sd.timesteps(sde, steps), solver, **options).x

    torch.testing.assert_close(run(2, name, lower_order_final=True), run(2, "ddim"))
    assert not torch.allclose(run(2, name), run(2, "ddim"))
    torch.testing.assert_close(run(15, name, lower_order_final=True), run(15, name))
