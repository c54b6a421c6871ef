"""Training throughput of the MLP and the U-Net at their default batch sizes.

    python benchmarks/training_throughput.py [--device cpu] [--repeats 5]

Median steps/s over ``--repeats`` timings of 20 steps each (after 5 warm-up steps),
the two models measured side by side in one run.  Writes
``benchmarks/results/training_throughput.{json,md}``.
"""

import argparse
import statistics
import time

import torch
from common import write_results

import sde_diffusion as sd
from sde_diffusion.networks import ResidualMLP, UNet
from sde_diffusion.parametrization import ScoreModel
from sde_diffusion.training import TrainConfig, Trainer
from sde_diffusion.training.data import digits, load_data


def trainers(device: str) -> dict[str, Trainer]:
    torch.manual_seed(0)
    mlp = ScoreModel(ResidualMLP(2), sd.VPSDE(), "edm", sigma_data=1.5)
    unet = ScoreModel(
        UNet(channels=16, channel_mult=(1, 2), num_res_blocks=1, image_size=8), sd.VPSDE(), "edm"
    )
    default = TrainConfig().batch_size
    return {
        f"mlp (2-D moons, batch {default})": Trainer(
            mlp, load_data("moons", 20000), TrainConfig(device=device, loss_weighting="edm")
        ),
        f"unet (8x8 digits, batch {default})": Trainer(
            unet, digits("train"), TrainConfig(device=device, loss_weighting="edm")
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    runs = trainers(args.device)
    for trainer in runs.values():
        trainer.train(steps=5, progress=False)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, trainer in runs.items():
            start = time.perf_counter()
            trainer.train(steps=trainer.step + 20, progress=False)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            rates[name].append(20 / (time.perf_counter() - start))
    rows = [
        {
            "model": name,
            "median_steps_per_s": statistics.median(r),
            "runs": r,
            "parameters": sum(p.numel() for p in runs[name].net.parameters()),
        }
        for name, r in rates.items()
    ]
    table = [
        f"Device: {args.device}",
        "",
        "| model | parameters | median steps/s |",
        "| --- | ---: | ---: |",
    ]
    table += [f"| {r['model']} | {r['parameters']} | {r['median_steps_per_s']:.1f} |" for r in rows]
    write_results(
        "training_throughput", {"device": args.device, "rows": rows}, "\n".join(table) + "\n"
    )
    print("\n".join(table))


if __name__ == "__main__":
    main()
