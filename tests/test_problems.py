"""Named problems and the solver comparison behind ``sdediff bench``."""

import math

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.evaluation.benchmark import (
    compare_solvers,
    convergence_slope,
    reference_endpoints,
    rms_ratio,
    steps_for_nfe,
)
from sde_diffusion.evaluation.metrics import noise_floor
from sde_diffusion.evaluation.problems import ProblemError, load_problem


@pytest.mark.parametrize(
    "name, shape, metric",
    [
        ("gmm8", (2,), "sliced-W2"),
        ("gmm64", (64,), "sliced-W2"),
        ("moons", (2,), "sliced-W2"),
        ("digits", (1, 8, 8), "digits-FID"),
    ],
)
def test_named_problems_resolve(name, shape, metric):
    problem = load_problem(name)
    assert problem.event_shape == shape and problem.metric_name == metric
    x = torch.zeros(3, *shape)
    t = torch.full((3,), 0.5)
    with torch.no_grad():
        assert problem.model(x, t).shape == x.shape
    assert problem.reference(16, 0).shape[1:] == shape


def test_analytic_problem_takes_any_sde():
    assert isinstance(load_problem("gmm8", sde="vp").sde, sd.VPSDE)
    with pytest.raises(ProblemError, match="unknown SDE"):
        load_problem("gmm8", sde="banana")


def test_unknown_model_lists_the_names():
    with pytest.raises(
        ProblemError,
        match="gmm8, gmm64, digits, digits-cond, digits-cond-guide, digits-fast, digits32, "
        "digits32-latent, moons",
    ):
        load_problem("nope")


def test_checkpoint_path_resolves(tmp_path):
    from sde_diffusion.pretrained import pretrained_path

    copy = tmp_path / "m.safetensors"
    copy.write_bytes(pretrained_path("moons").read_bytes())
    assert load_problem(str(copy)).event_shape == (2,)


def test_quality_is_near_the_noise_floor_for_exact_samples():
    problem = load_problem("gmm8")
    exact = problem.mixture.sample(2000, generator=torch.Generator().manual_seed(5))
    floor = noise_floor(problem.reference, 2000)  # two independent exact draws
    assert problem.quality(exact) < 2 * floor
    assert problem.quality(exact + 3.0) > 10 * floor


@pytest.mark.parametrize("solver", ["euler", "heun", "lms", "pc", "srk"])
@pytest.mark.parametrize("nfe", [10, 21])
def test_steps_for_nfe_spend_at_most_the_budget(solver, nfe):
    steps = steps_for_nfe(solver, nfe, to_zero=True)
    if steps is None:  # the shortest grid to zero (2 steps) costs more than the budget
        assert sd.get_solver(solver).info.nfe_per_step + 1 > nfe
        return
    grid = sd.timesteps(sd.EDMSDE(), steps, "karras", to_zero=True).tolist()
    spent = sd.get_solver(solver).expected_nfe(grid)
    assert spent <= nfe
    assert (
        sd.get_solver(solver).expected_nfe(
            sd.timesteps(sd.EDMSDE(), steps + 1, "karras", to_zero=True).tolist()
        )
        > nfe
    )  # one more step would overspend


def test_compare_solvers_rows_measure_convergence():
    problem = load_problem("gmm8")
    rows = compare_solvers(problem, ["heun", "euler_maruyama"], [10, 40, 160], num_samples=256)
    heun = [r for r in rows if r["solver"] == "heun"]
    errors = [r["error"] for r in heun]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-2
    assert all(r["nfe"] <= r["nfe_budget"] for r in rows)
    assert all(math.isnan(r["error"]) for r in rows if r["solver"] == "euler_maruyama")
    slope = convergence_slope([r["nfe"] for r in heun[1:]], errors[1:])
    assert -3.0 < slope < -1.5  # second order


def test_compare_solvers_reuses_a_given_reference():
    """A passed reference is the one errors are measured against (no second DOP853 solve)."""
    problem = load_problem("gmm8")
    ref = reference_endpoints(problem, 64, 0, True, "cpu")
    (same,) = compare_solvers(problem, ["euler"], [20], num_samples=64, reference=ref)
    (fresh,) = compare_solvers(problem, ["euler"], [20], num_samples=64)
    assert same["error"] == pytest.approx(fresh["error"], rel=1e-9)
    (shifted,) = compare_solvers(problem, ["euler"], [20], num_samples=64, reference=ref + 1.0)
    assert shifted["error"] > 0.5


def test_convergence_slope_recovers_a_power_law():
    nfe = [10, 20, 40, 80]
    assert math.isclose(convergence_slope(nfe, [3 * n**-2.0 for n in nfe]), -2.0)
    assert math.isnan(convergence_slope([10], [0.1]))


def _paired_flips(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-draw squared errors of two solvers on the same draws, as at low NFE on a
    mixture: a small bulk error, and a few draws sent to another mode (error ~U(0.5, 1.5));
    the first solver sends a third as many (1 %, against 3 %), a subset of the second's."""
    u, size, bulk = torch.rand(3, n, generator=generator, dtype=torch.float64)
    base = torch.rand(n, generator=generator, dtype=torch.float64)
    return (u < 0.01) * (0.5 + size) + 1e-4 * bulk, (u < 0.03) * (0.5 + size) + 1e-4 * base


def test_rms_ratio_interval_covers_the_true_ratio_at_its_level():
    # E[error] = P(flip) * 1 + 0.5e-4 for each solver
    true = math.sqrt((0.01 + 0.5e-4) / (0.03 + 0.5e-4))
    trials, covered, widths = 200, 0, []
    for trial in range(trials):
        ours, peer = _paired_flips(512, torch.Generator().manual_seed(trial))
        ratio, low, high = rms_ratio(ours, peer, resamples=999, seed=trial)
        assert low <= ratio <= high
        covered += low <= true <= high
        widths.append(high - low)
    # 95 % nominal; 200 trials give a binomial sd of 1.5 %: 89 % is 4 sd below
    assert covered / trials >= 0.89
    assert 0.1 < sorted(widths)[trials // 2] < 1.0  # flip counts of ~5 and ~15: wide


def test_rms_ratio_of_proportional_errors_is_exact_and_bad_input_is_refused():
    errors = torch.rand(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert rms_ratio(errors, 4 * errors) == pytest.approx((0.5, 0.5, 0.5), rel=1e-12)
    with pytest.raises(ValueError, match="equal 1-D"):
        rms_ratio(errors, errors[:10])
    with pytest.raises(ValueError, match="no error"):
        rms_ratio(errors, torch.zeros(64))
