"""Per-step solver overhead beside k-diffusion's same-named samplers.

    pip install -e ".[peers]" && pip install --no-deps k-diffusion
    python benchmarks/overhead.py          # writes benchmarks/results/overhead.{json,md}

With a free model, ``D(x, sigma) = x / (1 + sigma^2)`` on a batch of 16 x 8
float32 values, a step costs only what the library adds around the model: the
time arithmetic, the conversions and the update.  Both libraries integrate the
EDM PF-ODE on the same 50-step Karras grid ending at sigma = 0 from the same
x_T; ours reaches the denoiser through ``adapters.from_kdiffusion``
(``--score-fn`` passes it as a plain ``score_fn(x, t)`` instead, the only form
older versions take).  Wall time per step is the median over interleaved
repeats of a whole solve, divided by the step count.  The aten-op count per
step is read from the torch profiler: top-level ``aten::`` calls of one solve,
divided by the step count (nested calls inside an op are not counted).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import fmt, table, write_results

import sde_diffusion as sd

METHODS = ("euler", "heun", "lms", "dpmpp_2m")
STEPS = 50


def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The free model: exact for data N(0, I) under x_sigma = x_0 + sigma eps."""
    return x / (1 + sd.append_dims(sigma, x.ndim) ** 2)


def our_run(method: str, x_T: torch.Tensor, sigmas: torch.Tensor, score_fn: bool):
    sde = sd.EDMSDE(sigma_min=float(sigmas[-2]), sigma_max=float(sigmas[0]))
    if score_fn:
        model = lambda x, t: (denoiser(x, t) - x) / sd.append_dims(t, x.ndim) ** 2  # noqa: E731
    else:
        model, _ = sd.adapters.from_kdiffusion(denoiser)
    solver = sd.get_solver(method)
    return lambda: sd.solve(model, sde, x_T, sigmas, solver)


def kdiffusion_run(kd, method: str, x_T: torch.Tensor, sigmas: torch.Tensor):
    fn = getattr(kd, f"sample_{method}")
    return lambda: fn(denoiser, x_T.clone(), sigmas, disable=True)


def aten_ops(fn) -> int:
    """Top-level aten calls of one run of ``fn`` (nested calls inside an op not counted)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    count = 0
    for event in prof.events():
        parent = event.cpu_parent
        if event.name.startswith("aten::") and not (
            parent is not None and parent.name.startswith("aten::")
        ):
            count += 1
    return count


def timed(runs: dict, repeats: int) -> dict:
    with torch.inference_mode():
        for fn in runs.values():
            fn()
        times: dict = {key: [] for key in runs}
        for _ in range(repeats):
            for key, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
    return {key: statistics.median(ts) for key, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=41)
    parser.add_argument("--score-fn", action="store_true", help="pass a plain score_fn(x, t)")
    parser.add_argument("--name", default="overhead", help="results file name")
    args = parser.parse_args()
    torch.set_num_threads(1)

    kd = sd.adapters.kdiffusion_sampling()
    x_T = 80.0 * torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    sigmas = torch.cat([sd.timesteps(sd.EDMSDE(), STEPS, "karras").float(), torch.zeros(1)])
    sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])  # 50 steps: 49 Karras levels, then 0
    runs = {}
    for method in METHODS:
        runs[(method, "ours")] = our_run(method, x_T, sigmas, args.score_fn)
        runs[(method, "k-diffusion")] = kdiffusion_run(kd, method, x_T, sigmas)
    with torch.inference_mode():
        ops = {key: aten_ops(fn) / STEPS for key, fn in runs.items()}
        agree = {
            m: float((runs[(m, "ours")]().x - runs[(m, "k-diffusion")]()).abs().max())
            for m in METHODS
        }
    times = timed(runs, args.repeats)
    rows = []
    for method in METHODS:
        ours, theirs = times[(method, "ours")], times[(method, "k-diffusion")]
        rows.append(
            {
                "method": method,
                "ours_us_per_step": 1e6 * ours / STEPS,
                "kdiffusion_us_per_step": 1e6 * theirs / STEPS,
                "ratio": ours / theirs,
                "ours_aten_ops_per_step": ops[(method, "ours")],
                "kdiffusion_aten_ops_per_step": ops[(method, "k-diffusion")],
                "max_abs_difference": agree[method],
            }
        )
    markdown = (
        f"Free model D(x, σ) = x / (1 + σ²), batch 16×8 float32, {STEPS} Karras steps to σ = 0, "
        f"one torch thread, medians of {args.repeats} interleaved repeats.\n\n"
        + table(
            [
                "method",
                "ours µs/step",
                "k-diffusion µs/step",
                "ratio",
                "ours ops/step",
                "k-diffusion ops/step",
                "max |Δx|",
            ],
            [
                [
                    r["method"],
                    r["ours_us_per_step"],
                    r["kdiffusion_us_per_step"],
                    r["ratio"],
                    r["ours_aten_ops_per_step"],
                    r["kdiffusion_aten_ops_per_step"],
                    r["max_abs_difference"],
                ]
                for r in rows
            ],
        )
    )
    write_results(args.name, {"steps": STEPS, "repeats": args.repeats, "rows": rows}, markdown)
    print(markdown)
    print("ratios:", ", ".join(f"{r['method']} {fmt(r['ratio'])}" for r in rows))


if __name__ == "__main__":
    main()
