"""The model interface: predictions, the per-solve process, cond, metadata, results."""

import math

import pytest
import torch
from helpers import adaptive, gaussian_score, names, rms

import sde_diffusion as sd
from sde_diffusion.evaluation.benchmark import compare_solvers, steps_for_nfe
from sde_diffusion.evaluation.problems import load_problem
from sde_diffusion.parametrization import Coefficients, convert, convert_at

DATA_STD = 0.7


def exact_predictions(sde, x, t):
    """Every prediction kind of data N(0, DATA_STD^2 I), each from its own formula."""
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    var = alpha**2 * DATA_STD**2 + sigma**2
    score = -x / var
    x0 = alpha * DATA_STD**2 * x / var  # E[x_0 | x_t] of a Gaussian
    eps = sigma * x / var  # E[eps | x_t]
    f, g2 = sde.drift_coefficient(t), sde.diffusion(t) ** 2
    return {
        "score": score,
        "x0": x0,
        "eps": eps,
        "v": alpha * eps - sigma * x0,
        "velocity": f * x - 0.5 * g2 * score,
    }


@pytest.mark.parametrize("target", sd.PREDICTIONS)
@pytest.mark.parametrize("source", sd.PREDICTIONS)
def test_one_conversion_serves_every_pair(any_sde, source, target):
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = 0.3 * any_sde.T
    exact = exact_predictions(any_sde, x, t)
    c = Coefficients(
        float(any_sde.alpha(t)),
        float(any_sde.sigma(t)),
        float(any_sde.drift_coefficient(t)),
        float(any_sde.diffusion(t) ** 2),
    )
    torch.testing.assert_close(convert_at(exact[source], x, source, target, c), exact[target])
    per_sample = torch.full((5,), t, dtype=torch.float64)
    torch.testing.assert_close(
        convert(exact[source], x, per_sample, any_sde, source, target), exact[target]
    )


def test_plain_score_functions_are_models():
    sde = sd.EDMSDE()
    model = sd.as_model(gaussian_score(sde))
    assert model.prediction == "score"
    with pytest.raises(sd.ConditionError, match="takes no condition"):
        sd.sample(gaussian_score(sde), sde, (4, 2), "euler", steps=3, cond=torch.zeros(4))
    with pytest.raises(ValueError, match="unknown prediction 'noise'"):
        sd.FunctionModel(lambda x, t, c: x, prediction="noise")
    with pytest.raises(TypeError, match="expected a model"):
        sd.as_model(3)


@pytest.mark.parametrize("kind", ["x0", "eps", "v", "velocity"])
def test_every_prediction_kind_samples_the_same_path(kind):
    """One exact model declared in each kind: the same PF-ODE solution."""
    sde = sd.VPSDE()
    score = gaussian_score(sde, DATA_STD)
    model = sd.FunctionModel(lambda x, t, cond: exact_predictions(sde, x, t[0])[kind], kind)
    x_T = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = sd.timesteps(sde, 8)
    for solver in ("heun", "dpmpp_2m", "ddim"):
        torch.testing.assert_close(
            sd.solve(model, sde, x_T, ts, solver).x, sd.solve(score, sde, x_T, ts, solver).x
        )


def test_x0_models_reach_the_solver_unconverted():
    """An x0 model's output is the denoiser the solver sees: no x0 -> score -> x0 trip."""
    sde, seen = sd.EDMSDE(), []

    def denoiser(x, t, cond):
        out = x / (1 + t[:, None] ** 2)
        seen.append(out)
        return out

    x = torch.randn(8, 2)
    process = sd.ReverseProcess(sd.FunctionModel(denoiser, "x0"), sde, x, grid=[2.0, 1.0])
    assert process.denoise(x, 2.0) is seen[-1]


class CountingSDE(sd.EDMSDE):
    """An EDM SDE that counts evaluations of its coefficient functions."""

    calls = 0

    def alpha(self, t):
        CountingSDE.calls += 1
        return super().alpha(t)


@pytest.mark.parametrize("name", names(lambda s: not adaptive(s) and s.name != "srk"))
def test_coefficients_are_computed_once_per_solve(name):
    """The coefficient work of a solve does not grow with the number of steps.

    (``srk`` is left out: torchsde's Runge–Kutta stages evaluate the drift at
    times between grid points, each computed once when first met.)
    """
    sde = CountingSDE()
    score = gaussian_score(sd.EDMSDE())
    calls = []
    for steps in (5, 20):
        ts = sd.timesteps(sde, steps)
        CountingSDE.calls = 0
        sd.solve(score, sde, sde.prior_sample((4, 2)), ts, name)
        calls.append(CountingSDE.calls)
    assert calls[0] == calls[1] and calls[0] <= 4  # alpha and log-SNR on the grid (+ churn times)


def test_process_caches_times_and_counts():
    sde = sd.VPSDE()
    x = torch.randn(6, 3)
    process = sd.ReverseProcess(gaussian_score(sde), sde, x, grid=[1.0, 0.5, 0.1])
    c = process.at(0.5)
    assert isinstance(c.alpha, float) and c.alpha == pytest.approx(float(sde.alpha(0.5)))
    assert c.log_snr == pytest.approx(float(sde.log_snr(0.5)))
    assert process.batch_time(0.5).shape == (6,) and process.batch_time(0.5).dtype == x.dtype
    process.velocity(x, 0.5)
    process.drift(x, 0.1)
    assert process.nfe == 2 and process.network_passes == 2


def test_result_carries_trajectory_times_and_network_passes():
    sde = sd.VPSDE()
    score = gaussian_score(sde)
    model = sd.FunctionModel(lambda x, t, cond: score(x, t), "score", passes_per_call=2)
    ts = sd.timesteps(sde, 4)
    x_T = torch.randn(3, 2)
    res = sd.solve(model, sde, x_T, ts, "heun", return_trajectory=True, denoise=True)
    assert isinstance(res, sd.SampleResult)
    assert res.trajectory.shape == (6, 3, 2) and len(res.times) == 6
    assert res.times[:5] == ts.tolist() and res.times[5] == ts[-1].item()
    torch.testing.assert_close(res.trajectory[0], x_T)
    torch.testing.assert_close(res.trajectory[-1], res.x)
    assert res.nfe == 9 and res.network_passes == 18
    adaptive_run = sd.solve(score, sde, x_T, ts, "rk45", return_trajectory=True)
    assert adaptive_run.trajectory.shape == (5, 3, 2)
    torch.testing.assert_close(adaptive_run.trajectory[-1], adaptive_run.x)


def separated_mixture() -> sd.GaussianMixture:
    """Four well separated, correlated 2-D classes."""
    means = torch.tensor([[-6.0, 0.0], [0.0, 6.0], [6.0, 0.0], [0.0, -6.0]], dtype=torch.float64)
    covs = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64).expand(4, 2, 2)
    return sd.GaussianMixture(means, covs, [0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize("name", [n for n in sd.solver_names() if sd.get_solver(n).order > 0])
def test_cond_reaches_the_model_in_every_solver(name):
    """Classes 1 and 3 requested per sample: each sample follows its own class's law."""
    gmm, sde = separated_mixture(), sd.VPSDE()
    n = 1024
    labels = torch.tensor([1, 3]).repeat_interleave(n // 2)
    steps = 6 if adaptive(sd.get_solver(name)) else 100
    res = sd.sample(
        gmm.score_fn(sde), sde, (n, 2), name, steps=steps, cond=labels, dtype=torch.float64
    )
    nearest = torch.cdist(res.x, gmm.means).argmin(1)
    assert torch.equal(nearest, labels)
    for k in (1, 3):
        x = res.x[labels == k]
        se_mean = math.sqrt(0.5 / len(x))  # largest variance 0.5
        se_cov = 0.5 * math.sqrt(2 / len(x))  # sd of a sample (co)variance <= 0.5 sqrt(2 / n)
        allowance = 0.06  # first-order methods' bias at 100 steps (measured <= 0.05)
        assert (x.mean(0) - gmm.means[k]).abs().max() < 5 * se_mean + allowance
        assert (torch.cov(x.T) - gmm.covs[k]).abs().max() < 5 * se_cov + allowance


def test_cond_must_fit_the_batch():
    sde = sd.VPSDE()
    model = small_conditional_model(sde)
    with pytest.raises(sd.ConditionError, match=r"one row per sample, shape \(4, ...\)"):
        sd.sample(model, sde, (4, 2), "euler", steps=3, cond=torch.zeros(3, dtype=torch.long))
    with pytest.raises(sd.ConditionError, match="must be a tensor"):
        sd.sample(model, sde, (4, 2), "euler", steps=3, cond={"y": [1, 2, 3, 4]})


def small_conditional_model(sde):
    return separated_mixture().score_fn(sde)


def test_dict_cond_and_slicing():
    cond = {"y": torch.arange(6), "emb": torch.randn(6, 3)}
    part = sd.models.slice_cond(cond, slice(2, 4))
    assert torch.equal(part["y"], torch.tensor([2, 3])) and part["emb"].shape == (2, 3)
    seen = []
    model = sd.FunctionModel(lambda x, t, c: seen.append(c) or torch.zeros_like(x), "eps")
    sd.sample(model, sd.VPSDE(), (6, 2), "euler", steps=2, cond=cond)
    assert seen[0] is cond


def test_bf16_model_keeps_a_float32_state_accurate():
    """A bf16 network under a float32 state: error within 1.5x of the float32 network's."""
    problem = load_problem("gmm8", sde="vp")
    gmm, sde = problem.mixture, problem.sde

    def network(dtype):
        def eps(x, t, cond):  # the exact eps, seen and returned at the network's precision
            x_in = x.to(dtype)
            score = gmm.score(sde, x_in.double(), t.double())
            return (-sde.sigma(t.double())[:, None] * score).to(dtype)

        return sd.FunctionModel(eps, "eps")

    x_T = sd.PerSampleNoise(0).normal((2048, 2), "cpu", torch.float32)
    ts = sd.timesteps(sde, 50, "karras")
    reference = sd.solve(
        gmm.score_fn(sde), sde, x_T.double(), sd.timesteps(sde, 2), "dop853", rtol=1e-10, atol=1e-10
    ).x
    errors = {
        dtype: rms(sd.solve(network(dtype), sde, x_T, ts, "dpmpp_2m").x.double(), reference)
        for dtype in (torch.float32, torch.bfloat16)
    }
    assert errors[torch.bfloat16] <= 1.5 * errors[torch.float32]


def test_pc_budget_counts_its_corrector_steps():
    """steps_for_nfe reads the configured instance: 3 corrector steps cost 4 NFE a step."""
    solver = sd.get_solver("pc", corrector_steps=3)
    steps = steps_for_nfe(solver, 20, to_zero=False)
    assert solver.nfe_per_step == 4 and steps == 5  # ancestral predictor + 3 corrector steps
    sde = sd.VPSDE()
    res = sd.sample(gaussian_score(sde), sde, (4, 2), solver, steps=steps)
    assert res.nfe <= 20 and res.nfe == solver.expected_nfe(res.ts.tolist())


def test_benchmark_judges_the_configured_instance():
    """ddim with eta = 1 draws noise, so it gets no endpoint error; eta = 0 does."""
    problem = load_problem("gmm8", sde="vp")
    rows = {
        eta: compare_solvers(
            problem, ["ddim"], [10], num_samples=64, solver_options={"ddim": {"eta": eta}}
        )[0]
        for eta in (0.0, 1.0)
    }
    assert math.isfinite(rows[0.0]["error"]) and math.isnan(rows[1.0]["error"])
    assert sd.get_solver("ddim", eta=1.0).stochastic and not sd.get_solver("ddim").stochastic
