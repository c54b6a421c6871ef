"""Train the shipped digits U-Nets and judge their samples with the digits classifier.

    python benchmarks/train_digits_model.py --steps 5000      # the shipped digits
    python benchmarks/train_digits_model.py --conditional     # the shipped digits-cond (3000)
    python benchmarks/train_digits_model.py --guide   # digits-cond-guide: 8 channels, 1500 steps

A small U-Net (EDM preconditioning, VP SDE, EDM loss weighting) on the digits train
split.  1000 samples are drawn with ``--solver`` on a Karras grid; reported: digits-FID
to the test split against the train/test floor, and the share the classifier
recognises with max softmax >= 0.9.  ``--conditional`` adds a label embedding with a
null label, trains with condition dropout 0.1, draws 100 samples per class without
guidance and also reports the share the classifier assigns to the requested class.
Writes ``sde_diffusion/pretrained/digits[-cond].*`` and
``benchmarks/results/digits[-cond]_samples.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import machine

import sde_diffusion as sd
from sde_diffusion.evaluation.digits_eval import class_accuracy, confident_fraction, digits_fid
from sde_diffusion.networks import UNet
from sde_diffusion.parametrization import ScoreModel
from sde_diffusion.plotting import save_image_grid
from sde_diffusion.training import TrainConfig, Trainer
from sde_diffusion.training.data import digits

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--solver", default="heun")
    parser.add_argument("--nfe-steps", type=int, default=25)
    parser.add_argument("--conditional", action="store_true")
    parser.add_argument(
        "--guide",
        action="store_true",
        help="the autoguidance guide of digits-cond: half the width, half the steps",
    )
    args = parser.parse_args()
    if args.guide:
        args.conditional = True
        args.steps = min(args.steps, 1500)
    name = "digits-cond-guide" if args.guide else "digits-cond" if args.conditional else "digits"
    torch.manual_seed(0)
    train, test = digits("train"), digits("test")
    sde = sd.VPSDE()
    net = UNet(
        in_channels=1,
        channels=8 if args.guide else 16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_below=4,
        image_size=8,
        num_classes=10 if args.conditional else None,
    )
    model = ScoreModel(net, sde, "edm", sigma_data=0.5)
    config = TrainConfig(
        steps=args.steps,
        batch_size=128,
        lr=2e-3,
        warmup=200,
        ema_decay=0.999,
        loss_weighting="edm",
        cond_drop_prob=0.1,
    )
    trainer = Trainer(model, train, config)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    ema = trainer.ema.module.eval()
    labels = torch.arange(10).repeat_interleave(100) if args.conditional else None
    with torch.no_grad():
        res = sd.sample(
            ema,
            sde,
            (1000, 1, 8, 8),
            args.solver,
            steps=args.nfe_steps,
            schedule="karras",
            seed=1,
            cond=labels,
        )
    samples = res.x.clamp(-1, 1)
    metrics = {
        "train_seconds": seconds,
        "steps": args.steps,
        "steps_per_second": args.steps / seconds,
        "parameters": sum(p.numel() for p in net.parameters()),
        "solver": args.solver,
        "solver_steps": args.nfe_steps,
        "nfe": res.nfe,
        "fid_samples_test": digits_fid(samples, test.x),
        "fid_train_test": digits_fid(train.x, test.x),
        "confident_fraction": confident_fraction(samples),
        "machine": machine(),
    }
    metrics["fid_ratio"] = metrics["fid_samples_test"] / metrics["fid_train_test"]
    if args.conditional:
        metrics["class_accuracy"] = class_accuracy(samples, labels)
    out = ROOT / "sde_diffusion" / "pretrained"
    trainer.export(out / f"{name}.safetensors")
    (out / f"{name}.json").write_text(json.dumps(metrics, indent=1) + "\n")
    grid = (
        samples[:100] if labels is None else samples.reshape(10, 100, 1, 8, 8)[:, :10].flatten(0, 1)
    )
    save_image_grid(grid, ROOT / "benchmarks" / "results" / f"{name}_samples.png")
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
