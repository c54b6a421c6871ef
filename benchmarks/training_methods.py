"""Training recipes side by side: quality against steps and wall time.

    python benchmarks/training_methods.py                 # digits and moons, 2 seeds
    python benchmarks/training_methods.py --quick         # a short check of the script

Recipes: ``baseline`` (the shipped digits recipe: EDM weighting, AdamW 2e-3 with 200
warm-up steps, EMA 0.999), ``min-snr`` (Min-SNR-5 weighting, Hang et al. 2023),
``immiscible`` (the baseline with batch-assigned noise, Li et al. 2024), ``edm2-lr``
(the baseline with EDM2's inverse-sqrt decay after 1000 steps), each scored with the
run's EMA 0.999 and with the best of the EMAs of relative lengths 0.05 to 0.2 rebuilt
from its snapshots (post-hoc EMA, Karras et al. 2024; ``+ posthoc`` rows).  Digits: the
shipped U-Net, batch 128, digits-FID of 1000 samples (Heun, 25 steps on the Karras grid)
to the test split every ``--eval-every`` steps; moons: the ``sdediff train`` MLP, batch
256, sliced W2 to a fresh draw.  Wall time is training time
(evaluations excluded).  Runs go ``--jobs`` at a time, one torch thread each.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from common import RESULTS, table, write_results

import sde_diffusion as sd
from sde_diffusion.evaluation.quality import quality_metric
from sde_diffusion.networks import UNet
from sde_diffusion.parametrization import ScoreModel
from sde_diffusion.training import TrainConfig, Trainer, build_model
from sde_diffusion.training.data import digits, load_data
from sde_diffusion.training.log import read_metrics
from sde_diffusion.training.posthoc_ema import posthoc_model, snapshots
from sde_diffusion.training.state import load_score_model

SHIPPED_FID = 10.43  # sde_diffusion/pretrained/digits.json, 5000 steps
RECIPES = {
    "baseline": {},
    "min-snr": {"loss_weighting": "min-snr", "min_snr_gamma": 5.0},
    "immiscible": {"immiscible": True},
    "edm2-lr": {"lr_schedule": "edm2", "lr_decay_steps": 1000},
}
SIGMA_RELS = (0.05, 0.075, 0.1, 0.15, 0.2)


def build(data_name: str, seed: int):
    torch.manual_seed(seed)
    if data_name == "digits":
        data = digits("train")
        net = UNet(
            in_channels=1, channels=16, channel_mult=(1, 2), num_res_blocks=1,
            attention_below=4, image_size=8,
        )  # fmt: skip
        return data, ScoreModel(net, sd.VPSDE(), "edm", sigma_data=0.5), 128, 200
    data = load_data("moons", 20000, seed)
    return data, build_model(data), 256, 100


def run(job: tuple[str, str, int, int, int, str]) -> dict:
    """One training run: its metrics log, and its best post-hoc EMA every other evaluation."""
    data_name, recipe, seed, steps, eval_every, folder = job
    torch.set_num_threads(1)
    data, model, batch, warmup = build(data_name, seed)
    weighting = RECIPES[recipe].get("loss_weighting", "edm")
    config = TrainConfig(
        steps=steps, batch_size=batch, lr=2e-3, warmup=warmup, ema_decay=0.999,
        seed=seed, eval_every=eval_every, checkpoint_every=steps,
        posthoc_ema=True, snapshot_every=100, **{**RECIPES[recipe], "loss_weighting": weighting},
    )  # fmt: skip
    path = Path(folder) / f"{data_name}-{recipe}-{seed}.safetensors"
    metric = quality_metric(data, samples=1000, seed=seed)
    Trainer(model, data, config, metric).train(checkpoint=path, progress=False)
    if (data_name, recipe, seed, steps) == ("digits", "baseline", 0, 2500):  # the docs' picture
        shutil.copy(
            path.with_name(f"{path.stem}.curves.png"), RESULTS / "training_curves_digits.png"
        )
    rows = read_metrics(path.with_name(f"{path.stem}.metrics.jsonl"))
    result = {"data": data_name, "recipe": recipe, "seed": seed, "rows": rows}
    if config.posthoc_ema:
        found, best = snapshots(path), []
        base, _ = load_score_model(path)
        times = {r["step"]: r["time"] for r in rows if "loss" in r}
        for step in range(2 * eval_every, steps + 1, 2 * eval_every):
            scores = {
                s: metric.evaluate(posthoc_model(base, found, s, step)[0]) for s in SIGMA_RELS
            }
            length = min(scores, key=scores.get)
            best.append({"step": step, "time": times[step], "sigma_rel": length,
                         metric.name: scores[length], "all": scores})  # fmt: skip
        result["posthoc"] = best
    return result


def curve(result: dict, key: str, source: str = "rows") -> list[tuple[int, float, float]]:
    return [(r["step"], r["time"], r[key]) for r in result.get(source, []) if key in r]


def first_reaching(points, goal: float) -> int | None:
    return next((step for step, _, value in points if value <= goal), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--moons-steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated")
    parser.add_argument("--data", default="digits,moons", help="digits and/or moons")
    parser.add_argument("--name", default="training_methods", help="the results files' name")
    parser.add_argument(
        "--replot", action="store_true", help="redraw the tables and picture from --name's JSON"
    )
    parser.add_argument("--quick", action="store_true", help="tiny runs: check the script")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.moons_steps, args.eval_every, args.seeds = 200, 200, 50, "0"
    if args.replot:
        saved = json.loads((RESULTS / f"{args.name}.json").read_text())
        report(
            saved["runs"], argparse.Namespace(**{**vars(args), **saved["args"], "name": args.name})
        )
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        jobs = [
            (data, recipe, seed, steps, args.eval_every, folder)
            for data, steps in (("digits", args.steps), ("moons", args.moons_steps))
            if data in args.data.split(",")
            for recipe in args.recipes.split(",")
            for seed in seeds
        ]
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(run, jobs))
    report(results, args)


def mean_at(runs: list, step: int, index: int) -> float:
    """The seed mean of entry ``index`` (1: time, 2: value) of the points at ``step``."""
    return sum(p[index] for pts in runs for p in pts if p[0] == step) / len(runs)


def series(results: list[dict], data: str, key: str):
    """``(label, recipe, seed, points)`` for every run's EMA curve and post-hoc curve."""
    for recipe in RECIPES:
        for source, label in (("rows", recipe), ("posthoc", f"{recipe} + posthoc")):
            for r in results:
                if r["data"] == data and r["recipe"] == recipe and curve(r, key, source):
                    yield label, recipe, r["seed"], curve(r, key, source)


def report(results: list[dict], args) -> None:
    """The tables (markdown, JSON) and the curves (PNG: seed means)."""
    from sde_diffusion.plotting import _pyplot, _save

    plt = _pyplot()
    sets = [(d, k) for d, k in (("digits", "digits_fid"), ("moons", "sliced_w2"))
            if d in args.data.split(",")]  # fmt: skip
    fig, axes = plt.subplots(len(sets), 2, figsize=(12, 4.25 * len(sets)), squeeze=False,
                             constrained_layout=True)  # fmt: skip
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = dict(zip(RECIPES, palette, strict=False))
    lines, payload = [], {"args": vars(args), "runs": results, "steps_to_shipped_fid": []}
    for row, (data, key) in enumerate(sets):
        found = list(series(results, data, key))
        shown = sorted(
            {s for *_, pts in found for s, _, _ in pts if s % (2 * args.eval_every) == 0}
        )
        body = [
            [label, seed, *({s: v for s, _, v in pts}.get(step, float("nan")) for step in shown)]
            for label, _, seed, pts in found
        ]
        lines.append(
            f"### {data}: {key} (lower is better)\n\n"
            + table(["recipe", "seed", *(f"step {s}" for s in shown)], body)
        )
        for label in dict.fromkeys(f[0] for f in found):
            runs = [pts for name, _, _, pts in found if name == label]
            steps = sorted(set.intersection(*({s for s, _, _ in pts} for pts in runs)))
            mean = [mean_at(runs, s, 2) for s in steps]
            seconds = [mean_at(runs, s, 1) for s in steps]
            recipe = label.split(" + ")[0]
            style = "--" if "posthoc" in label else "-"
            for col, xs in ((0, steps), (1, seconds)):
                axes[row, col].plot(xs, mean, style, marker="o", markersize=3,
                                    color=colours[recipe], label=label)  # fmt: skip
            if data == "digits":
                for name, _, seed, pts in found:
                    if name == label:
                        payload["steps_to_shipped_fid"].append(
                            {
                                "recipe": label,
                                "seed": seed,
                                "step": first_reaching(pts, SHIPPED_FID),
                            }
                        )
        for col, xlabel in ((0, "training step"), (1, "training seconds (evaluations excluded)")):
            ax = axes[row, col]
            ax.set_xlabel(xlabel)
            ax.set_ylabel(key)
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
            if data == "digits":
                ax.axhline(SHIPPED_FID, color="grey", linewidth=0.8, linestyle=":")
            ax.legend(fontsize=7, ncols=2)
        seeds = len({r["seed"] for r in results})
        axes[row, 0].set_title(f"{data}: {key} against steps (mean of {seeds} seeds)")
        axes[row, 1].set_title(f"{data}: {key} against training time")
    lines.append(
        f"### Steps to the shipped digits model's digits-FID ({SHIPPED_FID}, reached at 5000 "
        "steps)\n\n"
        + table(
            ["recipe", "seed", "first evaluated step at or below"],
            [
                [r["recipe"], r["seed"], r["step"] or f"not within {args.steps}"]
                for r in payload["steps_to_shipped_fid"]
            ],
        )
    )
    lines.append(
        "### The best rebuilt EMA length\n\n"
        + table(
            ["data", "recipe", "seed", "step", "best sigma_rel"],
            [
                [r["data"], r["recipe"], r["seed"], p["step"], p["sigma_rel"]]
                for r in results
                for p in r.get("posthoc", [])
                if p["step"] == max(q["step"] for q in r["posthoc"])
            ],
        )
    )
    _save(fig, RESULTS / f"{args.name}.png", dpi=110)
    write_results(args.name, payload, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
