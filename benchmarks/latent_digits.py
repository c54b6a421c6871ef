"""Latent against pixel diffusion on 32x32 digits, at equal training wall time.

    python benchmarks/latent_digits.py --budget 900     # trains, ships and judges both
    python benchmarks/latent_digits.py --eval           # judges the shipped pair again
    python benchmarks/latent_digits.py --picture        # redraws results/latent_digits_samples.png

The 8x8 digits upsampled to 32x32 (``sde_diffusion.training.data.digits32``).  The
**pixel** model is a U-Net on 32x32 images (16 channels, levels 32/16/8, attention at
8x8); the **latent** model is a KL autoencoder (f = 4, 4 latent channels, 16 channels)
followed by the digits U-Net (16 channels, levels 8/4) on its 4x8x8 scaled latents.  Both
get ``--budget`` seconds of training: the pixel model all of it, the latent model's
autoencoder a third and its score model the rest (a short probe of each sets the step
count that fills its share; EMA decay ``1 - 20 / steps``).  Judged: digits-FID of 1000
samples (Heun, 25 steps, NFE 50) mapped back to 8x8 (``digits32_to_8``, the
upsampling's least-squares inverse), median of three seeds; samples/s of 256 samples at
that NFE (decoding included), median of three runs, the two models side by side; the
autoencoder's reconstruction error on the test split and the judge's accuracy on its
reconstructions.  Writes ``sde_diffusion/pretrained/digits32*`` and
``results/latent_digits.{json,md}``, ``results/latent_digits_samples.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from common import fmt, machine, write_results

import sde_diffusion as sd
from sde_diffusion.evaluation.digits_eval import class_accuracy, confident_fraction, digits_fid
from sde_diffusion.networks import Autoencoder, UNet
from sde_diffusion.parametrization import ScoreModel
from sde_diffusion.plotting import image_grid
from sde_diffusion.training import TrainConfig, Trainer
from sde_diffusion.training.autoencoding import (
    AutoencoderModel,
    AutoencoderObjective,
    encode_dataset,
    reconstruction_error,
)
from sde_diffusion.training.data import digits, digits32, digits32_to_8
from sde_diffusion.training.state import autoencoder_source, load_autoencoder, load_score_model

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "sde_diffusion" / "pretrained"
AE_FILE = SHIPPED / "digits32-autoencoder.safetensors"
SOLVER, STEPS, SEEDS = "heun", 25, (1, 2, 3)
PROBE = 15
SAMPLES = 1000


def pixel_model() -> ScoreModel:
    net = UNet(1, channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, attention_below=8,
               image_size=32)  # fmt: skip
    return ScoreModel(net, sd.VPSDE(), "edm", sigma_data=0.5)


def latent_score_model() -> ScoreModel:
    net = UNet(4, channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_below=4,
               image_size=8)  # fmt: skip
    return ScoreModel(net, sd.VPSDE(), "edm", sigma_data=1.0)


def config(steps: int, lr: float = 2e-3) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=128, lr=lr, warmup=min(200, steps // 10),
                       ema_decay=max(0.9, 1 - 20 / steps), checkpoint_every=10**8)  # fmt: skip


def steps_for(seconds: float, build, data, objective=None) -> int:
    """How many steps of this run fill ``seconds`` (a short probe of a throwaway copy)."""
    model = build()
    probe = Trainer(model, data, config(100), objective=objective(model) if objective else None)
    probe.train(2, progress=False)  # first steps allocate
    start = time.perf_counter()
    probe.train(2 + PROBE, progress=False)
    return max(1, int(seconds * PROBE / (time.perf_counter() - start)))


def timed_train(model, data, steps, objective=None) -> tuple[Trainer, float]:
    trainer = Trainer(model, data, config(steps), objective=objective)
    start = time.perf_counter()
    trainer.train(progress=True)
    return trainer, time.perf_counter() - start


def train(budget: float) -> dict:
    train32 = digits32("train")
    record = {"budget_seconds": budget}
    torch.manual_seed(0)
    steps = steps_for(budget, pixel_model, train32)
    trainer, seconds = timed_train(pixel_model(), train32, steps)
    trainer.export(SHIPPED / "digits32.safetensors")
    record["pixel"] = {"steps": steps, "train_seconds": seconds}

    def autoencoder():
        return AutoencoderModel(Autoencoder(1, factor=4, latent_channels=4, channels=16))

    def ae_objective(model):
        return AutoencoderObjective(model.net, kl_weight=1e-6)

    torch.manual_seed(0)
    ae_steps = steps_for(budget / 3, autoencoder, train32, ae_objective)
    model = autoencoder()
    trainer, ae_seconds = timed_train(model, train32, ae_steps, ae_objective(model))
    trainer.export(AE_FILE)
    start = time.perf_counter()
    latents = encode_dataset(train32, load_autoencoder(AE_FILE), autoencoder_source(AE_FILE))
    encode_seconds = time.perf_counter() - start
    left = budget - ae_seconds - encode_seconds
    torch.manual_seed(0)
    steps = steps_for(left, latent_score_model, latents)
    trainer, seconds = timed_train(latent_score_model(), latents, steps)
    trainer.export(SHIPPED / "digits32-latent.safetensors")
    record["latent"] = {
        "autoencoder_steps": ae_steps,
        "autoencoder_seconds": ae_seconds,
        "encode_seconds": encode_seconds,
        "steps": steps,
        "score_seconds": seconds,
        "train_seconds": ae_seconds + encode_seconds + seconds,
    }
    return record


@torch.no_grad()
def judge(record: dict) -> dict:
    test8, test32 = digits("test"), digits32("test")
    torch.set_num_threads(1)
    models = {name: load_score_model(SHIPPED / f"{file}.safetensors")[0]
              for name, file in (("pixel", "digits32"), ("latent", "digits32-latent"))}  # fmt: skip
    shapes = {"pixel": (1, 32, 32), "latent": models["latent"].latent_shape}
    pictures = {}
    for name, model in models.items():
        fids, confident = [], []
        for seed in SEEDS:
            res = sd.sample(model, model.sde, (SAMPLES, *shapes[name]), SOLVER, STEPS, seed=seed)
            small = digits32_to_8(res.x.clamp(-1, 1))
            fids.append(digits_fid(small, test8.x))
            confident.append(confident_fraction(small))
            pictures.setdefault(name, res.x[:50].clamp(-1, 1))
        record[name] |= {"fid": statistics.median(fids), "fids": fids, "nfe": res.nfe // 1,
                         "confident_fraction": statistics.median(confident),
                         "parameters": sum(p.numel() for p in model.net.parameters())}  # fmt: skip
    times = {name: [] for name in models}
    for _ in range(3):  # side by side, alternating
        for name, model in models.items():
            res = sd.sample(model, model.sde, (256, *shapes[name]), SOLVER, STEPS, seed=9)
            times[name].append(res.wall_time)
    for name in models:
        record[name]["samples_per_second"] = 256 / statistics.median(times[name])
    autoencoder = models["latent"].autoencoder
    recon = autoencoder.decode(autoencoder.encode(test32.x)).clamp(-1, 1)
    record["autoencoder"] = {
        "test_mse": reconstruction_error(autoencoder, test32.x),
        "test_rmse_data_units": float((recon - test32.x).square().mean().sqrt()) * 8.0,
        "judge_accuracy_reconstructions": class_accuracy(digits32_to_8(recon), test8.labels),
        "judge_accuracy_test": class_accuracy(test8.x, test8.labels),
        "fid_reconstructions": digits_fid(digits32_to_8(recon), test8.x),
        "parameters": sum(p.numel() for p in autoencoder.parameters()),
    }
    record["fid_train_test"] = digits_fid(digits32_to_8(digits32("train").x), test8.x)
    record["fid_ratio"] = record["latent"]["fid"] / record["pixel"]["fid"]
    record["speedup"] = (
        record["latent"]["samples_per_second"] / record["pixel"]["samples_per_second"]
    )
    picture({**pictures, "reconstructions": recon[:40], "test images": test32.x[:40]})
    return record


def picture(panels: dict[str, torch.Tensor]) -> None:
    """The panels two by two, each 40 images of 32x32 with its title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(6.8, 2.5 * rows), dpi=120)
    titles = {"pixel": "pixel model", "latent": "latent model"}
    for ax, (name, images) in zip(axes.flat, panels.items(), strict=True):
        grid = image_grid(images[:40].float().cpu(), columns=8)
        ax.imshow(grid[..., 0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(titles.get(name, name), fontsize=11)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(ROOT / "benchmarks" / "results" / "latent_digits_samples.png")
    plt.close(fig)


@torch.no_grad()
def draw_picture() -> None:
    """The picture alone, from the shipped models: 40 samples of each, seed 1."""
    test32 = digits32("test")
    panels = {}
    for name, file in (("pixel", "digits32"), ("latent", "digits32-latent")):
        model = load_score_model(SHIPPED / f"{file}.safetensors")[0]
        shape = getattr(model, "latent_shape", (1, 32, 32))
        res = sd.sample(model, model.sde, (40, *shape), SOLVER, STEPS, seed=SEEDS[0])
        panels[name] = res.x.clamp(-1, 1)
    autoencoder = load_autoencoder(AE_FILE)
    panels["reconstructions"] = autoencoder.decode(autoencoder.encode(test32.x[:40])).clamp(-1, 1)
    panels["test images"] = test32.x[:40]
    picture(panels)


def markdown(r: dict) -> str:
    p, lat, ae = r["pixel"], r["latent"], r["autoencoder"]
    rows = [
        "| model | training | steps | digits-FID (median of 3) | samples/s at NFE "
        f"{p['nfe']} | parameters |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| pixel 32x32 U-Net | {p['train_seconds']:.0f} s | {p['steps']} | {fmt(p['fid'])} | "
        f"{fmt(p['samples_per_second'])} | {p['parameters']:,} |",
        f"| latent: autoencoder + 4x8x8 U-Net | {lat['autoencoder_seconds']:.0f} s + "
        f"{lat['score_seconds']:.0f} s | {lat['autoencoder_steps']} + {lat['steps']} | "
        f"{fmt(lat['fid'])} | {fmt(lat['samples_per_second'])} | "
        f"{ae['parameters']:,} + {lat['parameters']:,} |",
    ]
    return (
        "\n".join(rows)
        + f"\n\nFID ratio latent / pixel: {fmt(r['fid_ratio'])} (goal <= 1.2); sampling speed-up "
        f"{fmt(r['speedup'])}x (goal >= 4); train/test floor {fmt(r['fid_train_test'])}.\n\n"
        f"Autoencoder on the test split: MSE {fmt(ae['test_mse'])} (model units, [-1, 1]), "
        f"RMSE {fmt(ae['test_rmse_data_units'])} (data units, [0, 16]); the judge's accuracy "
        f"{fmt(ae['judge_accuracy_reconstructions'])} on reconstructions against "
        f"{fmt(ae['judge_accuracy_test'])} on the originals; digits-FID of the reconstructions "
        f"{fmt(ae['fid_reconstructions'])}.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=900.0, help="training seconds each")
    parser.add_argument("--eval", action="store_true", help="judge the shipped models only")
    parser.add_argument("--samples", type=int, default=SAMPLES, help="judged samples per seed")
    parser.add_argument("--picture", action="store_true", help="draw the picture only")
    args = parser.parse_args()
    globals()["SAMPLES"] = args.samples
    torch.set_num_threads(1)
    if args.picture:
        draw_picture()
        return
    path = ROOT / "benchmarks" / "results" / "latent_digits.json"
    if args.eval:
        record = {k: v for k, v in json.loads(path.read_text()).items() if k != "machine"}
    else:
        record = train(args.budget)
    record = judge(record)
    write_results("latent_digits", record, markdown(record))
    for name, file in (("pixel", "digits32"), ("latent", "digits32-latent")):
        command = f"python benchmarks/latent_digits.py --budget {record['budget_seconds']:.0f}"
        metrics = {**record[name], "machine": machine(), "command": command}
        (SHIPPED / f"{file}.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(markdown(record))


if __name__ == "__main__":
    main()
