"""Run by torchrun in test_training: a few data-parallel steps on CPU (gloo)."""

import sys
from pathlib import Path

import torch

import sde_diffusion as sd
from sde_diffusion.data import load_data
from sde_diffusion.networks import ResidualMLP
from sde_diffusion.parametrization import ScoreModel
from sde_diffusion.training import TrainConfig, Trainer, init_distributed

out = Path(sys.argv[1])
assert init_distributed()
torch.manual_seed(0)  # the same initial weights on every rank
model = ScoreModel(ResidualMLP(2, width=16, depth=1, emb_dim=8), sd.VPSDE())
trainer = Trainer(model, load_data("moons", 500), TrainConfig(steps=8, batch_size=16, warmup=2))
trainer.train(checkpoint=out / "ddp.safetensors", progress=False)
flat = torch.cat([p.detach().flatten() for p in trainer.net.parameters()])
(out / f"rank{trainer.rank}.txt").write_text(
    f"{trainer.world} {flat.double().sum().item()!r} {trainer.history[0]['loss']!r}\n"
)
torch.distributed.destroy_process_group()
