"""Data-parallel scaling under torchrun: training steps/s and sampling samples/s, 1 vs N processes.

    python benchmarks/distributed.py [--procs 2] [--repeats 5]

Each configuration is launched with ``torchrun --standalone --nproc_per_node P`` and
``OMP_NUM_THREADS = T``: (1 process, 1 thread), (1 process, N threads) and (N
processes, 1 thread each), so every core is busy in the last two.  Inside, after
warm-up, rank 0 times ``--repeats`` windows between barriers and reports the median:
training 20 steps of the MLP (2-D moons) and of the U-Net (8x8 digits) at a global
batch of 256, and sampling 512 digits with ``heun`` (10 steps, batches of 64)
through ``sd.sample_batched``.  On a GPU machine every process takes one device (NCCL).
Writes ``benchmarks/results/distributed.{json,md}``.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import fmt, write_results

import sde_diffusion as sd
from sde_diffusion.distributed import barrier, init_distributed, rank_and_world
from sde_diffusion.evaluation.problems import load_problem
from sde_diffusion.networks import ResidualMLP, UNet
from sde_diffusion.parametrization import ScoreModel
from sde_diffusion.training import TrainConfig, Trainer
from sde_diffusion.training.data import digits, load_data


def timed(run, repeats: int, device: torch.device) -> float:
    """Median seconds of ``run()`` over ``repeats`` windows, all ranks in step."""
    times = []
    for _ in range(repeats):
        barrier()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        barrier()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def worker(repeats: int, out: Path) -> None:
    """Run inside torchrun: time training and sampling, rank 0 writes JSON."""
    init_distributed()
    rank, world = rank_and_world()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else "cpu"
    device = torch.device(device)
    torch.manual_seed(0)
    models = {
        "mlp": (ScoreModel(ResidualMLP(2), sd.VPSDE(), "edm", 1.5), load_data("moons", 20000)),
        "unet": (
            ScoreModel(UNet(channels=16, channel_mult=(1, 2), num_res_blocks=1, image_size=8),
                       sd.VPSDE(), "edm"),
            digits("train"),
        ),
    }  # fmt: skip
    result = {"world": world, "threads": torch.get_num_threads()}
    for name, (model, data) in models.items():
        trainer = Trainer(model, data, TrainConfig(batch_size=256, device=str(device)))
        trainer.train(steps=5, progress=False)
        seconds = timed(
            lambda t=trainer: t.train(steps=t.step + 20, progress=False), repeats, device
        )
        result[f"train_{name}_steps_per_s"] = 20 / seconds
    problem = load_problem("digits", device=device)

    def draw():
        with torch.inference_mode():
            sd.sample_batched(problem.model, problem.sde, (512, 1, 8, 8), "heun", 10,
                              batch_size=64, device=device)  # fmt: skip

    draw()
    result["sample_digits_per_s"] = 512 / timed(draw, repeats, device)
    if rank == 0:
        out.write_text(json.dumps(result))


def launch(procs: int, threads: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={procs}", __file__, "--worker", str(out),
                   "--repeats", str(repeats)]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(command, check=True, env=env, capture_output=True, text=True)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        return worker(args.repeats, args.worker)
    n = args.procs
    configs = [(1, 1), (1, n), (n, 1)]
    rows = [launch(p, t, args.repeats) | {"procs": p} for p, t in configs]
    base = rows[1]  # one process using every core: what a user runs without torchrun
    columns = ["train_mlp_steps_per_s", "train_unet_steps_per_s", "sample_digits_per_s"]
    lines = [
        "| processes × threads | MLP train steps/s | U-Net train steps/s | digits samples/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        cells = [f"{fmt(row[c])} ({row[c] / base[c]:.2f}×)" for c in columns]
        lines.append(f"| {row['procs']} × {row['threads']} | " + " | ".join(cells) + " |")
    markdown = (
        "Medians of timed windows between barriers; in brackets the ratio to one process "
        f"with {n} threads.\n\n" + "\n".join(lines) + "\n"
    )
    write_results("distributed", {"rows": rows, "repeats": args.repeats}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
