"""Peers on identical work: diffusers schedulers and k-diffusion samplers beside ours.

    pip install -e ".[peers]"
    python benchmarks/peers.py           # writes benchmarks/results/peers.{json,md,png}

Accuracy.  The EDM PF-ODE (x_sigma = x_0 + sigma eps) of the ring (gmm8) and
of gmm64, with the exact mixture denoiser.  diffusers schedulers run with
``prediction_type="sample"`` on a training schedule of 1000 noise levels
spread like a Karras (rho = 7) grid over sigma in [0.002, 80] (given to them as
``trained_betas``), so ``use_karras_sigmas=True`` yields EDM's grid; DDIM and
DDPM take "trailing" timesteps of that schedule.  The schedulers that keep x
in VP units (x_sigma / sqrt(1 + sigma^2): DPM-Solver, UniPC, DDIM, DDPM) get
x_T in those units; their endpoint at sigma = 0 is in data units either way.
Our solvers run on exactly the grid each scheduler uses, from the same x_T
(``PerSampleNoise(0)``); k-diffusion's samplers on the same grid too.  Error:
endpoint RMS per dimension against DOP853 at rtol = atol = 1e-10; stochastic
methods (Euler ancestral, DDPM) are judged by sliced W2 to exact samples.

Speed.  NFE 50, medians of interleaved repeats in one run: (a) the ring with the
analytic score, 4096 samples (solver overhead); (b) the shipped digits U-Net
(VP, 256 images), where diffusers runs the way a pipeline runs an
epsilon-prediction model on its default linear-beta schedule.  Memory: peak
resident-set growth of a fresh process per run (CPU) or
``torch.cuda.max_memory_allocated`` (GPU).

k-diffusion's package ``__init__`` imports torchvision and wandb; its
``sampling`` module needs only ``utils.append_dims``, so it is loaded from the
installed file with that one helper beside it (``pip install --no-deps k-diffusion``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from common import RESULTS, fmt, machine, table, write_results

import sde_diffusion as sd
from sde_diffusion.evaluation.benchmark import fixed_grid_solvers, steps_for_nfe
from sde_diffusion.evaluation.problems import load_problem
from sde_diffusion.parametrization import convert
from sde_diffusion.plotting import save_error_plot

NFES = [5, 10, 20, 50, 100, 200]
SIGMA_MIN, SIGMA_MAX, TRAIN_LEVELS = 0.002, 80.0, 1000


@dataclass
class Peer:
    """A diffusers scheduler, how to build it, and our method of the same name."""

    scheduler: str
    options: dict[str, Any]
    ours: str | None  # registry name of the same method, if we have it
    ours_options: dict[str, Any] = field(default_factory=dict)
    vp_units: bool = False  # x kept as x_sigma / sqrt(1 + sigma^2)
    stochastic: bool = False
    k_diffusion: str | None = None  # k-diffusion sampler of the same method
    prediction: str = "sample"  # or "epsilon" where "sample" is not implemented


KARRAS = {"use_karras_sigmas": True}
TRAILING = {"timestep_spacing": "trailing", "clip_sample": False}
PEERS = {
    "euler": Peer("EulerDiscreteScheduler", KARRAS, "euler", k_diffusion="euler"),
    "heun": Peer("HeunDiscreteScheduler", KARRAS, "heun", k_diffusion="heun"),
    "lms": Peer("LMSDiscreteScheduler", KARRAS, "lms", k_diffusion="lms"),
    "dpmpp_2m": Peer(
        "DPMSolverMultistepScheduler",
        {**KARRAS, "solver_order": 2, "final_sigmas_type": "zero"},
        "dpmpp_2m",
        vp_units=True,
        k_diffusion="dpmpp_2m",
    ),
    "dpmpp_3m": Peer(
        "DPMSolverMultistepScheduler",
        {**KARRAS, "solver_order": 3, "final_sigmas_type": "zero"},
        "dpmpp_3m",
        {"published": True},
        vp_units=True,
        k_diffusion="dpmpp_3m_sde",
    ),
    "unipc": Peer(
        "UniPCMultistepScheduler",
        {**KARRAS, "solver_order": 2, "final_sigmas_type": "zero"},
        "unipc",
        vp_units=True,
    ),
    "ddim": Peer("DDIMScheduler", TRAILING, "ddim", vp_units=True),
    "euler_ancestral": Peer(
        "EulerAncestralDiscreteScheduler",
        {},  # no use_karras_sigmas; "linspace" timesteps of this schedule are a Karras grid
        "euler_ancestral",  # eta = 1: the DDPM posterior step, as `ancestral`
        stochastic=True,
        k_diffusion="euler_ancestral",
        prediction="epsilon",
    ),
    "dpm_2": Peer(
        "KDPM2DiscreteScheduler", KARRAS, "dpm_2", k_diffusion="dpm_2", prediction="epsilon"
    ),
    "dpm_2_ancestral": Peer(
        "KDPM2AncestralDiscreteScheduler",
        KARRAS,
        "dpm_2_ancestral",
        stochastic=True,
        k_diffusion="dpm_2_ancestral",
        prediction="epsilon",
    ),
    "dpmpp_sde": Peer(
        "DPMSolverSDEScheduler",
        KARRAS,
        "dpmpp_sde",
        stochastic=True,
        k_diffusion="dpmpp_sde",
        prediction="epsilon",
    ),
    "dpmpp_2m_sde": Peer(
        "DPMSolverMultistepScheduler",
        {**KARRAS, "solver_order": 2, "algorithm_type": "sde-dpmsolver++"},
        "dpmpp_2m_sde",
        vp_units=True,
        stochastic=True,
        k_diffusion="dpmpp_2m_sde",
    ),
    "dpmpp_3m_sde": Peer(
        "DPMSolverMultistepScheduler",
        {**KARRAS, "solver_order": 3, "algorithm_type": "sde-dpmsolver++"},
        "dpmpp_3m_sde",
        vp_units=True,
        stochastic=True,
        k_diffusion="dpmpp_3m_sde",
    ),
    "ddpm": Peer(
        "DDPMScheduler",
        {**TRAILING, "variance_type": "fixed_small"},
        "ddpm",  # the alias of `ancestral` (posterior variance)
        vp_units=True,
        stochastic=True,
    ),
    "sa_solver": Peer(  # diffusers' defaults: orders 2 and 2, τ = 1 on timesteps 200-800
        "SASolverScheduler",
        {**KARRAS, "predictor_order": 2, "corrector_order": 2},
        "sa_solver",
        {"predictor_order": 2, "corrector_order": 2},
        vp_units=True,
        stochastic=True,
    ),
    "sa_solver_ode": Peer(  # τ = 0: the deterministic SA-Solver, compared point for point
        "SASolverScheduler",
        {**KARRAS, "predictor_order": 2, "corrector_order": 2, "tau_func": lambda t: 0},
        "sa_solver",
        {"eta": 0.0, "predictor_order": 2, "corrector_order": 2},
        vp_units=True,
    ),
    "lcm": Peer(  # its timesteps are picked from `original_inference_steps` (50 by default)
        "LCMScheduler", {"original_inference_steps": 200}, "lcm", vp_units=True, stochastic=True
    ),
}


def trained_betas() -> np.ndarray:
    """Betas whose cumulative alphas give sigma_k = sqrt(1/abar_k - 1) on a Karras grid."""
    u = np.linspace(0, 1, TRAIN_LEVELS)
    lo, hi = SIGMA_MIN ** (1 / 7), SIGMA_MAX ** (1 / 7)
    sigma = (lo + u * (hi - lo)) ** 7
    abar = 1 / (1 + sigma**2)
    return 1 - abar / np.concatenate([[1.0], abar[:-1]])


def make_scheduler(peer: Peer, **extra):
    import diffusers

    cls = getattr(diffusers, peer.scheduler)
    return cls(
        num_train_timesteps=TRAIN_LEVELS,
        trained_betas=trained_betas(),
        prediction_type=peer.prediction,
        **peer.options,
        **extra,
    )


def current_sigma(sched, t) -> float:
    """The noise level (EDM sigma) at which the scheduler wants the model now."""
    if getattr(sched, "sigmas", None) is not None:
        index = sched.step_index if sched.step_index is not None else sched.index_for_timestep(t)
        if not getattr(sched, "state_in_first_order", True):  # a two-stage method's 2nd stage
            if getattr(sched, "sigmas_interpol", None) is not None:  # KDPM2: the midpoint
                shift = "Ancestral" in type(sched).__name__  # its table lacks the leading NaN
                return float(sched.sigmas_interpol[index - shift])
            if getattr(sched, "mid_point_sigma", None) is not None:  # DPM-Solver++ SDE
                return float(sched.mid_point_sigma)
        return float(sched.sigmas[index])
    abar = float(sched.alphas_cumprod[int(t)])
    return math.sqrt(1 / abar - 1)


def diffusers_grid(peer: Peer, steps: int) -> list[float]:
    """The sigmas a scheduler visits, ending at 0: the grid our solver gets.  (SA-Solver's
    table ends on its last level twice, a step of length 0 that only corrects: diffusers'
    SA-Solver returns the corrected state there, not x̂_0, for the same NFE.)"""
    sched = make_scheduler(peer)
    sched.set_timesteps(steps)
    if peer.scheduler in ("DDIMScheduler", "DDPMScheduler", "LCMScheduler"):
        abar = sched.alphas_cumprod[sched.timesteps.long()].double()
        return [*((1 / abar - 1).sqrt().tolist()), 0.0]
    grid = torch.unique_consecutive(sched.sigmas.double()).tolist()
    return grid if grid[-1] == 0.0 else [*grid, 0.0]


def run_diffusers(peer: Peer, denoise, x_T: torch.Tensor, steps: int, seed: int = 0):
    """A plain scheduler loop; ``denoise(x_sigma, sigma)`` is the exact x̂_0."""
    import diffusers

    init = inspect.signature(getattr(diffusers, peer.scheduler)).parameters
    seeded = peer.stochastic and "noise_sampler_seed" in init  # a Brownian tree of its own
    sched = make_scheduler(peer, **({"noise_sampler_seed": seed} if seeded else {}))
    sched.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    sigma0 = current_sigma(sched, sched.timesteps[0])
    x = x_T / math.sqrt(1 + sigma0**2) if peer.vp_units else x_T.clone()
    nfe = 0
    for t in sched.timesteps:
        sched.scale_model_input(x, t)  # the call a pipeline makes; the exact model reads x itself
        sigma = current_sigma(sched, t)
        x_sigma = x * math.sqrt(1 + sigma**2) if peer.vp_units else x
        denoised = denoise(x_sigma, torch.full((x.shape[0],), sigma, dtype=x.dtype))
        nfe += 1
        if peer.prediction == "epsilon":  # sigma units here: x_sigma = x̂_0 + sigma eps
            denoised = (x_sigma - denoised) / sigma
        kwargs = {"generator": generator} if peer.stochastic and not seeded else {}
        x = sched.step(denoised, t, x, **kwargs).prev_sample
    return x, nfe


def run_k_diffusion(kd, peer: Peer, denoise, x_T: torch.Tensor, grid: list[float], seed: int = 0):
    calls = []

    def model(x, sigma):
        calls.append(1)
        return denoise(x, sigma)

    sigmas = torch.tensor(grid, dtype=x_T.dtype)
    fn = getattr(kd, f"sample_{peer.k_diffusion}")
    deterministic_3m = peer.k_diffusion == "dpmpp_3m_sde" and not peer.stochastic
    kwargs = {"eta": 0.0} if deterministic_3m else {}
    torch.manual_seed(seed)  # k-diffusion draws its noise from the global generator
    return fn(model, x_T.clone(), sigmas, disable=True, **kwargs), len(calls)


class Case:
    """One analytic problem under the EDM PF-ODE, with the DOP853 endpoints of its x_T."""

    def __init__(self, name: str, n: int, sigmas: tuple[float, float]):
        sigma_start, sigma_end = sigmas  # every grid's first level; the Karras grids' last
        self.name, self.problem = name, load_problem(name, sde="edm")
        self.mixture = self.problem.mixture
        self.sde = sd.EDMSDE(sigma_min=SIGMA_MIN / 2, sigma_max=sigma_start)
        self.score = self.mixture.score_fn(self.sde)
        z = sd.PerSampleNoise(0).normal((n, self.mixture.dim), "cpu", torch.float32)
        self.x_T = z * sigma_start
        with torch.inference_mode():
            self.reference = sd.solve(
                self.score,
                self.sde,
                self.x_T.double(),
                torch.tensor([sigma_start, sigma_end, 0.0], dtype=torch.float64),
                "dop853",
                rtol=1e-10,
                atol=1e-10,
            ).x
        self.floor = self.problem.quality(self.reference.float(), 0)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.mixture.denoise(self.sde, x, sigma)

    def judge(self, x: torch.Tensor, stochastic: bool) -> dict[str, float]:
        error = (
            float("nan")
            if stochastic
            else float((x.double() - self.reference).pow(2).mean().sqrt())
        )
        return {"error": error, "quality": self.problem.quality(x, 0)}

    def ours(self, name: str, options: dict, grid: list[float], seed: int = 0):
        ts = torch.tensor(grid, dtype=torch.float64)
        with torch.inference_mode():
            res = sd.solve(
                self.score,
                self.sde,
                self.x_T,
                ts,
                sd.get_solver(name, **options),
                noise=sd.PerSampleNoise(seed),
            )
        return res.x, res.nfe


SEEDS = 5  # stochastic methods: median sliced W2 over this many noise seeds


def judged(case: Case, peer: Peer, run) -> dict[str, float]:
    """``run(seed) -> (x, nfe)`` judged once (deterministic) or over ``SEEDS`` seeds."""
    if not peer.stochastic:
        x, nfe = run(0)
        return {**case.judge(x, False), "nfe": nfe}
    outs = [run(seed) for seed in range(SEEDS)]
    qualities = [case.problem.quality(x, 0) for x, _ in outs]
    return {
        "error": float("nan"),
        "quality": statistics.median(qualities),
        "spread": statistics.stdev(qualities),
        "nfe": outs[0][1],
    }


def noise_z(row: dict, peer: str) -> float:
    """|ours − peer| in standard errors of the difference of two medians of ``SEEDS``
    draws (a median's standard error is about 1.25 σ/√n)."""
    spreads = (row.get("ours_spread"), row.get(f"{peer}_spread"))
    if None in spreads or "ours_quality" not in row:
        return float("nan")
    se = 1.25 * math.sqrt((spreads[0] ** 2 + spreads[1] ** 2) / SEEDS)
    return abs(row["ours_quality"] - row[f"{peer}_quality"]) / se


def accuracy(cases: list[Case], kd, methods: list[str]) -> list[dict]:
    rows = []
    for case in cases:
        for method in methods:
            peer = PEERS[method]
            probe = peer.ours or "euler"  # steps that spend the budget, as our solver counts them
            for budget in NFES:
                steps = steps_for_nfe(probe, budget, to_zero=True)
                if steps is None:
                    continue
                grid = diffusers_grid(peer, steps)
                runs = {
                    "diffusers": lambda s, p=peer, n=steps, c=case: run_diffusers(
                        p, c.denoise, c.x_T, n, s
                    )
                }
                if peer.ours:
                    runs["ours"] = lambda s, p=peer, g=grid, c=case: c.ours(
                        p.ours, p.ours_options, g, s
                    )
                if kd is not None and peer.k_diffusion:
                    runs["kdiff"] = lambda s, p=peer, g=grid, c=case: run_k_diffusion(
                        kd, p, c.denoise, c.x_T, g, s
                    )
                row = {"problem": case.name, "method": method, "nfe_budget": budget, "steps": steps}
                with torch.inference_mode():
                    for library, run in runs.items():
                        result = judged(case, peer, run)
                        row.setdefault("nfe", result["nfe"])
                        assert result["nfe"] == row["nfe"], (method, library, result, row)
                        row[f"{library}_error"] = result["error"]
                        row[f"{library}_quality"] = result["quality"]
                        if "spread" in result:
                            row[f"{library}_spread"] = result["spread"]
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


VARIANTS = [("dpmpp_3m", {"published": True}), ("unipc", {"order": 3}), ("lms", {"order": 3})]


def standard_grid_runs(case: Case, budget: int):
    """``(label, schedule, x, nfe)`` of every deterministic solver of ours (and the
    variants in ``VARIANTS``) on a Karras and a log-SNR grid within ``budget`` NFE."""
    defaults = [(n, {}) for n in fixed_grid_solvers() if not sd.get_solver(n).stochastic]
    grid_sde = sd.EDMSDE(SIGMA_MIN, case.sde.sigma_max)
    for name, options in defaults + VARIANTS:
        steps = steps_for_nfe(sd.get_solver(name, **options), budget, to_zero=True)
        if steps is None:
            continue
        label = name + "".join(f" {k}={v}" for k, v in options.items())
        for schedule in ("karras", "logsnr"):
            grid = sd.timesteps(grid_sde, steps, schedule, to_zero=True).tolist()
            yield (label, schedule, *case.ours(name, options, grid))


def ours_best(cases: list[Case]) -> list[dict]:
    """Every deterministic solver of ours (defaults, and the option variants in ``VARIANTS``)
    on a Karras and a log-SNR grid, at every budget."""
    rows = []
    for case in cases:
        for budget in NFES:
            for label, schedule, x, nfe in standard_grid_runs(case, budget):
                row = {"problem": case.name, "nfe_budget": budget, "solver": label}
                row.update({"schedule": schedule, "nfe": nfe, **case.judge(x, False)})
                rows.append(row)
    return rows


def speed_analytic(case: Case, repeats: int) -> list[dict]:
    """Median wall time at NFE 50 of interleaved runs with the analytic score."""
    runs = {}
    for method, peer in PEERS.items():
        if peer.ours is None or peer.stochastic:
            continue
        steps = steps_for_nfe(peer.ours, 50, to_zero=True)
        grid = diffusers_grid(peer, steps)
        runs[(method, "diffusers")] = lambda p=peer, n=steps: run_diffusers(
            p, case.denoise, case.x_T, n
        )
        runs[(method, "ours")] = lambda p=peer, g=grid: case.ours(p.ours, p.ours_options, g)
    floor = _time_interleaved(
        {
            ("score", "alone"): lambda: [
                case.score(case.x_T, torch.full((len(case.x_T),), s))
                for s in diffusers_grid(PEERS["euler"], 50)[:-1]
            ]
        },
        repeats,
    )[("score", "alone")]
    times = _time_interleaved(runs, repeats)
    return _ratios(times, "analytic score, 4096 ring samples", floor)


def _time_interleaved(runs: dict, repeats: int) -> dict:
    with torch.inference_mode():
        for fn in runs.values():
            fn()  # warm-up
        times: dict = {key: [] for key in runs}
        for _ in range(repeats):
            for key, fn in runs.items():
                start = time.perf_counter()
                fn()
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                times[key].append(time.perf_counter() - start)
    return {key: statistics.median(ts) for key, ts in times.items()}


def _ratios(times: dict, setting: str, floor: float = 0.0) -> list[dict]:
    rows = []
    for (method, library), median in times.items():
        base = times[(method, "diffusers")]
        rows.append(
            {
                "setting": setting,
                "method": method,
                "library": library,
                "median_s": median,
                "ratio_to_diffusers": median / base,
                "overhead_s": median - floor,
            }
        )
    return rows


class UNetCase:
    """The shipped digits U-Net (VP SDE), as ours and as a diffusers pipeline would run it."""

    def __init__(self, n: int, device: str):
        self.problem = load_problem("digits", device=device)
        self.sde, self.device = self.problem.sde, device
        self.x_T = sd.PerSampleNoise(0).normal(
            (n, *self.problem.event_shape), device, torch.float32
        )

    def eps(self, x: torch.Tensor, k) -> torch.Tensor:
        """epsilon-prediction at diffusers timestep k of a 1000-step schedule: t = (k+1)/1000."""
        t = torch.full((x.shape[0],), (float(k) + 1) / TRAIN_LEVELS, device=x.device)
        t = t.clamp(self.sde.t_min, self.sde.T)
        model = self.problem.model
        return convert(model(x, t), x, t, self.sde, model.prediction, "eps")

    def diffusers(self, peer: Peer, steps: int):
        import diffusers

        options = {
            k: v for k, v in peer.options.items() if k not in TRAILING or k == "timestep_spacing"
        }
        sched = getattr(diffusers, peer.scheduler)(**options)  # default linear betas, epsilon
        sched.set_timesteps(steps, device=self.device)
        x, nfe = self.x_T * sched.init_noise_sigma, 0
        for t in sched.timesteps:
            eps = self.eps(sched.scale_model_input(x, t), t)
            nfe += 1
            x = sched.step(eps, t, x).prev_sample
        return x, nfe

    def ours(self, peer: Peer, steps: int):
        solver = sd.get_solver(peer.ours, **peer.ours_options)
        res = sd.sample(
            self.problem.model,
            self.sde,
            tuple(self.x_T.shape),
            solver,
            steps,
            noise=sd.PerSampleNoise(0),
            device=self.device,
        )
        return res.x, res.nfe


UNET_METHODS = ["euler", "heun", "lms", "dpmpp_2m", "unipc", "ddim"]


def unet_runs(case: UNetCase) -> dict:
    runs = {}
    for method in UNET_METHODS:
        peer = PEERS[method]
        steps = steps_for_nfe(peer.ours, 50, to_zero=False)
        runs[(method, "diffusers")] = lambda p=peer, n=steps: case.diffusers(p, n)
        runs[(method, "ours")] = lambda p=peer, n=steps: case.ours(p, n)
    return runs


def speed_unet(case: UNetCase, repeats: int) -> list[dict]:
    runs = unet_runs(case)
    with torch.inference_mode():
        nfe = {key: fn()[1] for key, fn in runs.items()}
    times = _time_interleaved(runs, repeats)
    per_eval = {key: t / nfe[key] for key, t in times.items()}
    rows = _ratios(per_eval, f"digits U-Net, {len(case.x_T)} images (time per evaluation)")
    for row in rows:
        row["nfe"] = nfe[(row["method"], row["library"])]
        row["median_s"] = times[(row["method"], row["library"])]
    return rows


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def memory_probe(method: str, library: str, n: int, device: str) -> float:
    """Peak memory (MiB) one run adds: the CUDA allocator's peak, or on Linux the
    resident-set high-water mark, reset after imports and model load
    (``/proc/self/clear_refs``), less the resident set before the run."""
    case = UNetCase(n, device)
    fn = unet_runs(case)[(method, library)]
    with torch.inference_mode():
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            return (torch.cuda.max_memory_allocated() - base) / 2**20
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _proc_status_kib("VmRSS:")
        fn()
        return (_proc_status_kib("VmHWM:") - base) / 1024


def memory(n: int, device: str) -> list[dict]:
    rows = []
    for method in UNET_METHODS:
        for library in ("ours", "diffusers"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--probe-memory",
                    method,
                    library,
                    "--unet-images",
                    str(n),
                    "--device",
                    device,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(
                {"method": method, "library": library, "peak_mib": float(out.stdout.split()[-1])}
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(acc, best, speed, mem, floors) -> str:
    parts = []
    for case in dict.fromkeys(r["problem"] for r in acc):
        rows = [r for r in acc if r["problem"] == case]
        det = [r for r in rows if math.isfinite(r["diffusers_error"])]
        body = [
            [
                r["method"],
                r["nfe"],
                r["diffusers_error"],
                r.get("ours_error", float("nan")),
                r.get("ours_error", float("nan")) / r["diffusers_error"],
                r.get("kdiff_error", float("nan")),
                r.get("ours_error", float("nan")) / r.get("kdiff_error", float("nan")),
            ]
            for r in det
        ]
        parts.append(f"### {case}: endpoint RMS error, same grid and x_T\n\n")
        parts.append(
            table(
                [
                    "method",
                    "NFE",
                    "diffusers",
                    "ours",
                    "ours/diffusers",
                    "k-diffusion",
                    "ours/k-diffusion",
                ],
                body,
            )
        )
        sto = [r for r in rows if not math.isfinite(r["diffusers_error"])]
        body = [
            [
                r["method"],
                r["nfe"],
                r["diffusers_quality"],
                r.get("ours_quality", float("nan")),
                r.get("kdiff_quality", float("nan")),
                noise_z(r, "diffusers"),
                noise_z(r, "kdiff"),
            ]
            for r in sto
        ]
        parts.append(f"\n### {case}: stochastic methods, sliced W2 (floor {fmt(floors[case])})\n\n")
        parts.append(
            "Medians over 5 noise seeds; *z* is |ours − peer| in standard errors of that "
            "difference (from the seed-to-seed spread): within noise when z ≤ 2.\n\n"
        )
        parts.append(
            table(
                ["method", "NFE", "diffusers", "ours", "k-diffusion", "z diffusers", "z k-diff"],
                body,
            )
        )
        head = [
            "NFE",
            "best peer",
            "error",
            "ours, same methods",
            "error",
            "ours, any",
            "error",
            "ours/best peer",
        ]
        lines = []
        for budget in NFES:
            sub = [r for r in det if r["nfe_budget"] == budget]
            if not sub:
                continue
            peer = min(
                ((r["diffusers_error"], f"diffusers {r['method']}") for r in sub),
                default=(float("nan"), "–"),
            )
            kd = [
                (r["kdiff_error"], f"k-diffusion {r['method']}") for r in sub if "kdiff_error" in r
            ]
            peer = min([peer, *kd])
            same = min((r["ours_error"], r["method"]) for r in sub if "ours_error" in r)
            anyb = min(
                (r["error"], f"{r['solver']} ({r['schedule']})")
                for r in best
                if r["problem"] == case and r["nfe_budget"] == budget
            )
            lines.append(
                [budget, peer[1], peer[0], same[1], same[0], anyb[1], anyb[0], anyb[0] / peer[0]]
            )
        parts.append(f"\n### {case}: best per budget\n\n")
        parts.append(table(head, lines))
        parts.append("\n")
    for setting in dict.fromkeys(r["setting"] for r in speed):
        sub = [r for r in speed if r["setting"] == setting]
        floor = sub[0]["median_s"] - sub[0]["overhead_s"]
        alone = (
            f" (the score alone, 50 calls: {floor * 1e3:.0f} ms)" if "analytic" in setting else ""
        )
        parts.append(f"### Speed at NFE 50: {setting}{alone}\n\n")
        parts.append(
            table(
                ["method", "library", "median ms", "ours/diffusers"],
                [
                    [r["method"], r["library"], r["median_s"] * 1e3, r["ratio_to_diffusers"]]
                    for r in sub
                ],
            )
        )
        parts.append("\n")
    if mem:
        parts.append("### Peak memory, digits U-Net at NFE 50\n\n")
        parts.append(
            table(
                ["method", "library", "peak MiB"],
                [[r["method"], r["library"], r["peak_mib"]] for r in mem],
            )
        )
    return "".join(parts)


def plot(acc: list[dict]) -> None:
    for case in dict.fromkeys(r["problem"] for r in acc):
        rows = []
        for r in acc:
            if r["problem"] != case or not math.isfinite(r["diffusers_error"]):
                continue
            rows.append(
                {
                    "solver": f"{r['method']} (diffusers)",
                    "nfe": r["nfe"],
                    "error": r["diffusers_error"],
                }
            )
            if "ours_error" in r:
                rows.append(
                    {"solver": f"{r['method']} (ours)", "nfe": r["nfe"], "error": r["ours_error"]}
                )
        save_error_plot(
            rows, RESULTS / f"peers_{case}.png", title=f"{case}: EDM, same grid and x_T"
        )


# k-diffusion samplers beside ours on identical work: the same grid, x_T and Brownian path
KDIFFUSION_PARITY = [
    ("euler_ancestral", "euler_ancestral", {}),
    ("dpm_2", "dpm_2", {}),
    ("dpm_2_ancestral", "dpm_2_ancestral", {}),
    ("dpmpp_2s_ancestral", "dpmpp_2s_ancestral", {}),
    ("dpmpp_2s", "dpmpp_2s_ancestral", {"eta": 0.0}),
    ("dpmpp_sde", "dpmpp_sde", {}),
    ("dpmpp_2m_sde", "dpmpp_2m_sde", {}),
    ("dpmpp_2m_sde", "dpmpp_2m_sde", {"variant": "heun"}),
    ("dpmpp_3m_sde", "dpmpp_3m_sde", {}),
]


def _side_by_side(kd, case: Case, theirs: str, solver, options: dict, grid, seed: int):
    """``(ours, k-diffusion's)`` endpoints from the same x_T on the same Brownian path."""
    x_T, sigmas = case.x_T.double(), torch.tensor(grid, dtype=torch.float64)
    noise = sd.BrownianNoise(x_T, grid[0], grid[-2] / 2, seed=seed)
    kd_options = {("solver_type" if k == "variant" else k): v for k, v in options.items()}
    if "noise_sampler" in inspect.signature(getattr(kd, f"sample_{theirs}")).parameters:
        kd_options["noise_sampler"] = lambda a, b: noise(x_T, float(a), float(b))
    sample = getattr(kd, f"sample_{theirs}")
    with torch.inference_mode():
        theirs_x = sample(case.denoise, x_T.clone(), sigmas, disable=True, **kd_options)
        ours_x = sd.solve(case.score, case.sde, x_T, sigmas, solver, noise=noise).x
    return ours_x, theirs_x


def kdiffusion_parity(cases: list[Case], kd) -> list[dict]:
    """Our k-diffusion-family solvers and k-diffusion's functions on one Karras grid, from
    the same x_T, on the same Brownian path (ours passed to k-diffusion as its
    ``noise_sampler``): endpoint RMS error for deterministic runs, median sliced W2 over
    ``SEEDS`` paths for stochastic ones, and the largest difference between the two."""
    rows = []
    for case in cases:
        for ours, theirs, options in KDIFFUSION_PARITY:
            solver = sd.get_solver(ours, **options)
            for budget in (10, 20, 50):
                grid = diffusers_grid(PEERS["euler"], steps_for_nfe(solver, budget, to_zero=True))
                pairs = [
                    _side_by_side(kd, case, theirs, solver, options, grid, seed)
                    for seed in range(SEEDS if solver.stochastic else 1)
                ]
                row = {"problem": case.name, "method": ours, "options": options}
                row["nfe_budget"] = budget
                row["max_rel_difference"] = max(
                    float((a - b).abs().max() / b.abs().max()) for a, b in pairs
                )
                for index, library in enumerate(("ours", "kdiff")):
                    xs = [pair[index] for pair in pairs]
                    if solver.stochastic:
                        row[f"{library}_quality"] = statistics.median(
                            case.problem.quality(x.float(), 0) for x in xs
                        )
                    else:
                        row[f"{library}_error"] = case.judge(xs[0], False)["error"]
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


GUIDANCE_SCALE, RESCALE = 3.0, 0.7


def rescale_parity(cases: list[Case]) -> list[dict]:
    """CFG rescale (Lin et al. 2024): our ``ClassifierFreeGuidance(rescale=φ)`` under
    ``dpmpp_2m`` and diffusers' ``rescale_noise_cfg`` in a ``DPMSolverMultistepScheduler``
    loop, on the same grid and x_T, each sample guided to a component of the mixture;
    endpoint RMS error against a DOP853 solve of the same guided model.  On the 64-D
    mixture only: rescaling divides by a per-sample standard deviation, which over the two
    coordinates of a 2-D sample can vanish (the guided ODE is then stiff)."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    rows, peer = [], PEERS["dpmpp_2m"]
    for case in (c for c in cases if c.mixture.dim >= 16):
        null = case.mixture.num_components
        labels = torch.arange(len(case.x_T)) % null
        guided = sd.ClassifierFreeGuidance(
            case.score, GUIDANCE_SCALE, null, sde=case.sde, rescale=RESCALE
        )

        def denoise(x_sigma, sigma, case=case, null=null, labels=labels):
            s = sd.append_dims(sigma, x_sigma.ndim)
            d_c = case.mixture.denoise(case.sde, x_sigma, sigma, labels)
            d_u = case.mixture.denoise(case.sde, x_sigma, sigma, torch.full_like(labels, null))
            e_c, e_u = (x_sigma - d_c) / s, (x_sigma - d_u) / s
            e = rescale_noise_cfg(e_u + GUIDANCE_SCALE * (e_c - e_u), e_c, RESCALE)
            return x_sigma - s * e

        ends = torch.tensor([float(case.x_T.std()), SIGMA_MIN, 0.0], dtype=torch.float64)
        ends[0] = diffusers_grid(peer, 10)[0]
        with torch.inference_mode():
            reference = sd.solve(guided, case.sde, case.x_T.double(), ends, "dop853",
                                 rtol=1e-10, atol=1e-10, cond=labels).x  # fmt: skip
            for budget in (10, 20, 50):
                steps = steps_for_nfe("dpmpp_2m", budget, to_zero=True)
                grid = torch.tensor(diffusers_grid(peer, steps), dtype=torch.float64)
                theirs, _ = run_diffusers(peer, denoise, case.x_T, steps)
                ours = sd.solve(guided, case.sde, case.x_T, grid, "dpmpp_2m", cond=labels).x
                row = {"problem": case.name, "nfe": steps, "scale": GUIDANCE_SCALE}
                for library, x in (("ours", ours), ("diffusers", theirs)):
                    row[f"{library}_error"] = float((x.double() - reference).pow(2).mean().sqrt())
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def rescale_markdown(rows: list[dict]) -> str:
    lines = [
        f"CFG scale {GUIDANCE_SCALE:g}, rescale φ = {RESCALE:g}, DPM-Solver++(2M), Karras grid; "
        "endpoint RMS error against DOP853 on the same guided model.\n",
        "| problem | NFE | diffusers | ours | ours / diffusers |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ratio = r["ours_error"] / r["diffusers_error"]
        lines.append(
            f"| {r['problem']} | {r['nfe']} | {r['diffusers_error']:.3g} | {r['ours_error']:.3g} "
            f"| {ratio:.2f} |"
        )
    return "\n".join(lines) + "\n"


def parity_markdown(rows: list[dict]) -> str:
    lines = [
        "| problem | method | NFE | ours / k-diffusion | max relative difference |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        key = "error" if "ours_error" in r else "quality"
        ratio = r[f"ours_{key}"] / r[f"kdiff_{key}"]
        name = r["method"] + "".join(f" {k}={v}" for k, v in r["options"].items())
        measure = "error" if key == "error" else "sliced W2"
        lines.append(
            f"| {r['problem']} | `{name}` | {r['nfe_budget']} | {ratio:.3f} ({measure}) | "
            f"{r['max_rel_difference']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--unet-images", type=int, default=256)
    parser.add_argument(
        "--part",
        choices=["accuracy", "ours", "rescale", "kdiffusion", "speed", "report"],
        help="one part only",
    )
    parser.add_argument(
        "--methods",
        type=lambda v: v.split(","),
        default=list(PEERS),
        help="accuracy: these peers only (comma-separated; other saved rows are kept)",
    )
    parser.add_argument("--probe-memory", nargs=2, metavar=("METHOD", "LIBRARY"))
    args = parser.parse_args()
    if args.probe_memory:
        print(memory_probe(*args.probe_memory, args.unet_images, args.device))
        return
    karras = diffusers_grid(PEERS["euler"], 10)
    sigmas = (karras[0], karras[-2])
    saved = RESULTS / "peers.json"
    payload = json.loads(saved.read_text()) if saved.exists() else {}
    if args.part not in ("speed", "report"):
        cases = [Case("gmm8", 1024, sigmas), Case("gmm64", 512, sigmas)]
    if args.part in (None, "accuracy"):
        unknown = set(args.methods) - set(PEERS)
        if unknown:
            parser.error(f"unknown --methods {sorted(unknown)}; choose from {', '.join(PEERS)}")
        kept = [r for r in payload.get("accuracy", []) if r["method"] not in args.methods]
        fresh = accuracy(cases, sd.adapters.kdiffusion_sampling(), args.methods)
        payload["accuracy"] = kept + fresh
        payload["noise_floor"] = {c.name: c.floor for c in cases}
        plot(payload["accuracy"])
    if args.part == "ours" or (args.part in (None, "accuracy") and args.methods == list(PEERS)):
        payload["ours_best"] = ours_best(cases)
    if args.part in (None, "accuracy", "rescale"):
        payload["rescale_parity"] = rescale_parity(cases)
    kd = sd.adapters.kdiffusion_sampling()
    if args.part in (None, "kdiffusion") and kd is not None:
        payload["kdiffusion_parity"] = kdiffusion_parity(cases, kd)
    if args.part in (None, "speed"):  # alone on the machine: nothing else running
        speed = speed_analytic(Case("gmm8", 4096, sigmas), args.repeats)
        speed += speed_unet(UNetCase(args.unet_images, args.device), args.repeats)
        payload["speed"], payload["memory"] = speed, memory(args.unet_images, args.device)
        payload["speed_machine"] = machine()
    payload.pop("machine", None)
    md = markdown(
        payload.get("accuracy", []),
        payload.get("ours_best", []),
        payload.get("speed", []),
        payload.get("memory", []),
        payload.get("noise_floor", {}),
    )
    if payload.get("rescale_parity"):
        md += "\n## CFG rescale beside diffusers' guidance_rescale\n\n" + rescale_markdown(
            payload["rescale_parity"]
        )
    if payload.get("kdiffusion_parity"):
        md += "\n## The k-diffusion family on identical Brownian paths\n\n" + parity_markdown(
            payload["kdiffusion_parity"]
        )
    write_results("peers", payload, md)
    print(md)


if __name__ == "__main__":
    main()
