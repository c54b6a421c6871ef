"""Inpainting 32x32 digits with every restoration method, in pixel and in latent space.

    python benchmarks/latent_inpainting.py     # -> results/latent_inpainting.{json,md,png}

The shipped ``digits32`` (pixel) and ``digits32-latent`` models restore the first
``INPUTS`` test digits (``digits32``) with the centred 16x16 box hidden, noise-free, each
method at about NFE 100 (``inverse.settings``: the budgets of ``inverse.py``, default
options).  On the latent model ``dps`` measures the pixels through the decoder; every other
method inpaints the latents (``sde_diffusion.latent.latent_inpainting``: the 4x4 blocks
wholly observed, the 8x8 latent cells under the box hidden).  Scores: the digits judge's
accuracy on the restorations mapped back to 8x8 (``digits32_to_8``) against the true
labels, PSNR to the truth, the RMSE of the observed pixels (data consistency; the
autoencoder's own reconstruction error is the latent model's floor), the network passes
and the wall time (one thread, the two models one after the other for each method).
"""

from __future__ import annotations

import time

import torch
from common import RESULTS, table, write_results
from inverse import settings

import sde_diffusion as sd
from sde_diffusion.evaluation.digits_eval import class_accuracy
from sde_diffusion.evaluation.problems import load_problem
from sde_diffusion.measurements import build_measurement
from sde_diffusion.plotting import image_grid
from sde_diffusion.restoration import method_names
from sde_diffusion.training.data import digits, digits32, digits32_to_8

INPUTS, NFE, SHOWN = 64, 100, 8
MODELS = {"pixel": "digits32", "latent": "digits32-latent"}


def scores(x, truth, labels, op, y) -> dict:
    x = x.clamp(-1, 1)
    mse = (x - truth).flatten(1).square().mean(1).clamp_min(1e-12)
    return {
        "accuracy": class_accuracy(digits32_to_8(x), labels),
        "psnr": float((10 * torch.log10(4.0 / mse)).mean()),
        "observed_rmse": float((op.forward(x) - y).square().mean().sqrt()),
    }


@torch.no_grad()
def main() -> None:
    torch.set_num_threads(1)
    truth, labels = digits32("test").x[:INPUTS], digits("test").labels[:INPUTS]
    op = build_measurement("inpaint", (1, 32, 32), mask="box")
    y = op.forward(truth)
    problems = {name: load_problem(model) for name, model in MODELS.items()}
    latent = problems["latent"].model
    floor = latent.decode(latent.encode(truth))
    record = {
        "inputs": INPUTS, "nfe_budget": NFE, "mask": "box (centred 16x16 hidden)",
        "clean_accuracy": class_accuracy(digits32_to_8(truth), labels),
        "reconstruction": scores(floor, truth, labels, op, y), "rows": [],
    }  # fmt: skip
    pictures = {"measured": op.adjoint(y)[:SHOWN], "truth": truth[:SHOWN]}
    for method in method_names():
        options = settings(method, NFE)
        steps = options.pop("steps")
        for name, problem in problems.items():
            start = time.perf_counter()
            res = sd.restore(problem.model, problem.sde, op, y, 0.0, method, steps=steps,
                             seed=1, **options)  # fmt: skip
            row = {"method": method, "model": name, "nfe": res.nfe,
                   "passes": res.network_passes, "wall": time.perf_counter() - start,
                   **scores(res.x, truth, labels, op, y)}  # fmt: skip
            record["rows"].append(row)
            print(row, flush=True)
            if name == "latent":
                pictures[method] = res.x[:SHOWN].clamp(-1, 1)
    picture(pictures)
    write_results("latent_inpainting", record, markdown(record))
    print(markdown(record))


def picture(rows: dict[str, torch.Tensor]) -> None:
    """One labelled row of ``SHOWN`` images each: the measurement, the truth, each method
    on the latent model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(6.4, 0.85 * len(rows)), dpi=120)
    for ax, (name, images) in zip(axes, rows.items(), strict=True):
        grid = image_grid(images.float(), columns=SHOWN)
        ax.imshow(grid[..., 0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("digits32-latent: the centred box inpainted by each method", fontsize=11)
    fig.tight_layout()
    fig.subplots_adjust(left=0.2)  # room for the longest label
    fig.savefig(RESULTS / "latent_inpainting.png")
    plt.close(fig)


def markdown(r: dict) -> str:
    rec = r["reconstruction"]
    lines = [
        f"{r['inputs']} test digits, {r['mask']}, noise-free, about NFE {r['nfe_budget']} "
        f"each. Judge accuracy on the clean digits {r['clean_accuracy']:.3f}; the "
        f"autoencoder's reconstructions: accuracy {rec['accuracy']:.3f}, PSNR "
        f"{rec['psnr']:.1f} dB, observed-pixel RMSE {rec['observed_rmse']:.3f} (the latent "
        "model's floor).\n"
    ]
    rows = [[row["method"], row["model"], row["passes"], row["accuracy"], row["psnr"],
             row["observed_rmse"], row["wall"]] for row in r["rows"]]  # fmt: skip
    header = ["method", "model", "passes", "accuracy", "PSNR dB", "observed RMSE", "wall s"]
    return "\n".join(lines) + "\n" + table(header, rows)


if __name__ == "__main__":
    main()
