"""5–20 NFE: our solvers on standard and model-tuned grids beside the best peer configuration.

    pip install -e ".[peers]"; pip install --no-deps k-diffusion
    python benchmarks/low_nfe.py        # writes benchmarks/results/low_nfe.{json,md}
    python benchmarks/low_nfe.py --concentration   # where the saved best rows' error sits
    python benchmarks/low_nfe.py --concentration --problems gmm64 --draws 16384  # 12288 fresh
    python benchmarks/low_nfe.py --tuned-only --solvers lms,ipndm  # only those tuned rows

Problems: the ring (gmm8) and the 64-D mixture (gmm64) under the EDM PF-ODE with the
exact mixture denoiser, sigma in [0.002, 80], 4096 test draws x_T (``PerSampleNoise``),
judged by the endpoint RMS error per dimension against DOP853 at 1e-10 (see peers.py).

Ours: every deterministic fixed-grid solver (and the option variants of peers.py) on the
Karras (rho = 7) and log-SNR grids, and each of them (defaults) on grids from
``sd.tune_timesteps``, fitted on quasi-random draws from another seed (256 for the ring;
1024 for gmm64, whose error at low NFE comes from rare draws, see docs/benchmarks.md),
never on the test draws.

Peers, best configuration per budget over: k-diffusion's deterministic samplers (euler,
heun, lms, dpm_2, dpmpp_2m, dpmpp_2s_ancestral and dpmpp_3m_sde at eta = 0, dpm_fast)
on Karras grids with rho 3, 5, 7, 10, 15, exponential and polyexponential (rho 2)
grids; diffusers' multistep schedulers (DPM-Solver++ 2M/3M, UniPC bh1/bh2 at orders 2
and 3, DEIS 2/3) with Karras or exponential sigmas and linspace, leading and trailing
timestep spacing.  A configuration counts at a budget if its NFE fits the budget.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import time

import torch
from common import RESULTS, table, write_results
from peers import Case, Peer, diffusers_grid, run_diffusers, standard_grid_runs

import sde_diffusion as sd
from sde_diffusion.evaluation.benchmark import fixed_grid_solvers, rms_ratio, steps_for_nfe
from sde_diffusion.tuning import worst_share

NFES = [4, 5, 6, 8, 10, 15, 20]
TEST_DRAWS = 4096  # every row is judged on these
TUNED = [n for n in fixed_grid_solvers() if not sd.get_solver(n).stochastic]  # deterministic
FITTED = {"deis": {}}  # grid and step weights fitted together (method="gradient")
FIT = {"gmm8": 256, "gmm64": 1024}  # tuning draws per problem
# The row label of what a fit with weights returned: the check draws may prefer the grid alone
KEPT = {"tuned": "tuned+weights", "tuned grid": "tuned+weights (grid kept)"}
KD_SAMPLERS = {  # name -> (options, NFE of n steps ending at 0)
    "euler": ({}, lambda n: n),
    "heun": ({}, lambda n: 2 * n - 1),
    "lms": ({}, lambda n: n),
    "dpm_2": ({}, lambda n: 2 * n - 1),
    "dpmpp_2m": ({}, lambda n: n),
    "dpmpp_2s_ancestral": ({"eta": 0.0}, lambda n: 2 * n - 1),
    "dpmpp_3m_sde": ({"eta": 0.0}, lambda n: n),
}
KD_GRIDS = [("karras", {"rho": r}) for r in (3, 5, 7, 10, 15)] + [
    ("exponential", {}),
    ("polyexponential", {"rho": 2.0}),
]
MULTISTEP = {
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"solver_order": 2}),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    "unipc_bh2_2": ("UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2"}),
    "unipc_bh2_3": ("UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh2"}),
    "unipc_bh1_3": ("UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh1"}),
    "deis_2": ("DEISMultistepScheduler", {"solver_order": 2}),
    "deis_3": ("DEISMultistepScheduler", {"solver_order": 3}),
}
SPACINGS = {
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "linspace": {"timestep_spacing": "linspace"},
    "leading": {"timestep_spacing": "leading"},
    "trailing": {"timestep_spacing": "trailing"},
}


def ours(case: Case) -> list[dict]:
    """Standard grids for every deterministic solver, then ``tuned_rows``."""
    rows = []
    for budget in NFES:
        for label, schedule, x, nfe in standard_grid_runs(case, budget):
            rows.append(_row(case, budget, "ours", label, schedule, nfe, _error(case, x)))
    return rows + tuned_rows(case, TUNED)


def tuned_rows(case: Case, solvers: list[str]) -> list[dict]:
    """``solvers`` on grids from ``sd.tune_timesteps`` (search), fitted on ``FIT`` draws."""
    grid_sde = sd.EDMSDE(0.002, case.sde.sigma_max)
    rows = []
    for budget in NFES:
        for name in solvers:
            if steps_for_nfe(sd.get_solver(name), budget, to_zero=True) is None:
                continue
            start = time.perf_counter()
            tuned = sd.tune_timesteps(
                case.score_edm, grid_sde, nfe=budget, solver=name,
                shape=(case.mixture.dim,), samples=FIT[case.name], seed=1, max_evaluations=300,
            )  # fmt: skip
            x, nfe = case.ours(name, {}, tuned.times)
            row = _row(case, budget, "ours", name, "tuned", nfe, case.judge(x, False)["error"])
            row.update(fit_error=tuned.record["error"], seconds=time.perf_counter() - start)
            row["times"] = tuned.times
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "times"}), flush=True)
    return rows


def fitted(case: Case) -> list[dict]:
    """``FITTED`` solvers with their grid and step weights fitted by gradients (the rows
    labelled ``tuned+weights``, or ``tuned+weights (grid kept)`` where the tuner's check
    draws preferred the fitted grid alone), from the same fitting draws as the tuned grids."""
    grid_sde = sd.EDMSDE(0.002, case.sde.sigma_max)
    rows = []
    for budget in NFES:
        for name, options in FITTED.items():
            start = time.perf_counter()
            tuned = sd.tune_timesteps(
                case.score_edm, grid_sde, nfe=budget, solver=sd.get_solver(name, **options),
                shape=(case.mixture.dim,), samples=FIT[case.name], seed=1, method="gradient",
                fit_weights=True, max_evaluations=300,
            )  # fmt: skip
            x, nfe = case.ours(name, tuned.solver_options, tuned.times)
            label = KEPT.get(tuned.record["kept"], "tuned+weights (start kept)")
            row = _row(case, budget, "ours", name, label, nfe, _error(case, x))
            row.update(fit_error=tuned.record["error"], seconds=time.perf_counter() - start)
            row.update(times=tuned.times, options=tuned.solver_options)
            rows.append(row)
            print(json.dumps({k: row[k] for k in row if k not in ("times", "options")}), flush=True)
    return rows


def methods(case: Case, budget: int = 10) -> list[dict]:
    """The tuner's methods side by side: dynamic programming, search, both."""
    grid_sde = sd.EDMSDE(0.002, case.sde.sigma_max)
    rows = []
    for name in ("deis", "unipc", "dpmpp_3m"):
        for method in ("dp", "search", "dp+search"):
            start = time.perf_counter()
            tuned = sd.tune_timesteps(
                case.score_edm, grid_sde, nfe=budget, solver=name, shape=(case.mixture.dim,),
                samples=FIT[case.name], seed=1, method=method, max_evaluations=300,
            )  # fmt: skip
            x, _ = case.ours(name, {}, tuned.times)
            standard = [v for k, v in tuned.record["start_errors"].items() if k != "dp"]
            rows.append({
                "problem": case.name, "solver": name, "method": method, "nfe": budget,
                "dp_grid_error": tuned.record["start_errors"].get("dp", float("nan")),
                "best_standard": min(standard),
                "fit_error": tuned.record["error"], "test_error": _error(case, x),
                "seconds": time.perf_counter() - start,
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    return rows


def k_diffusion(case: Case, kd) -> list[dict]:
    rows = []
    for name, (options, cost) in KD_SAMPLERS.items():
        for grid_name, grid_options in KD_GRIDS:
            make = getattr(kd, f"get_sigmas_{grid_name}")
            for budget in NFES:
                n = max((k for k in range(1, budget + 1) if cost(k) <= budget), default=None)
                if n is None or (cost(n) == 2 * n - 1 and n < 2):
                    continue
                sigmas = make(n, 0.002, case.sde.sigma_max, **grid_options).to(case.x_T.dtype)
                x, nfe = _kd_run(kd, name, case, sigmas, options)
                label = _kd_label(grid_name, grid_options)
                rows.append(_row(case, budget, "k-diffusion", name, label, nfe, _error(case, x)))
    for budget in NFES:  # DPM-Solver-fast picks its orders for the NFE; + 1 denoising step
        calls = []

        def model(x, sigma, calls=calls):
            calls.append(1)
            return case.denoise(x, sigma)

        with torch.inference_mode():
            x = kd.sample_dpm_fast(model, case.x_T.clone(), 0.002, case.sde.sigma_max, budget - 1)
            x = model(x, torch.full((x.shape[0],), 0.002, dtype=x.dtype))
        rows.append(_row(case, budget, "k-diffusion", "dpm_fast", "-", len(calls), _error(case, x)))
    return rows


def _kd_label(grid_name: str, grid_options: dict) -> str:
    return grid_name + "".join(f" {k}={v}" for k, v in grid_options.items())


TRAINED = {"moons": (2048, 256), "digits": (512, 64)}  # test samples, tuning draws


def trained(kd, budgets=tuple(NFES), only: str | None = None, solvers=TUNED) -> list[dict]:
    """The shipped models: our solvers on Karras, log-SNR and tuned grids beside
    k-diffusion's samplers on every grid of ``KD_GRIDS`` (they run in the scaled
    variables x/α, σ/α of the model's VP SDE), judged by the problem's quality metric.
    ``only="fitted"`` or ``"tuned"`` runs only those rows, of ``solvers``."""
    return [row for name in TRAINED for row in _trained(kd, name, budgets, only, solvers)]


def _trained(kd, name: str, budgets, only: str | None, solvers) -> list[dict]:
    from sde_diffusion.evaluation.problems import load_problem
    from sde_diffusion.parametrization import convert

    n, fit = TRAINED[name]
    rows = []
    problem = load_problem(name)
    sde, model = problem.sde, problem.model
    x_T = sd.PerSampleNoise(0).normal((n, *problem.event_shape), "cpu", torch.float32)
    nu_max, nu_min = (float(sde.sigma(t) / sde.alpha(t)) for t in (sde.T, sde.t_min))
    scale = sde.prior_std / float(sde.alpha(sde.T))  # the same x_T in the scaled variable

    def denoiser(x_scaled, nu, calls):
        calls.append(1)
        t = sde.t_from_log_snr(-nu.double().log())
        alpha = sd.append_dims(sde.alpha(t).to(x_scaled), x_scaled.ndim)
        x = x_scaled * alpha
        return convert(model(x, t.to(x.dtype)), x, t, sde, model.prediction, "x0")

    def add(library, method, grid, budget, nfe, x):
        rows.append({"problem": name, "nfe_budget": budget, "library": library,
                     "method": method, "grid": grid, "nfe": nfe,
                     "quality": problem.quality(x.float(), 0)})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)

    for budget in budgets:
        for solver in solvers:
            steps = steps_for_nfe(solver, budget, to_zero=True)
            grids = {g: sd.timesteps(sde, steps, g, to_zero=True) for g in ("karras", "logsnr")}
            grids = {g: (grid, sd.get_solver(solver)) for g, grid in grids.items()}
            fits = [("tuned", "search", False)]
            if solver in FITTED:
                fits.append(("tuned+weights", "gradient", True))
            if only is not None:  # the fitted rows (last of fits) or the tuned ones (first)
                grids = {}
                fits = [f for f in fits if f[0] == ("tuned+weights" if only == "fitted" else only)]
            for grid_name, method, weights in fits:
                tuned = sd.tune_timesteps(
                    model, sde, nfe=budget, solver=sd.get_solver(solver, **FITTED.get(solver, {})),
                    shape=tuple(problem.event_shape), samples=fit, seed=1, method=method,
                    fit_weights=weights, max_evaluations=150,
                )  # fmt: skip
                if weights:
                    grid_name = KEPT.get(tuned.record["kept"], "tuned+weights (start kept)")
                grids[grid_name] = tuned.tensor(), sd.get_solver(solver, **tuned.solver_options)
            for grid_name, (grid, instance) in grids.items():
                with torch.inference_mode():
                    res = sd.solve(model, sde, x_T * sde.prior_std, grid, instance)
                add("ours", solver, grid_name, budget, res.nfe, res.x)
        if only is not None:
            continue
        for sampler, (options, cost) in KD_SAMPLERS.items():
            k = max((k for k in range(2, budget + 1) if cost(k) <= budget), default=None)
            if k is None:
                continue
            for grid_name, grid_options in KD_GRIDS:
                sigmas = getattr(kd, f"get_sigmas_{grid_name}")(
                    k, nu_min, nu_max, **grid_options
                ).float()
                calls = []
                with torch.inference_mode():
                    x = getattr(kd, f"sample_{sampler}")(
                        lambda x, s, c=calls: denoiser(x, s, c), x_T * scale,
                        sigmas, disable=True, **options,
                    )  # fmt: skip
                label = _kd_label(grid_name, grid_options)
                add("k-diffusion", sampler, label, budget, len(calls), x)
    return rows


def _kd_run(kd, name, case, sigmas, options):
    calls = []

    def model(x, sigma):
        calls.append(1)
        return case.denoise(x, sigma)

    with torch.inference_mode():
        x = getattr(kd, f"sample_{name}")(model, case.x_T.clone(), sigmas, disable=True, **options)
    return x, len(calls)


def diffusers(case: Case) -> list[dict]:
    rows = []
    for name in MULTISTEP:
        for spacing in SPACINGS:
            peer = _diffusers_peer(name, spacing)
            for budget in NFES:
                with torch.inference_mode():
                    try:
                        x, nfe = run_diffusers(peer, case.denoise, case.x_T, budget)
                    except (ValueError, NotImplementedError, TypeError) as err:  # not supported
                        print(f"skip {name} {spacing}: {err}")
                        break
                rows.append(_row(case, budget, "diffusers", name, spacing, nfe, _error(case, x)))
    return rows


def _diffusers_peer(name: str, spacing: str) -> Peer:
    import diffusers

    scheduler, options = MULTISTEP[name]
    init = inspect.signature(getattr(diffusers, scheduler)).parameters
    final = {"final_sigmas_type": "zero"} if "final_sigmas_type" in init else {}
    return Peer(scheduler, {**options, **SPACINGS[spacing], **final}, None, vp_units=True)


def _best_pair(rows: list[dict], problem: str, budget: int) -> tuple[dict, ...]:
    """Our best tuned row and the best peer row of ``problem`` at ``budget``; ``()``
    where the rows hold no such pair (that problem was not run)."""
    here = [r for r in rows if r["problem"] == problem and r["nfe_budget"] == budget]
    ours = [r for r in here if "times" in r]
    peers = [r for r in here if r["library"] != "ours"]
    if not ours or not peers:
        return ()
    return min(ours, key=lambda r: r["error"]), min(peers, key=lambda r: r["error"])


def concentration(case: Case, rows: list[dict], budgets=(5, 10)) -> list[dict]:
    """Where the endpoint error sits, per budget, for our best configuration (a tuned one,
    rerun from its saved grid) and the best peer's: the share of the squared error held by
    the worst 1 % of the test draws, and the draws whose error exceeds 0.5 per dimension
    (on gmm64, the draws sent to another mode: its modes lie about 2 apart per dimension).
    Our row also gives the ratio of the two errors with its paired bootstrap interval over
    the test draws (``rms_ratio``): how far the ratio could move on other draws.  A case
    with more than the 4096 test draws is judged on the draws after them, which chose no
    row: an independent estimate of the ratio."""
    kd, out = sd.adapters.kdiffusion_sampling(), []
    fresh = slice(TEST_DRAWS if len(case.x_T) > TEST_DRAWS else 0, None)
    for budget in budgets:
        pair = _best_pair(rows, case.name, budget)
        if not pair:
            raise SystemExit(f"no saved rows of {case.name} at NFE {budget}: run the table first")
        per_draw = []  # ours, then the peer's
        for row in pair:
            if row["library"] == "ours":
                x, _ = case.ours(row["method"], row.get("options", {}), row["times"])
            elif row["library"] == "diffusers":
                with torch.inference_mode():
                    x, _ = run_diffusers(
                        _diffusers_peer(row["method"], row["grid"]), case.denoise, case.x_T, budget
                    )
            else:  # k-diffusion on one of KD_GRIDS
                options, cost = KD_SAMPLERS[row["method"]]
                grid_name, grid_options = next(
                    (g, o) for g, o in KD_GRIDS if _kd_label(g, o) == row["grid"]
                )
                n = max(k for k in range(1, budget + 1) if cost(k) <= budget)
                make = getattr(kd, f"get_sigmas_{grid_name}")
                sigmas = make(n, 0.002, case.sde.sigma_max, **grid_options).to(case.x_T.dtype)
                x, _ = _kd_run(kd, row["method"], case, sigmas, options)
            errors = (x.double() - case.reference).pow(2).mean(1)[fresh]
            per_draw.append(errors)
            out.append({
                **{k: row[k] for k in ("problem", "nfe_budget", "library", "method", "grid")},
                "error": float(errors.mean().sqrt()),
                "worst_1pct_share": worst_share(errors),
                "far_draws": int((errors > 0.25).sum()),
                "draws": len(errors),
            })  # fmt: skip
        ratio, low, high = rms_ratio(*per_draw)
        out[-2].update(ratio=ratio, ratio_low=low, ratio_high=high)
        for row in out[-2:]:
            print(json.dumps(row), flush=True)
    return out


def _error(case: Case, x: torch.Tensor) -> float:
    return case.judge(x, False)["error"]


def _row(case, budget, library, method, grid, nfe, error) -> dict:
    return {
        "problem": case.name, "nfe_budget": budget, "library": library, "method": method,
        "grid": grid, "nfe": nfe, "error": error,
    }  # fmt: skip


def markdown(payload: dict) -> str:
    """The report of the saved results: shipped models, tuning methods, the analytic
    problems (best per budget, tuned grids' fit against test, every configuration), and
    where the error sits."""
    rows, compared, models = payload["rows"], payload.get("methods"), payload.get("trained")
    parts = []
    for problem in dict.fromkeys(r["problem"] for r in models or []):
        body = []
        for budget in sorted({r["nfe_budget"] for r in models if r["problem"] == problem}):
            here = [r for r in models if r["problem"] == problem and r["nfe_budget"] == budget]
            peer = min((r for r in here if r["library"] != "ours"), key=lambda r: r["quality"])
            standard = min((r for r in here if r["library"] == "ours"
                            and not r["grid"].startswith("tuned")),
                           key=lambda r: r["quality"])  # fmt: skip
            best = min((r for r in here if r["library"] == "ours"), key=lambda r: r["quality"])
            body.append([budget, f"{peer['method']} ({peer['grid']})", peer["quality"],
                         f"{standard['method']} ({standard['grid']})", standard["quality"],
                         f"{best['method']} ({best['grid']})", best["quality"],
                         best["quality"] / peer["quality"]])  # fmt: skip
        metric = "digits-FID" if problem == "digits" else "sliced W2"
        parts.append(f"### {problem}: {metric}, best configuration per budget\n\n")
        head = ["NFE", "best k-diffusion", metric, "ours, standard grid", metric,
                "ours, any grid", metric, "ours / peer"]  # fmt: skip
        parts.append(table(head, body) + "\n")
    if compared:
        head = ["problem", "solver", "method", "DP grid", "best standard grid", "fit", "test",
                "seconds"]  # fmt: skip
        body = [
            [r["problem"], r["solver"], r["method"], r["dp_grid_error"], r["best_standard"],
             r["fit_error"], r["test_error"], r["seconds"]]
            for r in compared
        ]  # fmt: skip
        parts.append("### Tuning methods at NFE 10 (endpoint RMS error)\n\n" + table(head, body))
        parts.append("\n")
    for problem in dict.fromkeys(r["problem"] for r in rows):
        mine = [r for r in rows if r["problem"] == problem and math.isfinite(r["error"])]
        body = []
        for budget in NFES:
            here = [r for r in mine if r["nfe_budget"] == budget and r["nfe"] <= budget]
            peer = min((r for r in here if r["library"] != "ours"), key=lambda r: r["error"])
            standard = min(
                (r for r in here if r["library"] == "ours" and not r["grid"].startswith("tuned")),
                key=lambda r: r["error"],
            )
            best = min((r for r in here if r["library"] == "ours"), key=lambda r: r["error"])
            body.append([
                budget,
                f"{peer['library']} {peer['method']} ({peer['grid']})", peer["error"],
                f"{standard['method']} ({standard['grid']})", standard["error"],
                f"{best['method']} ({best['grid']})", best["error"],
                best["error"] / peer["error"],
            ])  # fmt: skip
        parts.append(f"### {problem}: endpoint RMS error, best configuration per budget\n\n")
        head = ["NFE", "best peer", "error", "ours, standard grid", "error", "ours, any grid",
                "error", "ours / peer"]  # fmt: skip
        parts.append(table(head, body) + "\n")
        tuned = [r for r in mine if r["grid"].startswith("tuned")]
        lines = [
            [r["method"], r["grid"], r["nfe_budget"], r["fit_error"], r["error"],
             r["error"] / r["fit_error"], r["seconds"]]
            for r in tuned
        ]  # fmt: skip
        parts.append(f"### {problem}: tuned grids, fitting draws against test draws\n\n")
        parts.append(
            table(
                ["solver", "grid", "NFE", "fit error", "test error", "test / fit", "seconds"], lines
            )
            + "\n"
        )
        full = [
            [r["library"], r["method"], r["grid"], r["nfe_budget"], r["nfe"], r["error"]]
            for r in mine
        ]
        parts.append(f"<details><summary>{problem}: every configuration</summary>\n\n")
        parts.append(table(["library", "method", "grid", "budget", "NFE", "error"], full))
        parts.append("\n</details>\n\n")
    if payload.get("concentration"):
        head = ["problem", "NFE", "configuration", "error", "worst 1 % of draws: share of the "
                "squared error", "draws with error > 0.5", "draws",
                "ours / peer (95 % interval)"]  # fmt: skip
        body = [
            [r["problem"], r["nfe_budget"], f"{r['library']} {r['method']} ({r['grid']})",
             r["error"], r["worst_1pct_share"], r["far_draws"], r["draws"],
             f"{r['ratio']:.2f} ({r['ratio_low']:.2f}–{r['ratio_high']:.2f})" if "ratio" in r
             else ""]
            for r in sorted(payload["concentration"], key=lambda r: r["draws"])
        ]  # fmt: skip
        parts.append("### Where the error sits (ours and the best peer)\n\n")
        parts.append(
            f"Draws beyond the {TEST_DRAWS} test draws (`--draws`) are judged alone: they "
            "chose no row, so their ratio is an independent estimate.\n\n"
        )
        parts.append(table(head, body))
        parts.append("\n")
    return "".join(parts)


def _case(name: str, sigmas: tuple[float, float] | None = None, draws: int = TEST_DRAWS) -> Case:
    """A problem's test draws (the first ``TEST_DRAWS`` are the same for any ``draws``) from
    ``sigmas[0]`` (by default the first noise level of diffusers' Karras grid, the peers'
    start), with the exact denoiser on σ ∈ [0.002, σ_max] for our solvers."""
    if sigmas is None:
        grid = diffusers_grid(Peer("EulerDiscreteScheduler", {"use_karras_sigmas": True}, None), 10)
        sigmas = (grid[0], grid[-2])
    case = Case(name, draws, sigmas)
    case.score_edm = case.mixture.score_fn(sd.EDMSDE(0.002, case.sde.sigma_max))
    return case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", default="gmm8,gmm64")
    parser.add_argument("--report", action="store_true", help="rewrite the .md from the .json")
    parser.add_argument("--methods", action="store_true", help="compare the tuning methods only")
    parser.add_argument("--ours-only", action="store_true", help="keep the saved peer rows")
    parser.add_argument("--trained", action="store_true", help="the shipped models only")
    parser.add_argument(
        "--fitted-only", action="store_true", help="rerun only the tuned+weights rows"
    )
    parser.add_argument(
        "--tuned-only", action="store_true", help="rerun only the tuned rows of --solvers"
    )
    parser.add_argument(
        "--solvers", default=None, help="with --tuned-only: comma-separated (default: all)"
    )
    parser.add_argument(
        "--concentration", action="store_true", help="where the error sits, NFE 5 and 10"
    )
    parser.add_argument(
        "--draws",
        type=int,
        default=TEST_DRAWS,
        help="draws for --concentration; those past the 4096 test draws are judged alone",
    )
    args = parser.parse_args()
    saved = RESULTS / "low_nfe.json"
    only = "fitted" if args.fitted_only else "tuned" if args.tuned_only else None
    solvers = args.solvers.split(",") if args.solvers else TUNED
    if args.fitted_only and args.tuned_only:
        parser.error("--fitted-only and --tuned-only rerun different rows: choose one")
    if args.solvers and not args.tuned_only:  # a full run over some solvers would drop the rest
        parser.error("--solvers goes with --tuned-only")
    if not set(solvers) <= set(TUNED):
        parser.error(f"--solvers takes some of {', '.join(TUNED)}")

    def rerun_row(row: dict) -> bool:  # a saved row that this partial run replaces
        if only == "fitted":
            return row["grid"].startswith("tuned+weights")
        return row["grid"] == "tuned" and row["method"] in solvers

    if args.trained:
        payload = json.loads(saved.read_text())
        new = trained(sd.adapters.kdiffusion_sampling(), only=only, solvers=solvers)
        kept = [r for r in payload["trained"] if only is not None and not rerun_row(r)]
        payload["trained"] = kept + new
        write_results("low_nfe", payload, markdown(payload))
        return
    if args.methods:
        payload = json.loads(saved.read_text()) if saved.exists() else {"rows": []}
        payload["methods"] = []
        for name in args.problems.split(","):
            payload["methods"] += methods(_case(name, (80.0, 0.002)))
        write_results("low_nfe", payload, markdown(payload))
        return
    if args.concentration:
        payload = json.loads(saved.read_text())
        names = args.problems.split(",")
        judged = args.draws - TEST_DRAWS if args.draws > TEST_DRAWS else args.draws
        payload["concentration"] = [  # replace the rows of these problems on as many draws
            r for r in payload.get("concentration", [])
            if r["problem"] not in names or r["draws"] != judged
        ]  # fmt: skip
        for name in names:
            case = _case(name, draws=args.draws)
            payload["concentration"] += concentration(case, payload["rows"])
        write_results("low_nfe", payload, markdown(payload))
        return
    if args.report:
        rows = json.loads(saved.read_text())["rows"]
    else:
        kd = sd.adapters.kdiffusion_sampling()
        rows = []
        rerun = set(args.problems.split(","))
        if args.ours_only:  # keep the peers' rows, and ours on the problems not rerun
            rows = [
                r
                for r in json.loads(saved.read_text())["rows"]
                if r["library"] != "ours" or r["problem"] not in rerun
            ]
        if only is not None:  # keep every row but those rerun, on the problems rerun
            rows = [
                r
                for r in json.loads(saved.read_text())["rows"]
                if not rerun_row(r) or r["problem"] not in rerun
            ]
        for name in args.problems.split(","):
            case = _case(name)
            if only == "tuned":
                rows += tuned_rows(case, solvers)
                continue
            if not args.ours_only and only is None:
                rows += diffusers(case)
                if kd is not None:
                    rows += k_diffusion(case, kd)
            if only is None:
                rows += ours(case)
            rows += fitted(case)
    previous = json.loads(saved.read_text()) if saved.exists() else {}
    if not args.report and "concentration" in previous:  # keep it where the best rows stand
        key = ("problem", "nfe_budget", "library", "method", "grid")
        still = [
            r for r in previous["concentration"]
            if any(all(b[k] == r[k] for k in key)
                   for b in _best_pair(rows, r["problem"], r["nfe_budget"]))
        ]  # fmt: skip
        if len(still) < len(previous["concentration"]):
            print("best rows changed: rerun --concentration for where their error sits")
        previous["concentration"] = still
    previous["rows"] = rows
    md = markdown(previous)
    write_results("low_nfe", previous, md)
    print(md)


if __name__ == "__main__":
    main()
