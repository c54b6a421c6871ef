"""Registry-driven checks: every registered solver gets each of these automatically."""

import pytest
import torch
from helpers import adaptive, gaussian_score, info, moment_bounds, names, small_mixture

import sde_diffusion as sd

ALL = names()
FIXED = names(lambda i: not adaptive(i))
# Every method converges to the data law but lcm (order 0): it samples consistency models.
CONVERGENT = names(lambda i: i.order > 0)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("event", [(2,), (3, 4), (2, 3, 4, 4)], ids=["rank1", "rank2", "rank4"])
def test_any_event_rank(name, event):
    sde = sd.VPSDE()
    x_T = sde.prior_sample((3, *event), generator=torch.Generator().manual_seed(0))
    x = sd.solve(gaussian_score(sde), sde, x_T, sd.timesteps(sde, 4), name).x
    assert x.shape == x_T.shape and torch.isfinite(x).all()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_follows_input(name, dtype):
    sde = sd.EDMSDE()
    res = sd.sample(gaussian_score(sde), sde, (8, 2), name, steps=5, dtype=dtype)
    assert res.x.dtype == dtype and torch.isfinite(res.x).all()


@pytest.mark.parametrize("name", ALL)
def test_seeded_runs_reproduce(name):
    sde = sd.EDMSDE()
    score = small_mixture().score_fn(sde)
    a = sd.sample(score, sde, (32, 2), name, steps=6, seed=7, dtype=torch.float64)
    b = sd.sample(score, sde, (32, 2), name, steps=6, seed=7, dtype=torch.float64)
    c = sd.sample(score, sde, (32, 2), name, steps=6, seed=8, dtype=torch.float64)
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=0)
    assert not torch.allclose(a.x, c.x)


@pytest.mark.parametrize("name", names(lambda i: i.stochastic))
def test_stochastic_solvers_draw_noise(name):
    """Same x_T, different noise: different samples."""
    sde = sd.EDMSDE()
    x_T = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(0))
    score, ts = small_mixture().score_fn(sde), sd.timesteps(sde, 6, "karras")
    a = sd.solve(score, sde, x_T, ts, name, generator=torch.Generator().manual_seed(1)).x
    b = sd.solve(score, sde, x_T, ts, name, generator=torch.Generator().manual_seed(2)).x
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("name", FIXED)
@pytest.mark.parametrize("to_zero", [False, True], ids=["to_t_min", "to_zero"])
def test_counted_nfe_matches_declared(name, to_zero):
    sde, steps = sd.EDMSDE(), 7
    res = sd.sample(gaussian_score(sde), sde, (4, 2), name, steps=steps, to_zero=to_zero)
    solver = sd.get_solver(name)
    assert res.nfe == solver.expected_nfe(res.ts.tolist())
    extra = 0
    if name == "restart":  # restarts x restart_steps more steps of its base
        extra = solver.restarts * solver.restart_steps * solver.nfe_per_step
    if name == "heunpp2":  # its last two steps look ahead over fewer points: 2 and 1 NFE
        extra = -(3 - 2) - (3 - 1)
    if name == "sa_solver_pece":  # the first step has no corrector to evaluate
        extra = -1
    if not to_zero and not name.startswith(("srk", "milstein")):  # torchsde probes once more
        assert res.nfe == steps * info(name).nfe_per_step + extra


@pytest.mark.parametrize("name", ALL)
def test_never_evaluates_the_model_at_zero(name):
    sde = sd.EDMSDE()
    exact = gaussian_score(sde)

    def score_fn(x, t):
        if bool((t == 0).any()):
            raise AssertionError("the model was evaluated at t = 0")
        return exact(x, t)

    ts = sd.timesteps(sde, 6, "karras", to_zero=True)
    x = sd.solve(score_fn, sde, sde.prior_sample((4, 2)), ts, name).x
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("name", names(adaptive))
def test_adaptive_nfe_is_counted_and_follows_tolerance(name):
    sde = sd.EDMSDE()
    score = small_mixture().score_fn(sde)
    options = {"steps": 1, "dtype": torch.float64}  # 1e-8 is below float32's resolution
    loose = sd.sample(score, sde, (16, 2), name, rtol=1e-3, atol=1e-3, **options)
    tight = sd.sample(score, sde, (16, 2), name, rtol=1e-8, atol=1e-8, **options)
    assert 0 < loose.nfe < tight.nfe


def _exact_moment_check(name, sde, schedule, n=5000):
    """Start from exact p_T samples; the end law must be p_{t_min} (mean and covariance).

    The test detects a bias of a few standard errors, which scale as 1/sqrt(n); the bias
    of an order-p method scales as h^p.  With n = 5000 (standard errors twice those at
    20000) the grid can be coarser by 2^(1/p) at the same bias-to-error ratio: 200 steps
    for first order (400 at n = 20000) and 70 for order >= 1.5 (100): an eighth to a
    sixth of the work.
    """
    steps = 70 if sd.get_solver(name).order >= 1.5 else 200
    gmm = small_mixture()
    g = torch.Generator().manual_seed(11)
    x_T = gmm.marginal(sde, sde.T).sample(n, generator=g, dtype=torch.float64)
    ts = sd.timesteps(sde, steps, schedule)
    x = sd.solve(gmm.score_fn(sde), sde, x_T, ts, name, generator=g).x
    target = gmm.marginal(sde, sde.t_min)
    z_mean, z_cov = moment_bounds(x, target.mean(), target.covariance())
    assert z_mean < 4.5, f"mean off by {z_mean:.1f} standard errors"
    assert z_cov < 4.5, f"covariance off by {z_cov:.1f} standard errors"


def test_lcm_lands_on_denoised_means_of_a_score_model():
    """lcm on a score model: each step keeps only x̂_0, so the law shrinks towards the
    posterior means (its declared order 0): the spread is visibly below the data's."""
    sde, gmm = sd.EDMSDE(), small_mixture()
    x_T = gmm.marginal(sde, sde.T).sample(4096, generator=torch.Generator().manual_seed(0))
    ts = sd.timesteps(sde, 8, "karras", to_zero=True)
    g = torch.Generator().manual_seed(1)
    x = sd.solve(gmm.score_fn(sde), sde, x_T.double(), ts, "lcm", generator=g).x
    data = gmm.marginal(sde, 0.0).covariance().trace().item()
    assert torch.cov(x.T).trace() < 0.6 * data  # measured 0.44 of the data's total variance


@pytest.mark.parametrize("name", CONVERGENT)
def test_exact_score_reproduces_the_data_law_edm(name):
    _exact_moment_check(name, sd.EDMSDE(), "karras")


@pytest.mark.slow
@pytest.mark.parametrize("name", CONVERGENT)
@pytest.mark.parametrize("make", [sd.VPSDE, sd.SubVPSDE], ids=["vp", "subvp"])
def test_exact_score_reproduces_the_data_law(name, make):
    _exact_moment_check(name, make(), "logsnr")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pc", "ancestral", "euler_maruyama", "heun", "dpmpp_2m"])
def test_exact_score_reproduces_the_data_law_ve(name):
    """VE's classic samplers (Euler in t needs ~1000 steps here: sigma grows like e^t)."""
    _exact_moment_check(name, sd.VESDE(), "karras")


@pytest.mark.cuda
@pytest.mark.parametrize("name", ALL)
def test_runs_on_cuda_unchanged(name):
    sde = sd.EDMSDE()
    gmm = small_mixture()
    res = sd.sample(gmm.score_fn(sde), sde, (256, 2), name, steps=8, device="cuda")
    assert res.x.device.type == "cuda" and torch.isfinite(res.x).all()
    cpu = sd.sample(gmm.score_fn(sde), sde, (256, 2), name, steps=8, device="cpu")
    assert res.nfe == cpu.nfe


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "euler_maruyama"])
def test_the_exact_velocity_of_a_rectified_flow_samples_the_mixture(name):
    """A flow-matching model predicts v = eps - x0; given the mixture's exact v, the
    solvers land on the data law (the SDE solver through the same conversions)."""
    sde, gmm = sd.RectifiedFlow(), small_mixture()

    def velocity(x, t, cond=None):
        x0 = gmm.denoise(sde, x, t)
        t = sd.append_dims(t.to(x), x.ndim)
        return (x - x0) / t  # eps - x0 with eps = (x - (1 - t) x0) / t

    model = sd.FunctionModel(velocity, prediction="velocity")
    steps = 70 if sd.get_solver(name).order >= 1.5 else 200  # as _exact_moment_check
    g = torch.Generator().manual_seed(5)
    x_T = gmm.marginal(sde, sde.T).sample(5000, generator=g, dtype=torch.float64)
    x = sd.solve(model, sde, x_T, sd.timesteps(sde, steps, "logsnr"), name, generator=g).x
    target = gmm.marginal(sde, sde.t_min)
    z_mean, z_cov = moment_bounds(x, target.mean(), target.covariance())
    assert z_mean < 4.5 and z_cov < 4.5, (z_mean, z_cov)


@pytest.mark.parametrize(
    ("stochastic", "deterministic"),
    [
        (("euler_ancestral", {"eta": 0.0}), ("ddim", {})),
        (("dpm_2_ancestral", {"eta": 0.0}), ("dpm_2", {})),
        (("dpmpp_2s_ancestral", {"eta": 0.0}), ("dpmpp_2s", {})),
        (("dpmpp_2m_sde", {"eta": 0.0}), ("dpmpp_2m", {})),
        (("euler_ancestral", {"eta": 1.0}), ("ancestral", {})),
    ],
    ids=str,
)
@pytest.mark.parametrize("make", [sd.EDMSDE, sd.VPSDE], ids=["edm", "vp"])
def test_the_eta_knob_ends_at_the_ode_solver_and_the_posterior_step(
    stochastic, deterministic, make
):
    """eta = 0: the deterministic solver's numbers; eta = 1 (euler_ancestral): ``ancestral``'s,
    on the same noise."""
    sde, gmm = make(), small_mixture()
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid = sd.timesteps(sde, 12, "logsnr", to_zero=True)
    (a, a_opts), (b, b_opts) = stochastic, deterministic
    runs = [
        sd.solve(gmm.score_fn(sde), sde, x_T, grid, name, noise=sd.PerSampleNoise(3), **opts).x
        for name, opts in ((a, a_opts), (b, b_opts))
    ]
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-10, atol=1e-10)
    assert sd.get_solver(a, **a_opts).stochastic == (a_opts["eta"] > 0)


@pytest.mark.parametrize(
    ("name", "opts"),
    [(name, {}) for name in sd.solver_names()] + [("pc", {"norms": "marginal"})],
    ids=str,
)
def test_batch_invariance_is_what_the_registry_says(name, opts):
    """With per-sample noise a sample is the same bit for bit in a batch of 7 and of 3
    exactly when its metadata says ``batch_invariant`` (analytic scores: no batched
    network arithmetic)."""
    sde, gmm = sd.EDMSDE(), small_mixture()
    solver = sd.get_solver(name, **opts)
    steps = 1 if solver.adaptive else 8
    runs = [
        sd.sample_batched(
            gmm.score_fn(sde), sde, (7, 2), solver, steps, batch_size=b, seed=4, dtype=torch.float64
        ).x
        for b in (7, 3)
    ]
    assert all(torch.isfinite(x).all() for x in runs)
    assert torch.equal(*runs) == solver.batch_invariant


def test_pc_with_marginal_norms_corrects_as_well_as_batch_norms_at_a_larger_snr():
    """The batch-free step (r = sigma(t)) is smaller near the data than Song et al.'s
    batch-mean rule; at snr 1 it matches it (measured: sliced W2 0.1026 vs 0.1025) and the
    corrector clearly helps (no corrector: 0.131)."""
    from sde_diffusion.evaluation.metrics import sliced_wasserstein

    sde, gmm = sd.EDMSDE(), sd.eight_gaussians()
    ref = gmm.sample(4096, generator=torch.Generator().manual_seed(9)).float()
    runs = {
        "batch": {"norms": "batch"},
        "marginal": {"norms": "marginal", "snr": 1.0},
        "none": {"norms": "marginal", "corrector_steps": 0},
    }
    w2 = {}
    for name, options in runs.items():
        x = sd.sample(gmm.score_fn(sde), sde, (2048, 2), "pc", 25, seed=1, **options).x
        w2[name] = float(sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0)))
    assert w2["marginal"] < 1.1 * w2["batch"] and w2["marginal"] < 0.9 * w2["none"], w2


@pytest.mark.parametrize("name", [n for n in sd.solver_names() if not sd.get_solver(n).adaptive])
@pytest.mark.parametrize("to_zero", [False, True])
def test_steps_for_is_the_most_steps_within_the_budget(name, to_zero):
    """``steps_for(nfe)`` steps cost at most ``nfe`` on a grid of that kind (ending at
    ``t_min`` or at 0), and one step more costs more: checked against ``expected_nfe``."""
    solver, sde = sd.get_solver(name), sd.VESDE() if not to_zero else sd.EDMSDE()
    for nfe in (1, 2, 3, 5, 8, 13, 40):
        steps = solver.steps_for(nfe, to_zero=to_zero)
        shortest = 2 if to_zero else 1
        if steps is None:
            grid = sd.timesteps(sde, shortest, to_zero=to_zero).tolist()
            assert solver.expected_nfe(grid) > nfe
            continue
        cost = solver.expected_nfe(sd.timesteps(sde, steps, to_zero=to_zero).tolist())
        more = solver.expected_nfe(sd.timesteps(sde, steps + 1, to_zero=to_zero).tolist())
        assert cost <= nfe < more, (nfe, steps, cost, more)


def test_pc_refuses_a_predictor_that_runs_legs_of_its_own():
    with pytest.raises(sd.ArgumentError, match="fixed-step reverse-SDE solver, got 'restart'"):
        sd.get_solver("pc", predictor="restart")


@pytest.mark.parametrize("name", ["deis", "ipndm"])
def test_afs_on_a_one_step_grid_still_asks_the_model(name):
    """The analytical first step replaces the first evaluation only when more follow; one
    step alone would return scaled prior noise."""
    sde = sd.EDMSDE()
    calls = []

    def score(x, t):
        calls.append(1)
        return sd.eight_gaussians().score(sde, x, t)

    res = sd.sample(score, sde, (4, 2), name, 1, afs=True, seed=0)
    assert len(calls) == res.nfe == 1
    plain = sd.sample(score, sde, (4, 2), name, 1, seed=0)
    assert torch.equal(res.x, plain.x)
