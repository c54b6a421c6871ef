"""``sdediff train-autoencoder``: train the KL autoencoder a latent score model works in."""

from __future__ import annotations

from pathlib import Path

import click
import torch

from sde_diffusion.networks.autoencoder import FACTORS, Autoencoder
from sde_diffusion.training import TrainConfig, Trainer
from sde_diffusion.training.autoencoding import (
    RECONSTRUCTION_LOSSES,
    AutoencoderModel,
    AutoencoderObjective,
)
from sde_diffusion.training.checkpoint import CheckpointError, load_checkpoint
from sde_diffusion.training.data import load_data
from sde_diffusion.training.log import metrics_path

from .common import (
    console,
    finite,
    friendly_errors,
    library_default,
    out_option,
    resume_option,
    writable_output,
)
from .sample import device_option, seed_option
from .train import resume_run, run_trainer, training_device

DEFAULTS = {  # the library's: the flags show them
    "factor": library_default(Autoencoder, "factor"),
    "channels": library_default(Autoencoder, "latent_channels"),
    "width": library_default(Autoencoder, "channels"),
    "kl_weight": library_default(AutoencoderObjective, "kl_weight"),
    "reconstruction": library_default(AutoencoderObjective, "reconstruction"),
}
MODEL_SETTINGS = ("data", "factor", "channels", "width", "kl_weight", "reconstruction")


def run_record(path: Path) -> dict[str, object]:
    """The settings of an autoencoder run's checkpoint, named as the flags name them."""
    try:
        _, config = load_checkpoint(path, "cpu")
        net, objective = config["network"], config["objective"]
        if net.get("type") != "autoencoder" or "optimizer_groups" not in config:
            raise KeyError("network")
        return {
            "data": config["data"].get("source", config["data"]["name"]),
            "factor": net["factor"],
            "channels": net["latent_channels"],
            "width": net["channels"],
            "kl_weight": objective["kl_weight"],
            "reconstruction": objective["reconstruction"],
            **{k: config["train"][k] for k in ("steps", "batch_size", "lr", "seed")},
            "checkpoint_every": config["train"]["checkpoint_every"],
        }
    except (KeyError, TypeError, AttributeError):
        raise CheckpointError(
            f"{path} is not a training checkpoint of sdediff train-autoencoder"
        ) from None


def resume_defaults(ctx: click.Context, param: click.Parameter, path: Path | None):
    """With ``--resume``, the run's own settings become the defaults."""
    if path is None:
        return None
    try:
        ctx.default_map = {**run_record(path), **(ctx.default_map or {})}
    except CheckpointError as err:
        raise click.BadParameter(str(err), ctx, param) from None
    return path


@click.command("train-autoencoder")
@click.option(
    "--data",
    default="digits32",
    show_default=True,
    help="Images: digits, digits32, an .npy/.npz of (N, C, H, W), or a folder.",
)
@click.option(
    "--factor",
    type=click.Choice([str(f) for f in FACTORS]),
    default=str(DEFAULTS["factor"]),
    show_default=True,
    help="Downsampling factor f: latents are (channels, H/f, W/f).",
)
@click.option(
    "--channels",
    type=click.IntRange(1, 64),
    default=DEFAULTS["channels"],
    show_default=True,
    help="Latent channels.",
)
@click.option(
    "--width",
    type=click.IntRange(1, 1024),
    default=DEFAULTS["width"],
    show_default=True,
    help="The first level's channels (doubled per halving, <= 4x).",
)
@click.option(
    "--kl-weight",
    type=click.FloatRange(min=0),
    callback=finite,
    default=DEFAULTS["kl_weight"],
    show_default=True,
    help="Weight of KL(q(z|x) || N(0, I)) per pixel beside the reconstruction error.",
)
@click.option(
    "--reconstruction",
    type=click.Choice(RECONSTRUCTION_LOSSES),
    default=DEFAULTS["reconstruction"],
    show_default=True,
)
@click.option("--steps", type=click.IntRange(1, 10**8), default=2000, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 10**6), default=64, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    callback=finite,
    default=1e-3,
    show_default=True,
)
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=500, show_default=True)
@out_option("runs/autoencoder.safetensors")
@resume_option("Continue from this checkpoint; its settings are the defaults.", resume_defaults)
@seed_option
@device_option
def train_autoencoder(data, factor, channels, width, kl_weight, reconstruction, steps,
                      batch_size, lr, checkpoint_every, out, resume, seed, device):  # fmt: skip
    """Train a KL autoencoder (LDM's KL-f) for latent diffusion; checkpoints are atomic and
    resumable, and record the latent scale and the reconstruction error.

    \b
    Examples:
      sdediff train-autoencoder --data digits32 --factor 4 --channels 4 --out ae.safetensors
      sdediff train --latent ae.safetensors --data digits32 --out latent.safetensors
    """
    factor = int(factor)
    ctx = click.get_current_context()
    if resume is not None:
        if ctx.get_parameter_source("out") == click.core.ParameterSource.DEFAULT:
            out = resume
        values = (data, factor, channels, width, kl_weight, reconstruction)
        given = dict(zip(MODEL_SETTINGS, values, strict=True))
        recorded = run_record(resume)
        changed = [k for k in MODEL_SETTINGS if given[k] != recorded[k]]
        if changed:
            raise click.BadParameter(
                f"{resume} was trained with {changed[0]} {recorded[changed[0]]!r}, not "
                f"{given[changed[0]]!r}; --resume continues a run with its own settings",
                param_hint="--" + changed[0].replace("_", "-"),
            )
    writable_output(out, suffixes=(".safetensors",))
    device = training_device(device, batch_size)
    with friendly_errors("training"):
        dataset = load_data(data, 20000, seed)
        dataset.info["source"] = data
        shape = tuple(dataset.x.shape[1:])
        if len(shape) != 3 or shape[1] % factor or shape[2] % factor:
            raise click.BadParameter(
                f"the autoencoder needs images (C, H, W) with H and W divisible by {factor}; "
                f"{dataset.name} holds {shape}",
                param_hint="--data",
            )
        torch.manual_seed(seed)
        net = Autoencoder(shape[0], factor, channels, width)
        model = AutoencoderModel(net)
        config = TrainConfig(
            steps=steps, batch_size=batch_size, lr=lr, seed=seed,
            checkpoint_every=checkpoint_every, device=str(device),
        )  # fmt: skip
        objective = AutoencoderObjective(net, kl_weight, reconstruction)
        trainer = Trainer(model, dataset, config, objective=objective)
        if resume is not None:
            resume_run(trainer, resume, steps)
        params = sum(p.numel() for p in net.parameters())
        latent = net.latent_shape(shape)
        console.print(
            f"training a {params:,}-parameter autoencoder on {dataset.name} {shape} -> "
            f"latents {latent}"
        )
        run_trainer(trainer, out)
    if trainer.rank == 0:
        _, record = load_checkpoint(out, "cpu")
        scale = record["network"]["latent_scale"]
        console.print(
            f"[bold green]done[/]: step {trainer.step}, reconstruction MSE "
            f"{record['reconstruction_mse']:.4g}, latent scale {scale:.4g} -> {out}"
        )
        console.print(f"log: {metrics_path(out)}; next: sdediff train --latent {out}")
