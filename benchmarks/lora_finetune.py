"""LoRA fine-tuning of the shipped digits model on one class: the class share it reaches.

    python benchmarks/lora_finetune.py                 # rank 4, 2500 steps, the 3s
    python benchmarks/lora_finetune.py --digit 7 --rank 2

Writes the digit's training images as an .npz, runs the documented command

    sdediff train --resume-weights digits --lora-rank R --data DIGIT.npz --steps N \\
        --batch-size 64 --lr 5e-3 --ema 0.99

then draws 1000 samples (Heun, 25 steps) from the base model with the adapter at several
strengths (``--lora-scale``; 0 is the base model) and reports the share the digits
classifier assigns to the digit, its confident share, and the adapter's size (parameters
and bytes) against the model's.  Results in ``results/lora_finetune.*``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, table, write_results

import sde_diffusion as sd
from sde_diffusion.evaluation.digits_eval import confident_fraction, load_digits_classifier
from sde_diffusion.plotting import save_image_grid
from sde_diffusion.pretrained import load_pretrained, pretrained_path
from sde_diffusion.training.data import digits
from sde_diffusion.training.lora import apply_lora, load_lora


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--digit", type=int, default=3)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2500)
    args = parser.parse_args()
    judge = load_digits_classifier()
    rows, pictures = [], []
    with tempfile.TemporaryDirectory() as folder:
        where = Path(folder)
        data = digits("train")
        np.savez(where / "one.npz", x=data.x[data.labels == args.digit].numpy())
        command = [
            sys.executable, "-m", "sde_diffusion", "train", "--resume-weights", "digits",
            "--lora-rank", str(args.rank), "--data", "one.npz", "--steps", str(args.steps),
            "--batch-size", "64", "--lr", "5e-3", "--ema", "0.99", "--out", "one.safetensors",
        ]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, cwd=where, check=True, capture_output=True)
        seconds = time.perf_counter() - start
        adapter = where / "one.lora.safetensors"
        weights, _ = load_lora(adapter)
        adapter_params = sum(v.numel() for v in weights.values())
        adapter_bytes = adapter.stat().st_size
        for scale in (0.0, 0.5, 0.8, 1.0):
            model, _ = load_pretrained("digits")
            if scale:
                apply_lora(model.net, adapter, scale)
            with torch.no_grad():
                x = sd.sample(model, model.sde, (1000, 1, 8, 8), "heun", 25, seed=1).x
                x = x.clamp(-1, 1)
                share = float((judge(x).argmax(1) == args.digit).float().mean())
            rows.append([scale, share, confident_fraction(x, classifier=judge)])
            pictures.append(x[:10])
    model_params = sum(p.numel() for p in load_pretrained("digits")[0].parameters())
    model_bytes = pretrained_path("digits").stat().st_size
    save_image_grid(torch.cat(pictures), RESULTS / "lora_finetune.png", columns=10)
    markdown = (
        f"LoRA rank {args.rank} on the shipped digits model, {args.steps} steps on the "
        f"{int((data.labels == args.digit).sum())} training images of digit {args.digit} "
        f"({seconds:.0f} s). Adapter: {adapter_params:,} parameters "
        f"({adapter_params / model_params:.1%} of the model's {model_params:,}), "
        f"{adapter_bytes / 1024:.0f} KiB ({adapter_bytes / model_bytes:.1%} of the model's "
        f"file).\n\n"
        + table(
            ["lora scale", f"share judged {args.digit}", "confident share (max p >= 0.9)"],
            rows,
        )
    )
    payload = {
        "args": vars(args),
        "seconds": seconds,
        "adapter_parameters": adapter_params,
        "model_parameters": model_params,
        "adapter_bytes": adapter_bytes,
        "model_bytes": model_bytes,
        "rows": [dict(zip(["scale", "class_share", "confident"], r, strict=True)) for r in rows],
    }
    write_results("lora_finetune", payload, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
