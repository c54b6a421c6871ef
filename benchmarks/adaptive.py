"""Adaptive Dormand–Prince in the one loop beside scipy's ``solve_ivp``.

    python benchmarks/adaptive.py          # writes benchmarks/results/adaptive.{json,md}

On gmm8 and gmm64 (exact scores, EDM, one interval from T to t_min, 1024 prior draws in
float64) ours (``rk45``, ``dop853``: every sample with its own steps and error norm, on
the device) and scipy's ``solve_ivp`` (``RK45``, ``DOP853`` over the flattened batch,
one error norm, the state crossing to NumPy at every evaluation) solve at
rtol = atol = 1e-6.  Endpoint error: RMS over samples of the L2 distance to scipy's DOP853
at 1e-11.  NFE: model calls (scipy's ``nfev``).  Throughput: samples per second, the
median of ``--repeats`` interleaved runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
from common import table, write_results
from scipy.integrate import solve_ivp

import sde_diffusion as sd
from sde_diffusion.reverse import ReverseProcess

PROBLEMS = {"gmm8": sd.eight_gaussians, "gmm64": sd.high_dim_mixture}
METHODS = {"rk45": "RK45", "dop853": "DOP853"}


def scipy_endpoint(model, sde, x, method: str, tol: float) -> tuple[torch.Tensor, int]:
    process = ReverseProcess(model, sde, x)

    def velocity(t, y):
        return process.velocity(torch.from_numpy(y).reshape(x.shape), float(t)).numpy().ravel()

    sol = solve_ivp(
        velocity, (sde.T, sde.t_min), x.numpy().ravel(), method=method, rtol=tol, atol=tol
    )
    return torch.from_numpy(sol.y[:, -1].copy()).reshape(x.shape), sol.nfev


def our_endpoint(model, sde, x, name: str, tol: float) -> tuple[torch.Tensor, int]:
    res = sd.solve(model, sde, x, sd.timesteps(sde, 1), name, rtol=tol, atol=tol)
    return res.x, res.nfe


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).flatten(1).pow(2).sum(1).mean().sqrt())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tol", type=float, default=1e-6)
    args = parser.parse_args()
    rows = []
    for problem, make in PROBLEMS.items():
        mixture, sde = make(), sd.EDMSDE()
        model = mixture.score_fn(sde)
        g = torch.Generator().manual_seed(0)
        x = sde.prior_sample((args.batch, mixture.dim), generator=g, dtype=torch.float64)
        reference, _ = scipy_endpoint(model, sde, x, "DOP853", 1e-11)
        for ours, theirs in METHODS.items():
            runs = {
                "scipy": partial(scipy_endpoint, model, sde, x, theirs, args.tol),
                "ours": partial(our_endpoint, model, sde, x, ours, args.tol),
            }
            times = {k: [] for k in runs}
            results = {}
            for _ in range(args.repeats):
                for key, run in runs.items():
                    start = time.perf_counter()
                    results[key] = run()
                    times[key].append(time.perf_counter() - start)
            row = {"problem": problem, "solver": ours}
            for key, (end, nfe) in results.items():
                row[f"{key}_error"] = rms(end, reference)
                row[f"{key}_nfe"] = nfe
                row[f"{key}_samples_per_s"] = args.batch / statistics.median(times[key])
            rows.append(row)
            print(row, flush=True)
    header = [
        "problem",
        "solver",
        "error (ours)",
        "error (scipy)",
        "ratio",
        "NFE (ours)",
        "NFE (scipy)",
        "ratio",
        "samples/s (ours)",
        "samples/s (scipy)",
        "ratio",
    ]
    lines = [
        [
            r["problem"],
            r["solver"],
            r["ours_error"],
            r["scipy_error"],
            r["ours_error"] / r["scipy_error"],
            r["ours_nfe"],
            r["scipy_nfe"],
            r["ours_nfe"] / r["scipy_nfe"],
            round(r["ours_samples_per_s"]),
            round(r["scipy_samples_per_s"]),
            r["ours_samples_per_s"] / r["scipy_samples_per_s"],
        ]
        for r in rows
    ]
    settings = {"batch": args.batch, "repeats": args.repeats, "tol": args.tol}
    intro = (
        f"rtol = atol = {args.tol:g}, {args.batch} draws (float64), EDM, T -> t_min; error: "
        "RMS endpoint distance to scipy's DOP853 at 1e-11; samples/s: median of "
        f"{args.repeats} interleaved runs.\n\n"
    )
    write_results("adaptive", {"settings": settings, "rows": rows}, intro + table(header, lines))


if __name__ == "__main__":
    main()
