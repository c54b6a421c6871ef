"""Train the shipped 2-D model and measure it against the noise floor.

    python benchmarks/train_toy_model.py [--data moons] [--steps 3500]

Trains a residual MLP (EDM preconditioning, VP SDE, EDM loss weighting) with the
project's Trainer, samples 4000 points with ``heun`` at 50 steps on a Karras grid,
and compares sliced W2 to the data with the noise floor (median SW2 between two
independent real sets of 4000).  Writes ``sde_diffusion/pretrained/<data>.safetensors``
(EMA weights only), ``<data>.json`` (metrics) and ``benchmarks/results/toy_<data>.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import machine

import sde_diffusion as sd
from sde_diffusion.evaluation.metrics import noise_floor, sliced_wasserstein
from sde_diffusion.networks import ResidualMLP
from sde_diffusion.parametrization import ScoreModel
from sde_diffusion.plotting import save_scatter
from sde_diffusion.training import TrainConfig, Trainer
from sde_diffusion.training.data import load_data, toy_2d

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="moons")
    parser.add_argument("--steps", type=int, default=3500)
    args = parser.parse_args()
    torch.manual_seed(0)
    sde = sd.VPSDE()
    model = ScoreModel(ResidualMLP(2, width=128, depth=3, emb_dim=64), sde, "edm", sigma_data=1.5)
    config = TrainConfig(
        steps=args.steps, batch_size=512, lr=2e-3, warmup=100, ema_decay=0.998, loss_weighting="edm"
    )
    trainer = Trainer(model, load_data(args.data, 20000), config)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    ema = trainer.ema.module.eval()
    with torch.no_grad():
        res = sd.sample(ema, sde, (4000, 2), "heun", steps=50, schedule="karras", seed=1)
    real = toy_2d(args.data, 4000, seed=99)
    sw = sliced_wasserstein(res.x, real, generator=torch.Generator().manual_seed(0))
    floor = noise_floor(lambda n, s: toy_2d(args.data, n, seed=1000 + s), 4000)
    metrics = {
        "data": args.data,
        "train_seconds": seconds,
        "steps": args.steps,
        "steps_per_second": args.steps / seconds,
        "solver": "heun",
        "solver_steps": 50,
        "nfe": res.nfe,
        "sliced_w2": sw,
        "noise_floor": floor,
        "ratio": sw / floor,
        "machine": machine(),
    }
    out = ROOT / "sde_diffusion" / "pretrained"
    trainer.export(out / f"{args.data}.safetensors")
    (out / f"{args.data}.json").write_text(json.dumps(metrics, indent=1) + "\n")
    save_scatter(
        [("data", real), ("samples (heun, 50 steps)", res.x)],
        ROOT / "benchmarks" / "results" / f"toy_{args.data}.png",
    )
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
