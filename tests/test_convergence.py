"""Measured convergence order, asserted against each solver's declared order.

ODE methods: endpoint error against a DOP853 solution at rtol = atol = 1e-10 of
the same PF-ODE from the same noise.  SDE methods: strong error on one
Brownian path replayed at every step size, against a fine solution on it.
"""

import pytest
import torch
from helpers import adaptive, fitted_order, names, rms, small_mixture

import sde_diffusion as sd

ODE_FIXED = names(lambda i: i.kind == "ode" and not adaptive(i) and not i.stochastic)
# Langevin corrector noise and EDM churn noise are not Brownian increments, and ER-SDE
# integrates another SDE of the same marginals: no strong order against this path.
NO_STRONG_ORDER = {
    "pc": "Langevin corrector noise is not a Brownian increment",
    "heun_sde": "EDM churn noise is not a Brownian increment",
    "restart": "forward re-noising is not a Brownian increment",
    "er_sde": "a different SDE with the same marginals (its noise scaler)",
    "sa_solver": "noise only inside its τ window: another SDE of the same marginals",
    "sa_solver_pece": "noise only inside its τ window: another SDE of the same marginals",
}
SDE_FIXED = names(lambda i: i.kind == "sde" and not adaptive(i))

# (sde, schedule, step counts) in each method's asymptotic range
ODE_PROBLEMS = {
    "edm-karras": (sd.EDMSDE, "karras", [128, 256, 512]),
    "vp-logsnr": (sd.VPSDE, "logsnr", [64, 128, 256]),
}


# Methods that reach their asymptotic range later on a problem: iPNDM's Adams steps in
# ρ = σ/α span ρ from 0.03 to 157 on VP, and at 64 steps the fit is still 3.6 for order 4.
# dpm_fast spends three evaluations a step on its own λ-uniform grid: a third of the steps.
LATER = {("ipndm", "vp-logsnr"): [128, 256, 512], ("dpm_fast", "vp-logsnr"): [256, 512, 1024]}


def _ode_errors(solver, problem, **options):
    make, schedule, steps = ODE_PROBLEMS[problem]
    steps = LATER.get((solver, problem), steps)
    sde = make()
    score = small_mixture().score_fn(sde)
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = sd.solve(score, sde, x_T, sd.timesteps(sde, 1), "dop853", rtol=1e-10, atol=1e-10).x
    solver = sd.get_solver(solver, **options)
    errors = [
        rms(sd.solve(score, sde, x_T, sd.timesteps(sde, n, schedule), solver).x, ref) for n in steps
    ]
    return solver, steps, errors


@pytest.mark.slow
@pytest.mark.parametrize("problem", list(ODE_PROBLEMS))
@pytest.mark.parametrize("name", ODE_FIXED)
def test_ode_order(name, problem):
    solver, steps, errors = _ode_errors(name, problem)
    measured = fitted_order(steps, errors)
    assert abs(measured - solver.order) <= 0.3, f"{name}: order {measured:.2f}, errors {errors}"


@pytest.mark.slow
@pytest.mark.parametrize("order", [1, 2, 3])  # 4, the default, is in test_ode_order
def test_lms_order_option(order):
    _, steps, errors = _ode_errors("lms", "edm-karras", order=order)
    assert abs(fitted_order(steps, errors) - order) <= 0.3, errors


# (options, problem) -> the instance's declared order; defaults are in test_ode_order
OPTION_CASES = [
    ("dpmpp_3m", {"published": True}, "edm-karras"),
    ("dpmpp_3m", {"published": True}, "vp-logsnr"),
    ("unipc", {"order": 1}, "edm-karras"),
    ("unipc", {"order": 1, "corrector": False}, "edm-karras"),
    ("unipc", {"order": 2, "corrector": False}, "edm-karras"),
    ("unipc", {"order": 3, "corrector": False}, "edm-karras"),
    ("unipc", {"order": 2, "variant": "bh1"}, "vp-logsnr"),
    ("deis", {"order": 2}, "vp-logsnr"),
    ("ipndm", {"order": 2}, "vp-logsnr"),
    ("ipndm", {"order": 3}, "vp-logsnr"),
    # SA-Solver's default (3, 4) is order 4 only past 1024 steps here (3.84 from 512 to
    # 2048, below this reference's precision): its lower pairs are measured instead.
    ("sa_solver", {"eta": 0.0, "predictor_order": 3, "corrector_order": 3}, "edm-karras"),
    ("sa_solver", {"eta": 0.0, "predictor_order": 2, "corrector_order": 3}, "vp-logsnr"),
    ("sa_solver", {"eta": 0.0, "predictor_order": 1, "corrector_order": 2}, "edm-karras"),
    ("sa_solver_pece", {"eta": 0.0, "predictor_order": 2, "corrector_order": 3}, "edm-karras"),
    ("seeds_2", {"eta": 0.0}, "vp-logsnr"),
    ("seeds_3", {"eta": 0.0}, "vp-logsnr"),
    ("res_multistep_ancestral", {"eta": 0.0}, "edm-karras"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "options", "problem"), OPTION_CASES, ids=str)
def test_solver_options_set_the_order(name, options, problem):
    solver, steps, errors = _ode_errors(name, problem, **options)
    measured = fitted_order(steps, errors)
    assert abs(measured - solver.order) <= 0.3, f"{options}: order {measured:.2f}, {errors}"


@pytest.mark.slow
def test_unipc_order_3_with_corrector_is_order_4():
    """Fewer steps: at 128+ the fourth-order errors reach the reference's round-off."""
    sde = sd.EDMSDE()
    score = small_mixture().score_fn(sde)
    x_T = sde.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = sd.solve(score, sde, x_T, sd.timesteps(sde, 1), "dop853", rtol=1e-10, atol=1e-10).x
    solver = sd.get_solver("unipc", order=3)
    steps = [32, 64, 128]
    errors = [
        rms(sd.solve(score, sde, x_T, sd.timesteps(sde, n, "karras"), solver).x, ref) for n in steps
    ]
    assert solver.order == 4.0
    assert abs(fitted_order(steps, errors) - 4.0) <= 0.3, errors


@pytest.fixture(scope="module")
def strong_problem():
    """One Brownian path on the VP reverse SDE from t = 1 to 0.3 and a fine SRK solution on it
    (a window where one path's errors are in the asymptotic range)."""
    sde, t_end = sd.VPSDE(), 0.3
    score = small_mixture().score_fn(sde)
    x_T = sde.prior_sample(
        (256, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    noise = sd.BrownianNoise(x_T, sde.T, t_end, seed=3, levy_area_approximation="space-time")

    def grid(n):
        return torch.linspace(sde.T, t_end, n + 1, dtype=torch.float64)

    ref = sd.solve(score, sde, x_T, grid(1024), "srk", noise=noise).x
    return sde, score, x_T, noise, grid, ref


@pytest.mark.slow
@pytest.mark.parametrize("name", SDE_FIXED)
def test_sde_strong_order(name, strong_problem):
    if name in NO_STRONG_ORDER:
        pytest.skip(f"{name} has no strong order to measure: {NO_STRONG_ORDER[name]}")
    sde, score, x_T, noise, grid, ref = strong_problem
    solver = sd.get_solver(name)
    steps = [16, 32, 64, 128]
    errors = [rms(sd.solve(score, sde, x_T, grid(n), solver, noise=noise).x, ref) for n in steps]
    measured = fitted_order(steps, errors)
    assert abs(measured - solver.order) <= 0.3, f"{name}: strong order {measured:.2f}, {errors}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sa_solver", "sa_solver_pece"])
def test_sa_solver_with_noise_everywhere_has_strong_order_one(name, strong_problem):
    """τ = 1 on the whole path: SA-Solver's SDE is the reverse SDE, and it converges on it."""
    sde, score, x_T, noise, grid, ref = strong_problem
    solver = sd.get_solver(name, tau_start=0.0, tau_end=1.0)
    steps = [16, 32, 64, 128]
    errors = [rms(sd.solve(score, sde, x_T, grid(n), solver, noise=noise).x, ref) for n in steps]
    assert abs(fitted_order(steps, errors) - solver.order) <= 0.3, errors


@pytest.mark.parametrize("name", names(adaptive))
def test_adaptive_error_follows_tolerance(name):
    sde = sd.EDMSDE()
    score = small_mixture().score_fn(sde)
    x_T = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ts = sd.timesteps(sde, 1)
    ref = sd.solve(score, sde, x_T, ts, "dop853", rtol=1e-11, atol=1e-11).x
    loose = rms(sd.solve(score, sde, x_T, ts, name, rtol=1e-3, atol=1e-3).x, ref)
    tight = rms(sd.solve(score, sde, x_T, ts, name, rtol=1e-8, atol=1e-8).x, ref)
    assert tight < 1e-5 and tight < loose / 100
