"""Every registered solver at NFE 5-200: endpoint error, sample quality, convergence slope.

    python benchmarks/solver_quality.py --suite analytic   # ring (gmm8) and gmm64, EDM and VP
    python benchmarks/solver_quality.py --suite trained    # the shipped moons and digits models

Each problem runs every fixed-grid solver on a Karras (rho = 7) and a log-SNR
grid from one prior draw (``PerSampleNoise(0)``), through
``sde_diffusion.evaluation.benchmark.compare_solvers`` (the code behind ``sdediff bench``).
``error`` is the endpoint RMS per dimension against DOP853 at rtol = atol =
1e-10 from the same x_T (deterministic solvers, exact scores only);
``quality`` is sliced W2 to fresh exact samples (digits: digits-FID to the test
set), next to its noise floor: the metric of the DOP853 endpoints themselves
(analytic problems), else of exact or training samples (median of 5 sets).
Slopes are least-squares fits of log error on log NFE over budgets >= 20.
Writes ``results/solver_quality_<suite>.{json,md}`` and PNGs per problem, SDE and grid.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

import torch
from common import RESULTS, fmt, pivot, table, write_results

from sde_diffusion.evaluation.benchmark import (
    compare_solvers,
    convergence_slope,
    ends_at_zero,
    fixed_grid_solvers,
    reference_endpoints,
)
from sde_diffusion.evaluation.problems import load_problem
from sde_diffusion.plotting import save_error_plot

BOTH = ("karras", "logsnr")
SUITES = {  # (problem, SDE, samples, grids) and the NFE budgets
    "analytic": {
        "problems": [("gmm8", "edm", 1024, BOTH), ("gmm64", "edm", 512, BOTH),
                     ("gmm8", "vp", 1024, BOTH), ("gmm64", "vp", 256, BOTH)],
        "nfes": [5, 10, 20, 50, 100, 200],
    },
    "trained": {  # a U-Net evaluation on CPU costs what thousands of analytic ones do
        "problems": [("moons", None, 1024, ("karras",)), ("digits", None, 256, ("karras",))],
        "nfes": [5, 10, 20, 50],
    },
}  # fmt: skip


def noise_floor(problem, n: int, reference=None, repeats: int = 5) -> float:
    """What a perfect solver scores: the metric of the exact PF-ODE endpoints from the same
    draw where known, else the median over exact (or training) sample sets of size ``n``."""
    if reference is not None:
        return problem.quality(reference.float(), 0)
    if problem.is_digits:  # the reference is the fixed test set: FID of the training images
        from sde_diffusion.training.data import digits

        train = digits("train").x
        subsets = (torch.randperm(len(train), generator=torch.Generator().manual_seed(s))[:n]
                   for s in range(repeats))  # fmt: skip
        return statistics.median(problem.quality(train[rows], 0) for rows in subsets)
    return statistics.median(
        problem.quality(problem.reference(n, 1000 + s), s) for s in range(repeats)
    )


def slopes(rows: list[dict]) -> dict[str, float]:
    out = {}
    for solver in dict.fromkeys(r["solver"] for r in rows):
        pts = [(r["nfe"], r["error"]) for r in rows if r["solver"] == solver and r["nfe"] >= 20]
        pts = [(n, e) for n, e in pts if math.isfinite(e)]
        if len(pts) >= 2:
            out[solver] = convergence_slope(*zip(*pts, strict=True))
    return out


def best_per_budget(rows: list[dict], value: str, nfes: list[int]) -> list[list]:
    """The lowest ``value`` at each budget over solvers and grids, with the runner-up."""
    out = []
    for nfe in nfes:
        cands = sorted(
            (r for r in rows if r["nfe_budget"] == nfe and math.isfinite(r[value])),
            key=lambda r: r[value],
        )
        if cands:
            best = cands[0]
            second = cands[1] if len(cands) > 1 else None
            out.append(
                [
                    nfe,
                    f"{best['solver']} ({best['schedule']})",
                    best[value],
                    f"{second['solver']} ({second['schedule']})" if second else "–",
                    second[value] if second else float("nan"),
                ]
            )
    return out


def run_problem(name: str, sde: str | None, n: int, schedules, nfes: list[int]) -> dict:
    problem = load_problem(name, sde=sde or "edm")
    sde_name = sde or type(problem.sde).__name__
    solvers = fixed_grid_solvers()
    reference = None
    if problem.mixture is not None:
        reference = reference_endpoints(problem, n, 0, ends_at_zero(problem), "cpu")
    rows = []
    for schedule in schedules:

        def show(row, schedule=schedule):
            print(json.dumps({"problem": name, "sde": sde_name, "schedule": schedule, **row}))

        for row in compare_solvers(
            problem,
            solvers,
            nfes,
            num_samples=n,
            schedule=schedule,
            on_row=show,
            reference=reference,
        ):
            rows.append({"problem": name, "sde": sde_name, "schedule": schedule, **row})
    floor = noise_floor(problem, n, reference)
    return {
        "problem": name,
        "sde": sde_name,
        "num_samples": n,
        "metric": problem.metric_name,
        "noise_floor": floor,
        "schedules": list(schedules),
        "slopes": {s: slopes([r for r in rows if r["schedule"] == s]) for s in schedules},
        "rows": rows,
    }


def markdown(results: list[dict], nfes: list[int]) -> str:
    head = ["solver", *(f"NFE {n}" for n in nfes)]
    parts = []
    for res in results:
        title = f"{res['problem']}, {res['sde']}, {res['num_samples']} samples"
        rows = res["rows"]
        has_error = any(math.isfinite(r["error"]) for r in rows)
        if has_error:
            parts.append(f"### {title}: best endpoint error per budget\n")
            parts.append(
                table(
                    ["NFE", "best", "error", "runner-up", "error"],
                    best_per_budget(rows, "error", nfes),
                )
            )
        parts.append(
            f"\n### {title}: best {res['metric']} per budget "
            f"(noise floor {fmt(res['noise_floor'])})\n"
        )
        parts.append(
            table(
                ["NFE", "best", res["metric"], "runner-up", res["metric"]],
                best_per_budget(rows, "quality", nfes),
            )
        )
        for schedule in res.get("schedules", BOTH):
            sub = [r for r in rows if r["schedule"] == schedule]
            if has_error:
                det = [r for r in sub if math.isfinite(r["error"])]
                slope = res["slopes"][schedule]
                body = [
                    [*line, slope.get(line[0], float("nan"))]
                    for line in pivot(det, "solver", "error", nfes)
                ]
                parts.append(f"\n#### {title}, {schedule} grid: endpoint RMS error\n")
                parts.append(table([*head, "slope"], body))
            parts.append(f"\n#### {title}, {schedule} grid: {res['metric']}\n")
            parts.append(table(head, pivot(sub, "solver", "quality", nfes)))
        parts.append("\n")
    return "".join(parts)


def plots(results: list[dict], suite: str) -> None:
    for res in results:
        for schedule in res.get("schedules", BOTH):
            sub = [r for r in res["rows"] if r["schedule"] == schedule]
            stem = f"solver_quality_{suite}_{res['problem']}_{res['sde']}_{schedule}".lower()
            title = f"{res['problem']}, {res['sde']}, {schedule} grid"
            if any(math.isfinite(r["error"]) for r in sub):
                save_error_plot(sub, RESULTS / f"{stem}_error.png", title=title)
            save_error_plot(
                sub,
                RESULTS / f"{stem}_{res['metric']}.png",
                y="quality",
                ylabel=res["metric"],
                title=f"{title} (floor {fmt(res['noise_floor'])})",
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", choices=list(SUITES), default="analytic")
    parser.add_argument("--only", help="one problem, e.g. gmm64:vp; merged into saved results")
    parser.add_argument("--report", action="store_true", help="rewrite tables and plots only")
    args = parser.parse_args()
    suite, name = SUITES[args.suite], f"solver_quality_{args.suite}"
    saved = RESULTS / f"{name}.json"
    if args.report:
        results = json.loads(saved.read_text())["results"]
        kept = set(fixed_grid_solvers())  # CFG++ rows of older runs: their base samplers
        for res in results:
            res["rows"] = [r for r in res["rows"] if r["solver"] in kept]
        write_results(name, {"results": results}, markdown(results, suite["nfes"]))
        plots(results, args.suite)
        return
    done = (
        {(r["problem"], r["sde"]): r for r in json.loads(saved.read_text())["results"]}
        if (args.only and saved.exists())
        else {}
    )
    for problem, sde, n, schedules in suite["problems"]:
        if args.only in (None, f"{problem}:{sde}"):
            res = run_problem(problem, sde, n, schedules, suite["nfes"])
            done[(res["problem"], res["sde"])] = res
            results = list(done.values())  # written after each problem
            write_results(name, {"results": results}, markdown(results, suite["nfes"]))
    plots(results, args.suite)
    print(markdown(results, suite["nfes"]))


if __name__ == "__main__":
    main()
