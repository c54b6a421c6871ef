"""Parity with peer samplers on identical work.

The EDM formulation (``EDMSDE``, sigma in [0.002, 80], Karras rho=7 grid ending at 0)
with the exact Gaussian-mixture denoiser D(x, sigma) = x + sigma^2 score.  Our
``euler``, ``heun``, ``lms`` and ``dpmpp_2m`` run on the same grid from the same x_T
as k-diffusion's ``sample_euler``/``sample_heun``/``sample_lms``/``sample_dpmpp_2m``
and diffusers' ``EDMEulerScheduler``/``EDMDPMSolverMultistepScheduler``; the error
is the endpoint RMS per dimension against DOP853 at rtol = atol = 1e-10 of the same
PF-ODE.  Speed: wall time for 4096 2-D samples at NFE 50, medians of interleaved
repeats.

    pip install "diffusers>=0.30" torchdiffeq tqdm && pip install --no-deps k-diffusion
    python benchmarks/peer_parity.py            # writes benchmarks/results/peer_parity.*

k-diffusion's package ``__init__`` imports torchvision and wandb; its ``sampling``
module needs only ``utils.append_dims``, so it is loaded from the installed file with
that one helper beside it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import torch

import sde_diffusion as sd

RESULTS = Path(__file__).parent / "results"
NFES = [5, 10, 20, 50, 100]
SAME_NAMED = ["euler", "heun", "lms", "dpmpp_2m"]


def load_k_diffusion_sampling():
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        return None
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = sd.append_dims
    sys.modules.update({"k_diffusion": package, "k_diffusion.utils": utils})
    return importlib.import_module("k_diffusion.sampling")


def steps_for(method: str, nfe: int) -> int:
    """Steps on a grid ending at 0 that spend ``nfe`` evaluations (Heun: 2 N - 1)."""
    return max(2, round((nfe + 1) / 2)) if method == "heun" else max(2, nfe)


class Problem:
    def __init__(self, name: str, gmm: sd.GaussianMixture, n: int, seed: int = 0):
        self.name, self.gmm, self.sde = name, gmm, sd.EDMSDE()
        self.score = gmm.score_fn(self.sde)
        g = torch.Generator().manual_seed(seed)
        self.x_T = self.sde.prior_sample((n, gmm.dim), generator=g)
        self._refs: dict[int, torch.Tensor] = {}

    def denoiser(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.gmm.denoise(self.sde, x, sigma)

    def grid(self, steps: int) -> torch.Tensor:
        return sd.timesteps(self.sde, steps, "karras", to_zero=True)

    def reference(self) -> torch.Tensor:
        if not self._refs:
            ts = self.grid(2)
            self._refs[0] = sd.solve(
                self.score, self.sde, self.x_T.double(), ts, "dop853", rtol=1e-10, atol=1e-10
            )
        return self._refs[0]

    def error(self, x: torch.Tensor) -> float:
        return float((x.double() - self.reference()).pow(2).mean().sqrt())


def ours(problem: Problem, method: str, steps: int) -> tuple[torch.Tensor, int]:
    counter = sd.CountingScore(problem.score)
    x = sd.solve(counter, problem.sde, problem.x_T, problem.grid(steps), method)
    return x, counter.nfe


def k_diffusion_run(kd, problem: Problem, method: str, steps: int) -> tuple[torch.Tensor, int]:
    calls = []

    def model(x, sigma):
        calls.append(1)
        return problem.denoiser(x, sigma)

    sigmas = problem.grid(steps).to(problem.x_T.dtype)
    fn = getattr(kd, f"sample_{method}")
    return fn(model, problem.x_T.clone(), sigmas, disable=True), len(calls)


def diffusers_run(problem: Problem, method: str, steps: int) -> tuple[torch.Tensor, int]:
    from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

    if method == "euler":
        sched = EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, rho=7.0)
    else:
        sched = EDMDPMSolverMultistepScheduler(
            sigma_min=0.002, sigma_max=80.0, rho=7.0, solver_order=2, algorithm_type="dpmsolver++"
        )
    sched.set_timesteps(steps)
    x, nfe, sigma_data = problem.x_T.clone(), 0, sched.config.sigma_data
    for t in sched.timesteps:
        sched.scale_model_input(x, t)  # the call a pipeline makes; our model reads x itself
        sigma = sched.sigmas[sched.step_index if sched.step_index is not None else 0]
        denoised = problem.denoiser(x, sigma.to(x.dtype).expand(x.shape[0]))
        nfe += 1
        if method == "euler":
            x = sched.step(torch.zeros_like(x), t, x, pred_original_sample=denoised).prev_sample
        else:  # an epsilon-prediction output that preconditions to exactly `denoised`
            c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
            c_out = sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
            x = sched.step((denoised - c_skip * x) / c_out, t, x).prev_sample
    return x, nfe


def accuracy(problems, kd) -> list[dict]:
    rows = []
    for problem in problems:
        for method in SAME_NAMED:
            for nfe in NFES:
                steps = steps_for(method, nfe)
                x, used = ours(problem, method, steps)
                row = {
                    "problem": problem.name,
                    "method": method,
                    "steps": steps,
                    "nfe": used,
                    "ours": problem.error(x),
                }
                if kd is not None:
                    xk, nk = k_diffusion_run(kd, problem, method, steps)
                    assert nk == used, (method, nk, used)
                    row["k_diffusion"] = problem.error(xk)
                if method in ("euler", "dpmpp_2m"):
                    xd, nd = diffusers_run(problem, method, steps)
                    assert nd == used, (method, nd, used)
                    row["diffusers"] = problem.error(xd)
                rows.append(row)
                print(json.dumps(row))
    return rows


def speed(problem: Problem, kd, repeats: int) -> list[dict]:
    """Median wall time of interleaved runs at NFE 50 (solver overhead: analytic score)."""
    runs = {
        ("euler", "ours"): lambda: ours(problem, "euler", 50),
        ("euler", "diffusers"): lambda: diffusers_run(problem, "euler", 50),
        ("dpmpp_2m", "ours"): lambda: ours(problem, "dpmpp_2m", 50),
        ("dpmpp_2m", "diffusers"): lambda: diffusers_run(problem, "dpmpp_2m", 50),
    }
    if kd is not None:
        runs[("euler", "k_diffusion")] = lambda: k_diffusion_run(kd, problem, "euler", 50)
        runs[("dpmpp_2m", "k_diffusion")] = lambda: k_diffusion_run(kd, problem, "dpmpp_2m", 50)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    score_only = []
    t_grid = problem.grid(50)[:-1].tolist()
    for _ in range(repeats):
        start = time.perf_counter()
        for t in t_grid:  # the analytic score alone, 50 calls: the floor every loop pays
            problem.score(problem.x_T, torch.full((problem.x_T.shape[0],), t))
        score_only.append(time.perf_counter() - start)
        for key, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    rows = []
    floor = statistics.median(score_only)
    for (method, library), ts in times.items():
        median = statistics.median(ts)
        rows.append(
            {
                "method": method,
                "library": library,
                "median_s": median,
                "overhead_s": median - floor,
                "samples_per_s": problem.x_T.shape[0] / median,
            }
        )
    for row in rows:
        base = next(r for r in rows if r["method"] == row["method"] and r["library"] == "diffusers")
        row["ratio_to_diffusers"] = row["median_s"] / base["median_s"]
        row["overhead_ratio_to_diffusers"] = row["overhead_s"] / base["overhead_s"]
    print(json.dumps({"score_only_median_s": floor}))
    return rows, floor


def markdown(acc: list[dict], spd: list[dict], floor: float, machine: str) -> str:
    lines = [
        f"Machine: {machine}",
        "",
        "### Endpoint RMS error per dimension (EDM, Karras rho=7)",
        "",
        "| problem | method | NFE | ours | k-diffusion | ours/k-diff | diffusers |"
        " ours/diffusers |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in acc:
        kd, df = r.get("k_diffusion"), r.get("diffusers")
        lines.append(
            f"| {r['problem']} | {r['method']} | {r['nfe']} | {r['ours']:.3e} | "
            + (f"{kd:.3e} | {r['ours'] / kd:.3f} | " if kd else "– | – | ")
            + (f"{df:.3e} | {r['ours'] / df:.3f} |" if df else "– | – |")
        )
    lines += [
        "",
        f"### Speed: 4096 2-D samples, NFE 50, analytic score (score alone: {floor * 1e3:.1f} ms)",
        "",
        "| method | library | median ms | overhead ms |"
        " samples/s | time / diffusers | overhead / diffusers |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in spd:
        lines.append(
            f"| {r['method']} | {r['library']} | {r['median_s'] * 1e3:.1f} | "
            f"{r['overhead_s'] * 1e3:.1f} | {r['samples_per_s']:.0f} | "
            f"{r['ratio_to_diffusers']:.2f} | {r['overhead_ratio_to_diffusers']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(acc: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = sorted({r["problem"] for r in acc})
    fig, axes = plt.subplots(1, len(problems), figsize=(6 * len(problems), 4.5), squeeze=False)
    for ax, name in zip(axes[0], problems, strict=True):
        for i, method in enumerate(SAME_NAMED):
            rows = [r for r in acc if r["problem"] == name and r["method"] == method]
            nfe = [r["nfe"] for r in rows]
            ax.loglog(nfe, [r["ours"] for r in rows], "-o", color=f"C{i}", label=f"{method} (ours)")
            if "k_diffusion" in rows[0]:
                ax.loglog(
                    nfe,
                    [r["k_diffusion"] for r in rows],
                    "--x",
                    color=f"C{i}",
                    label=f"{method} (k-diffusion)",
                )
        ax.set(title=f"{name}: EDM, Karras grid", xlabel="NFE", ylabel="endpoint RMS error")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    kd = load_k_diffusion_sampling()
    problems = [
        Problem("ring2d", sd.eight_gaussians(), 4096),
        Problem("gmm64", sd.high_dim_mixture(), 1024),
    ]
    machine = (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
    acc = accuracy(problems, kd)
    spd, floor = speed(problems[0], kd, args.repeats)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "peer_parity.json").write_text(
        json.dumps(
            {"machine": machine, "accuracy": acc, "speed": spd, "score_only_s": floor}, indent=1
        )
    )
    (RESULTS / "peer_parity.md").write_text(markdown(acc, spd, floor, machine))
    plot(acc, RESULTS / "peer_parity.png")
    print(markdown(acc, spd, floor, machine))


if __name__ == "__main__":
    main()
