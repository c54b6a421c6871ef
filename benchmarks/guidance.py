"""Classifier-free guidance on the shipped class-conditional digits model.

    python benchmarks/guidance.py      # writes benchmarks/results/guidance.{json,md,png}

For each guidance scale w in {0, 0.5, 1, 2, 4} (``D(∅) + w (D(c) − D(∅))``: 0 is the
unconditional model, 1 the conditional one), 100 samples per class are drawn with
``heun`` on 25 Karras steps (50 NFE) from the same per-sample noise.  Reported:
the share the digits classifier assigns to the requested class, digits-FID to the
test split over all 1000 samples, and the mean over classes of the per-class
digits-FID (against that class's images in the whole digits set), plus the network
passes spent.  The same with guidance limited to noise levels sigma/alpha in
``INTERVAL`` (Kynkäänniemi et al. 2024).

Then the variants, at equal network passes (two a call, 100 in all): CFG, CFG rescale
(Lin et al. 2024), APG (Sadat et al. 2025), CFG-Zero* (Fan et al. 2025) and autoguidance
(Karras et al. 2024, with ``digits-cond-guide``: half the width, half the training steps)
under ``heun`` on 25 steps, and CFG++ (Chung et al. 2024) under ``euler_cfg_pp`` on 50
steps beside plain CFG under DDIM (``euler_cfg_pp`` without the guidance wrapper's
unconditional branch is DDIM) on the same 50 steps.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from common import RESULTS, table, write_results

import sde_diffusion as sd
from sde_diffusion.evaluation.digits_eval import class_accuracy, digits_fid
from sde_diffusion.evaluation.problems import load_problem
from sde_diffusion.plotting import save_image_grid
from sde_diffusion.training.data import digits

SCALES = (0.0, 0.5, 1.0, 2.0, 4.0)
INTERVAL = (0.2, 2.0)
PER_CLASS = 100


def run(problem, scale: float, interval, labels: torch.Tensor, steps: int, solver="heun",
        **variant) -> dict:  # fmt: skip
    model = sd.ClassifierFreeGuidance(
        problem.model, scale, len(problem.class_names), interval=interval, sde=problem.sde,
        **variant,
    )  # fmt: skip
    with torch.inference_mode():
        res = sd.sample(
            model,
            problem.sde,
            (len(labels), *problem.event_shape),
            solver,
            steps=steps,
            cond=labels,
            noise=sd.PerSampleNoise(0),
        )
    x = res.x.clamp(-1, 1)
    everything, test = digits("all"), digits("test")
    per_class = [
        digits_fid(x[labels == k], everything.x[everything.labels == k]) for k in range(10)
    ]
    return {
        "scale": scale,
        "interval": list(interval) if interval else None,
        "accuracy": class_accuracy(x, labels),
        "fid": digits_fid(x, test.x),
        "fid_per_class_mean": statistics.mean(per_class),
        "fid_per_class": per_class,
        "nfe": res.nfe,
        "network_passes": res.network_passes,
        "samples": x,
    }


def variants(problem, labels: torch.Tensor, guide) -> list[dict]:
    """The guidance variants at equal network passes (see the module)."""
    rows = []
    for w in (2.0, 4.0):
        settings = [
            ("CFG", "heun", 25, {}),
            ("CFG rescale φ=0.7", "heun", 25, {"rescale": 0.7}),
            ("APG η=0", "heun", 25, {"apg": sd.APG(eta=0.0)}),
            ("APG η=0, β=−0.5", "heun", 25, {"apg": sd.APG(eta=0.0, momentum=-0.5)}),
            ("CFG-Zero*", "heun", 25, {"zero_star": True}),
            ("autoguidance", "heun", 25, {"guide": guide}),
        ]
        for name, solver, steps, options in settings:
            row = run(problem, w, None, labels, steps, solver, **options)
            rows.append({"variant": name, "solver": solver, **row})
    for w in (0.5, 1.0, 2.0):  # CFG++'s scale is its λ: useful values are small
        for name, solver in (("CFG (DDIM)", "ddim"), ("CFG++", "euler_cfg_pp")):
            row = run(problem, w, None, labels, 50, solver)
            rows.append({"variant": name, "solver": solver, **row})
    return rows


def variants_markdown(rows: list[dict]) -> str:
    return "digits-cond, 100 samples per class, same noise for every row.\n\n" + table(
        ["variant", "w", "solver", "class accuracy", "digits-FID (all)",
         "digits-FID per class (mean)", "NFE", "network passes"],
        [
            [r["variant"], f"{r['scale']:g}", r["solver"], f"{100 * r['accuracy']:.1f}%",
             r["fid"], r["fid_per_class_mean"], str(r["nfe"]), str(r["network_passes"])]
            for r in rows
        ],
    )  # fmt: skip


def markdown(rows: list[dict], steps: int) -> str:
    return (
        f"digits-cond, heun, {steps} Karras steps, {PER_CLASS} samples per class, "
        "same noise for every row.\n\n"
        + table(
            [
                "w",
                "interval σ/α",
                "class accuracy",
                "digits-FID (all)",
                "digits-FID per class (mean)",
                "NFE",
                "network passes",
            ],
            [
                [
                    f"{r['scale']:g}",
                    "–" if r["interval"] is None else f"[{r['interval'][0]}, {r['interval'][1]}]",
                    f"{100 * r['accuracy']:.1f}%",
                    r["fid"],
                    r["fid_per_class_mean"],
                    str(r["nfe"]),
                    str(r["network_passes"]),
                ]
                for r in rows
            ],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--report", action="store_true", help="rewrite the table from the JSON")
    args = parser.parse_args()
    if args.report:
        saved = json.loads((RESULTS / "guidance.json").read_text())
        text = markdown(saved["rows"], saved["steps"])
        text += "\n\n## Variants at equal network passes\n\n" + variants_markdown(saved["variants"])
        (RESULTS / "guidance.md").write_text(f"Machine: {saved['machine']}\n\n{text}")
        return
    problem = load_problem("digits-cond")
    labels = torch.arange(10).repeat_interleave(PER_CLASS)
    rows = [run(problem, w, None, labels, args.steps) for w in SCALES]
    rows += [run(problem, w, INTERVAL, labels, args.steps) for w in SCALES if w > 1]
    picks = [r["samples"].reshape(10, PER_CLASS, 1, 8, 8)[:, :8] for r in rows[: len(SCALES)]]
    grid = torch.stack(picks, 1).flatten(0, 2)  # per class: 8 samples at each scale
    save_image_grid(grid, RESULTS / "guidance_samples.png", columns=8 * len(SCALES))
    guide = load_problem("digits-cond-guide").model
    extra = variants(problem, labels, guide)
    for r in rows + extra:
        r.pop("samples")
    text = markdown(rows, args.steps)
    text += "\n\n## Variants at equal network passes\n\n" + variants_markdown(extra)
    write_results("guidance", {"steps": args.steps, "rows": rows, "variants": extra}, text)
    print(text)


if __name__ == "__main__":
    main()
