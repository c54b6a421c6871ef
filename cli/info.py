"""``sdediff info``: what a checkpoint holds."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from sde_diffusion.pretrained import available, pretrained_path
from sde_diffusion.training import load_score_model
from sde_diffusion.training.checkpoint import load_checkpoint, prefixed
from sde_diffusion.training.state import load_autoencoder

from .common import console, friendly_errors, plural


@click.command()
@click.argument("checkpoint")
@click.option("--json", "as_json", is_flag=True, help="Print the full config as JSON.")
def info(checkpoint: str, as_json: bool) -> None:
    """Show a checkpoint's config, SDE, parameter count and training steps (an
    autoencoder's: its latents, scale and reconstruction error).

    CHECKPOINT is a .safetensors path or a shipped model name (digits, digits-fast,
    digits-cond, moons).

    \b
    Example:
      sdediff info digits
    """
    path = pretrained_path(checkpoint) if checkpoint in available() else Path(checkpoint)
    if not path.exists():
        raise click.BadParameter(f"no checkpoint at {checkpoint}", param_hint="CHECKPOINT")
    with friendly_errors("reading the checkpoint"):
        tensors, config = load_checkpoint(path)
        if config.get("network", {}).get("type") == "autoencoder":
            model, sde = load_autoencoder(path), None
        else:
            model, config = load_score_model(path)  # rebuilt: metadata must match the tensors
            sde = model.sde
    if as_json:
        click.echo(json.dumps(config, indent=2))
        return
    table = Table(title=str(path), show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    network = dict(config.get("network", {}))
    train = config.get("train", {})
    data = config.get("data", {})
    rows = {
        "network": f"{network.pop('type', '?')} "
        + ", ".join(f"{k}={v}" for k, v in network.items()),
        "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        "SDE": repr(sde),
        "parametrization": f"{config.get('parametrization')} "
        f"(sigma_data={config.get('sigma_data')})",
        "data": f"{data.get('name')} {data.get('event_shape')} "
        f"(x_model = (x - {data.get('shift')}) / {data.get('scale')})",
        "training steps": f"{config.get('step', '?')} of {train.get('steps', '?')}",
        "loss weighting": str(train.get("loss_weighting")),
        "batch size, lr, EMA": f"{train.get('batch_size')}, {train.get('lr')}, "
        f"{train.get('ema_decay')}",
        "resumable": "yes" if prefixed(tensors, "optim") else "no (weights only)",
    }
    objective, sampling = config.get("objective"), config.get("sampling")
    if objective and sampling:  # a student: what it learned from, how it samples
        steps = len(sampling["times"]) - 1
        teacher = f" of {objective['teacher']}" if "teacher" in objective else " (no teacher)"
        rows["student"] = (
            f"{objective['method']}{teacher}; samples with {sampling['solver']}, "
            f"{steps} {plural(steps, 'step')} on its own times"
        )
    if sde is None:  # an autoencoder: no SDE, its latents instead
        shape = model.latent_shape(tuple(data.get("event_shape", (1, 8, 8))))
        for key in ("SDE", "parametrization", "loss weighting"):
            rows.pop(key)
        rows["latents"] = (
            f"{shape}, x{network['factor']} smaller; scale {network['latent_scale']:.4g}, "
            f"shift {network['latent_shift']:.4g}; reconstruction MSE "
            f"{config.get('reconstruction_mse', float('nan')):.4g} (model units)"
        )
    latent = data.get("latent")
    if latent is not None:
        rows["latent space"] = (
            f"of the autoencoder {latent['autoencoder']} (looked for beside this file, then "
            f"at {latent['autoencoder_path']}); decodes to images {tuple(latent['image_shape'])}"
        )
    for key, value in rows.items():
        table.add_row(key, value)
    console.print(table)
