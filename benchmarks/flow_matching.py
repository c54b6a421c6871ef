"""Flow matching beside the shipped VP model on moons: sliced W2 at equal NFE.

    python benchmarks/flow_matching.py [--checkpoint runs/moons-flow.safetensors] [--nfe 20]

The flow-matching model is the one the documented command trains (run here if the
checkpoint is missing; about 90 s on 2 cores):

    sdediff train --data moons --sde rectified_flow --parametrization velocity \\
        --loss-weighting flow --steps 3500 --batch-size 512 --ema 0.998 \\
        --out runs/moons-flow.safetensors

the same network, steps, batch, learning rate and EMA as the shipped ``moons`` model
(``benchmarks/train_toy_model.py``: EDM preconditioning, VP SDE, EDM weighting).  Each
model draws 4000 samples with each of six deterministic solvers at ``--nfe`` on four grids
(karras, logsnr, uniform, quadratic; to t = 0; five seeds); the metric is sliced W2 to 4000
fresh data points, median over the seeds.  A model is judged at its best solver and grid:
straight flow paths favour grids that are uniform in t, the VP model the log-SNR grid.
Writes ``benchmarks/results/flow_matching.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from common import fmt, write_results

import sde_diffusion as sd
from sde_diffusion.evaluation.benchmark import steps_for_nfe
from sde_diffusion.evaluation.metrics import noise_floor, sliced_wasserstein
from sde_diffusion.evaluation.problems import load_problem
from sde_diffusion.training.data import toy_2d

COMMAND = [
    "train", "--data", "moons", "--sde", "rectified_flow", "--parametrization", "velocity",
    "--loss-weighting", "flow", "--steps", "3500", "--batch-size", "512", "--ema", "0.998",
]  # fmt: skip
SOLVERS = ("euler", "heun", "lms", "dpmpp_2m", "dpmpp_3m", "unipc")
GRIDS = ("karras", "logsnr", "uniform", "quadratic")


def quality(spec: str, solver: str, grid: str, nfe: int, seeds: int) -> float:
    problem = load_problem(spec)
    steps = steps_for_nfe(solver, nfe)
    values = []
    for seed in range(seeds):
        with torch.no_grad():
            res = sd.sample(
                problem.model, problem.sde, (4000, 2), solver, steps, grid, to_zero=True, seed=seed
            )
        assert res.nfe <= nfe
        real = toy_2d("moons", 4000, seed=500 + seed)
        generator = torch.Generator().manual_seed(seed)
        values.append(sliced_wasserstein(problem.to_data_units(res.x), real, generator=generator))
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/moons-flow.safetensors"))
    parser.add_argument("--nfe", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    if not args.checkpoint.exists():
        command = [sys.executable, "-m", "sde_diffusion", *COMMAND, "--out", str(args.checkpoint)]
        subprocess.run(command, check=True)
    models = {"VP, EDM preconditioning (shipped moons)": "moons",
              "rectified flow, velocity (flow matching)": str(args.checkpoint)}  # fmt: skip
    rows = [
        {"model": name, "solver": solver, "grid": grid}
        | {"sliced_w2": quality(spec, solver, grid, args.nfe, args.seeds)}
        for name, spec in models.items()
        for solver in SOLVERS
        for grid in GRIDS
    ]
    floor = noise_floor(lambda n, s: toy_2d("moons", n, seed=1000 + s), 4000)
    best = {
        name: min((r for r in rows if r["model"] == name), key=lambda r: r["sliced_w2"])
        for name in models
    }
    vp_name, flow_name = models
    ratio = best[flow_name]["sliced_w2"] / best[vp_name]["sliced_w2"]
    lines = [
        f"| solver (NFE ≤ {args.nfe}) | grid | " + " | ".join(models) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in models) + " |",
    ]
    for solver in SOLVERS:
        for grid in GRIDS:
            cells = [
                fmt(r["sliced_w2"]) for r in rows if r["solver"] == solver and r["grid"] == grid
            ]
            lines.append(f"| `{solver}` | {grid} | " + " | ".join(cells) + " |")
    summary = ", ".join(
        f"{name}: `{r['solver']}` on {r['grid']}, {fmt(r['sliced_w2'])}" for name, r in best.items()
    )
    markdown = (
        f"Sliced W2 to fresh moons data (median of {args.seeds} seeds × 4000 samples; the noise "
        f"floor between two real sets is {fmt(floor)}).\n\n" + "\n".join(lines) + "\n\n"
        f"Best of each: {summary}. Best flow / best VP: {ratio:.2f}×.\n"
    )
    write_results(
        "flow_matching",
        {"rows": rows, "noise_floor": floor, "nfe": args.nfe, "best_ratio": ratio},
        markdown,
    )
    print(markdown)


if __name__ == "__main__":
    main()
