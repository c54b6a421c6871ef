"""Throughput: eager vs compiled vs compiled + bf16 networks, and our loop beside diffusers'
and k-diffusion's driving the same network.

    python benchmarks/throughput.py                  # CPU: writes results/throughput.{json,md}
    python benchmarks/throughput.py --device cuda    # GPU rows: results/throughput_cuda.*

Networks: the shipped ``digits`` and ``digits-cond`` U-Nets (8x8), the shipped ``moons``
MLP, and a 32x32 U-Net (random weights: speed does not depend on them).  Sampling: Euler
(one evaluation a step), 20 steps, samples/s as the median of ``--repeats`` interleaved
runs after a warm-up, the compile time of the first call reported apart.  Training:
optimiser steps/s of ``Trainer`` at the same batch, medians of interleaved blocks of 5
steps.  ``compiled`` is ``sd.accelerate(model, compile=True)``: Inductor on the CPU,
Inductor with CUDA graphs (mode ``reduce-overhead``) on a GPU.  Loops: the same compiled
network driven by ``sd.sample`` (Euler), diffusers' ``EulerDiscreteScheduler`` in a plain
pipeline loop, and k-diffusion's ``sample_euler``, 20 evaluations each.  Accuracy: the
compiled samples' largest difference from eager; bf16's cost as digits-FID (2000 samples,
Heun 18 steps) and moons sliced W2 (4096 samples) beside fp32's.  Compile times are cold
(a fresh Inductor cache).  This machine's speed drifts between processes (the same eager
solve takes 0.39-0.60 s), so the digits ratios are also measured in ``--processes`` fresh
processes, each its own interleaved comparison, and reported as min / median / max.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
from common import fmt, table, write_results

import sde_diffusion as sd
from sde_diffusion.evaluation.digits_eval import digits_fid
from sde_diffusion.evaluation.metrics import sliced_wasserstein
from sde_diffusion.evaluation.problems import load_problem
from sde_diffusion.networks import UNet, build_network
from sde_diffusion.parametrization import ScoreModel, convert
from sde_diffusion.pretrained import load_pretrained
from sde_diffusion.training import TrainConfig, Trainer
from sde_diffusion.training.data import Dataset, digits, load_data

STEPS = 20
VARIANTS = {"eager": (False, "fp32"), "compiled": (True, "fp32"), "compiled + bf16": (True, "bf16")}


def unet32(device: str) -> ScoreModel:
    """A 32x32 U-Net with random weights (its zero-initialised output layer too, so the
    compiled and bf16 outputs differ from eager where they would for a trained one)."""
    torch.manual_seed(0)
    net = UNet(channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, image_size=32)
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    return ScoreModel(net, sd.VPSDE(), "edm").to(device).eval()


def cases(device: str, quick: bool) -> dict[str, dict]:
    """name -> model, event shape, batch, condition and training data."""
    out = {}
    for name in ("digits", "digits-cond", "moons"):
        model, _ = load_pretrained(name, device=device)
        shape = (2,) if name == "moons" else (1, 8, 8)
        batch = 256
        cond = torch.arange(batch, device=device) % 10 if name == "digits-cond" else None
        out[name] = {"model": model, "shape": shape, "batch": batch, "cond": cond}
    out["unet32"] = {"model": unet32(device), "shape": (1, 32, 32), "batch": 64, "cond": None}
    if quick:
        out = {k: out[k] for k in ("digits", "unet32")}
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(runs: dict[str, Callable[[], object]], repeats: int, device: str) -> dict:
    """Median seconds of each run, the runs alternating (after one warm-up each)."""
    times: dict = {key: [] for key in runs}
    for _ in range(repeats):
        for key, fn in runs.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(ts) for key, ts in times.items()}


def sampling(case: dict, device: str, repeats: int) -> tuple[list[dict], dict]:
    shape = (case["batch"], *case["shape"])
    runs, firsts, outputs = {}, {}, {}
    for variant, (compile, precision) in VARIANTS.items():
        model = sd.accelerate(case["model"], compile, precision)

        def run(model=model):
            return sd.sample(model, model.sde, shape, "euler", STEPS, cond=case["cond"],
                             seed=0, device=device)  # fmt: skip

        with torch.inference_mode():
            first = run()
        firsts[variant], outputs[variant], runs[variant] = first.compile_time, first.x, run
    with torch.inference_mode():
        times = interleaved(runs, repeats, device)
    rows = [
        {
            "variant": v,
            "samples_per_s": shape[0] / times[v],
            "speedup": times["eager"] / times[v],
            "compile_s": firsts[v] if v != "eager" else float("nan"),
            "max_abs_diff": float((outputs[v] - outputs["eager"]).abs().max()),
        }
        for v in VARIANTS
    ]
    return rows, outputs


def trainer(case: dict, device: str, compile: bool, precision: str) -> Trainer:
    torch.manual_seed(0)
    model = case["model"]
    net = build_network(model.net.config)
    fresh = ScoreModel(net, model.sde, model.parametrization, model.sigma_data)
    data = case["data"]
    config = TrainConfig(batch_size=case["batch"], device=device, compile=compile,
                         precision=precision, loss_weighting="edm")  # fmt: skip
    return Trainer(fresh, data, config)


def training(case: dict, device: str, repeats: int) -> list[dict]:
    trainers, compile_s = {}, {}
    for variant, (compile, precision) in VARIANTS.items():
        t = trainer(case, device, compile, precision)
        sync(device)
        start = time.perf_counter()
        t.train_step()
        sync(device)
        compile_s[variant] = time.perf_counter() - start
        for _ in range(3):
            t.train_step()
        trainers[variant] = t
    block = {v: (lambda t=t: [t.train_step() for _ in range(5)]) for v, t in trainers.items()}
    times = interleaved(block, repeats, device)
    return [
        {
            "variant": v,
            "steps_per_s": 5 / times[v],
            "speedup": times["eager"] / times[v],
            "first_step_s": compile_s[v],
        }
        for v in VARIANTS
    ]


def loops(case: dict, device: str, repeats: int) -> list[dict]:
    """Ours, diffusers' and k-diffusion's Euler on one compiled network, 20 evaluations."""
    import diffusers

    kd = sd.adapters.kdiffusion_sampling()
    model = sd.accelerate(case["model"], True)
    sde, shape = model.sde, (case["batch"], *case["shape"])
    x_T = sd.PerSampleNoise(0).normal(shape, device, torch.float32)
    grid = sd.timesteps(sde, STEPS, "karras").to(device)

    def x0(x_scaled: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return convert(model(x_scaled, t), x_scaled, t, sde, model.prediction, "x0")

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """k-diffusion's D(x, sigma) of the VP model: x = x_t / alpha, sigma = sigma_t / alpha."""
        t = sde.t_from_log_snr(-2 * sigma.log()).clamp(sde.t_min, sde.T).float()
        return x0(x * sd.append_dims(sde.alpha(t).float(), x.ndim), t)

    sched = diffusers.EulerDiscreteScheduler(num_train_timesteps=1000)

    def diffusers_loop():
        sched.set_timesteps(STEPS, device=device)
        x = x_T * sched.init_noise_sigma
        for k in sched.timesteps:
            x_in = sched.scale_model_input(x, k)  # x_t of the VP process
            t = torch.full((shape[0],), (float(k) + 1) / 1000, device=device).clamp(sde.t_min)
            eps = convert(model(x_in, t), x_in, t, sde, model.prediction, "eps")
            x = sched.step(eps, k, x).prev_sample
        return x

    nu = (sde.sigma(grid) / sde.alpha(grid)).float()
    sigmas = torch.cat([nu, nu.new_zeros(1)])
    runs = {
        "ours": lambda: sd.solve(model, sde, x_T * sde.prior_std, grid, "euler"),
        "diffusers": diffusers_loop,
    }
    if kd is not None:
        runs["k-diffusion"] = lambda: kd.sample_euler(denoiser, x_T * sigmas[0], sigmas,
                                                      disable=True)  # fmt: skip
    with torch.inference_mode():
        for fn in runs.values():
            fn()
        times = interleaved(runs, repeats, device)
    return [
        {"loop": k, "per_step_ms": 1e3 * t / STEPS, "ratio_to_ours": t / times["ours"]}
        for k, t in times.items()
    ]


def accuracy(device: str) -> list[dict]:
    """bf16's cost: digits-FID and moons sliced W2 of fp32 and bf16 networks (compiled)."""
    torch._dynamo.reset()
    rows = []
    digits_problem = load_problem("digits", device=device)
    moons_problem = load_problem("moons", device=device)
    reference = digits_problem.reference(2000, 1).to(device)
    moons_reference = moons_problem.reference(4096, 1).to(device)
    for precision in ("fp32", "bf16"):
        for name, problem, n, judge in (
            ("digits-FID", digits_problem, 2000, lambda x: digits_fid(x, reference)),
            ("moons sliced W2", moons_problem, 4096,
             lambda x: sliced_wasserstein(x, moons_reference)),
        ):  # fmt: skip
            model = sd.accelerate(problem.model, True, precision)
            with torch.inference_mode():
                res = sd.sample(model, problem.sde, (n, *problem.event_shape), "heun", 18,
                                seed=2, device=device, batch_size=500)  # fmt: skip
            rows.append({"metric": name, "precision": precision, "value": float(judge(res.x))})
    return rows


def markdown(
    samples: dict, trains: dict, loop_rows: dict, acc: list[dict], ratios: dict, device: str
) -> str:
    lines = [f"Device: {device}; Euler, {STEPS} steps; medians of interleaved runs.\n"]
    rows = [
        [name, r["variant"], r["samples_per_s"], r["speedup"], r["compile_s"], r["max_abs_diff"]]
        for name, rs in samples.items()
        for r in rs
    ]
    header = ["network", "variant", "samples/s", "× eager", "compile s", "max |Δ| vs eager"]
    lines += ["**Sampling**\n", table(header, rows)]
    rows = [
        [name, r["variant"], r["steps_per_s"], r["speedup"], r["first_step_s"]]
        for name, rs in trains.items()
        for r in rs
    ]
    header = ["network", "variant", "steps/s", "× eager", "first step s"]
    lines += ["\n**Training**\n", table(header, rows)]
    rows = [
        [name, r["loop"], r["per_step_ms"], r["ratio_to_ours"]]
        for name, rs in loop_rows.items()
        for r in rs
    ]
    header = ["network (compiled)", "loop", "ms per step", "÷ ours"]
    lines += ["\n**Loops on one compiled network**\n", table(header, rows)]
    if ratios["sampling"]["runs"]:
        rows = [
            [f"digits {k}", r["min"], r["median"], r["max"], len(r["runs"])]
            for k, r in ratios.items()
        ]
        header = ["compiled ÷ eager", "min", "median", "max", "fresh processes"]
        lines += ["\n**The digits ratios across fresh processes**\n", table(header, rows)]
    if acc:
        rows = [[r["metric"], r["precision"], r["value"]] for r in acc]
        lines += ["\n**Accuracy of a bf16 network** (Heun, 18 steps)\n",
                  table(["metric", "network precision", "value"], rows)]  # fmt: skip
    return "\n".join(lines)


def digits_ratios(device: str, repeats: int) -> dict:
    """Compiled / eager of digits sampling and training, measured in this process."""
    case = cases(device, quick=True)["digits"]
    case["data"] = digits("train")
    speed = {r["variant"]: r["speedup"] for r in sampling(case, device, repeats)[0]}
    steps = {r["variant"]: r["speedup"] for r in training(case, device, repeats)}
    return {"sampling": speed["compiled"], "training": steps["compiled"]}


def spread(device: str, repeats: int, processes: int) -> dict:
    """``digits_ratios`` in fresh processes: min / median / max of each ratio."""
    runs = []
    for _ in range(processes):
        out = subprocess.run(
            [sys.executable, __file__, "--ratios", "--device", device, "--repeats", str(repeats)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        runs.append(json.loads(out.strip().splitlines()[-1]))
    out = {}
    for key in ("sampling", "training"):
        values = [r[key] for r in runs]
        out[key] = {"runs": values}
        if values:
            out[key] |= {
                "min": min(values),
                "median": statistics.median(values),
                "max": max(values),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--processes", type=int, default=5, help="fresh runs of the digits pair")
    parser.add_argument("--quick", action="store_true", help="digits and unet32 only, no FID")
    parser.add_argument("--ratios", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = args.device
    if args.ratios:  # one fresh process of spread()
        print(json.dumps(digits_ratios(device, args.repeats)))
        return
    all_cases = cases(device, args.quick)
    data = {
        "digits": digits("train"),
        "digits-cond": digits("train"),
        "moons": load_data("moons", 20000),
        "unet32": Dataset(torch.randn(512, 1, 32, 32), name="noise32"),
    }
    samples, trains, loop_rows = {}, {}, {}
    for name, case in all_cases.items():
        # one network class, many variants: start each case below Dynamo's recompile limit
        # (8 per function: past it a variant would run eagerly and be timed as compiled)
        torch._dynamo.reset()
        case["data"] = data[name]
        samples[name], _ = sampling(case, device, args.repeats)
        print(name, "sampling", [(r["variant"], fmt(r["speedup"])) for r in samples[name]])
        if name != "digits-cond":  # the same network as digits, with labels
            trains[name] = training(case, device, args.repeats)
            print(name, "training", [(r["variant"], fmt(r["speedup"])) for r in trains[name]])
        if name in ("digits", "unet32"):
            loop_rows[name] = loops(case, device, args.repeats)
            print(name, "loops", [(r["loop"], fmt(r["ratio_to_ours"])) for r in loop_rows[name]])
    acc = [] if args.quick else accuracy(device)
    ratios = spread(device, args.repeats, 0 if args.quick else args.processes)
    payload = {"device": device, "sampling": samples, "training": trains, "loops": loop_rows,
               "accuracy": acc, "digits_spread": ratios}  # fmt: skip
    name = "throughput" if device == "cpu" else f"throughput_{torch.device(device).type}"
    write_results(name, payload, markdown(samples, trains, loop_rows, acc, ratios, device))


if __name__ == "__main__":
    # cold compile times: a fresh Inductor cache (kept for the processes this one starts)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))
    main()
