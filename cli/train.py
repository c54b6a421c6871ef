"""``sdediff train``: train a score model by denoising score matching."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import click
import torch

from sde_diffusion.atomic import read_small_text
from sde_diffusion.distributed import rank_and_world
from sde_diffusion.evaluation.quality import quality_metric
from sde_diffusion.parametrization import PARAMETRIZATIONS
from sde_diffusion.plotting import save_samples
from sde_diffusion.pretrained import available, pretrained_path
from sde_diffusion.sdes import sde_names
from sde_diffusion.training import NonFiniteLossError, TrainConfig, Trainer
from sde_diffusion.training.autoencoding import ENCODINGS, encode_dataset
from sde_diffusion.training.building import NETWORKS, build_model
from sde_diffusion.training.checkpoint import CheckpointError
from sde_diffusion.training.consistency import LEVEL_WEIGHTS, ConsistencyObjective
from sde_diffusion.training.data import load_data, split_held_out
from sde_diffusion.training.log import curves_path, metrics_path
from sde_diffusion.training.lora import LORA_TARGETS, add_lora, weights_hash
from sde_diffusion.training.losses import WEIGHTINGS
from sde_diffusion.training.state import (
    autoencoder_source,
    load_autoencoder,
    load_score_model,
    run_settings,
)
from sde_diffusion.training.trainer import LR_SCHEDULES

from .common import (
    INTERRUPTED,
    TERMINATED,
    SafePath,
    comma_list,
    console,
    debug_enabled,
    err_console,
    failed_ranks,
    finite,
    friendly_errors,
    library_default,
    not_nan,
    on_sigterm,
    out_option,
    parse_device,
    peer_failure,
    peer_story,
    rank_prefix,
    resume_option,
    speed_options,
    start_ranks,
    writable_output,
)
from .sample import device_option, seed_option

TRAIN_METHODS = ("dsm", "consistency-training")
HELD_OUT = 0.05  # the share of user data --eval-every sets aside
TRAIN = TrainConfig()  # the library's defaults, which the flags show
# the recipe's settings a resumed run keeps (named as TrainConfig and the flags name them)
RECIPE = (
    "min_snr_gamma", "immiscible", "lr_schedule", "lr_decay_steps", "snapshot_every",
    "eval_every",
)  # fmt: skip


def model_default(name: str):
    return library_default(build_model, name)


if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def read_config(ctx: click.Context, param: click.Parameter, path: Path | None) -> Path | None:
    """Load ``--config FILE.toml`` into the defaults, so flags given explicitly win."""
    if path is None:
        return None
    try:
        values = tomllib.loads(read_small_text(path, "a config"))
    except RecursionError:
        raise click.BadParameter(f"cannot read {path}: it nests too deeply", ctx, param) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise click.BadParameter(f"cannot read {path}: {err}", ctx, param) from None
    values = values.get("train", values)  # a [train] table or top-level keys
    if not isinstance(values, dict):
        raise click.BadParameter(f"{path}: 'train' must be a table ([train])", ctx, param)
    names = {p.name for p in ctx.command.params if p.name not in ("config", "help")}
    values = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - names)
    if unknown:
        raise click.BadParameter(
            f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}",
            ctx,
            param,
        )
    params = {p.name: p for p in ctx.command.params}
    for key, value in values.items():
        kind = toml_kind(params[key])
        if not kind[1](value):
            raise click.BadParameter(f"{path}: {key} must be {kind[0]}, got {value!r}", ctx, param)
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return path


def check_resumed_model(path: Path, given: dict[str, object]) -> None:
    """``--resume`` continues a run with the model it was started with: a flag (or config
    key) that would change the data, SDE, network or parametrisation is a usage error (the
    weights would no longer fit them: an x0 loss on an EDM network, another data set)."""
    settings = run_settings(path)
    changed = [k for k, v in given.items() if v != settings[k]]
    if changed:
        name = changed[0]
        raise click.BadParameter(
            f"{path} was trained with {name} {settings[name]!r}, not {given[name]!r}; "
            "--resume continues a run with its own model settings (start a new run to change "
            "them)",
            param_hint="--" + name.replace("_", "-"),
        )


class EmaSetting(click.ParamType):
    """``--ema``: an EMA decay in [0, 1), or ``posthoc``."""

    name = "DECAY|posthoc"

    def convert(self, value, param, ctx):
        if value == "posthoc":
            return value
        try:
            decay = float(value)
        except (TypeError, ValueError):
            decay = math.nan
        if not 0 <= decay < 1:
            self.fail(f"expected a decay in [0, 1) or 'posthoc', got {value!r}", param, ctx)
        return decay


def toml_kind(param: click.Parameter) -> tuple[str, Callable[[object], bool]]:
    """What a config file's value for ``param`` must be: a name and a check (no coercion:
    ``steps = 10.5`` or ``true`` is an error, not 10 or 1)."""
    if isinstance(param.type, EmaSetting):
        return (
            "a number or 'posthoc'",
            lambda v: v == "posthoc" or (isinstance(v, int | float) and not isinstance(v, bool)),
        )
    if param.is_flag or isinstance(param.type, click.types.BoolParamType):
        return "true or false", lambda v: isinstance(v, bool)
    if isinstance(param.type, click.types.IntParamType):
        return "an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)
    if isinstance(param.type, click.types.FloatParamType):
        return "a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool)
    return "a string", lambda v: isinstance(v, str)


def resume_defaults(ctx: click.Context, param: click.Parameter, path: Path | None):
    """With ``--resume``, the run's own settings become the defaults.

    Precedence: flags, then a ``--config`` file, then the checkpoint, then built-ins.
    """
    if path is None:
        return None
    try:
        settings = run_settings(path)
    except CheckpointError as err:
        raise click.BadParameter(str(err), ctx, param) from None
    train = settings.pop("train")
    objective = settings.pop("objective")
    if objective is not None and objective.get("method") != "consistency-training":
        raise click.BadParameter(
            f"{path} is a {objective.get('method')} student: continue it with sdediff distill "
            "--resume",
            ctx,
            param,
        )
    if settings["encode"] is None:  # not a latent run: the flag's own default
        settings.pop("encode")
    if objective is not None:
        settings |= {
            "method": objective["method"],
            "levels": f"{objective['s0']},{objective['s1']}",
        }
    values = {
        **settings,
        "loss_weighting": train["loss_weighting"],
        "cond_drop": train.get("cond_drop_prob", TRAIN.cond_drop_prob),
        "ema": "posthoc" if train.get("posthoc_ema") else train["ema_decay"],
        **{k: train[k] for k in RECIPE if k in train},
        **{k: train[k] for k in ("steps", "batch_size", "lr", "checkpoint_every", "seed")},
        "sample_every": train["sample_every"],
        "keep_every": train.get("keep_every", 0),
        "precision": train.get("precision", "fp32"),  # fp16 resumes its loss scale
    }
    ctx.default_map = {**values, **(ctx.default_map or {})}  # a --config file wins
    return path


@click.command()
@click.option(
    "--config",
    type=SafePath(exists=True, dir_okay=False, path_type=Path),
    callback=read_config,
    is_eager=True,
    expose_value=False,
    help="A TOML file of these options (a [train] table or top-level keys); flags override it.",
)
@click.option(
    "--data", default="moons", show_default=True, help="A toy name, digits, .npy/.npz or a folder."
)
@click.option(
    "--latent",
    type=SafePath(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Train in the latent space of this autoencoder (sdediff train-autoencoder): the "
    "data are encoded once; the checkpoint names the autoencoder, so sampling decodes.",
)
@click.option(
    "--encode",
    type=click.Choice(ENCODINGS),
    default="mean",
    show_default=True,
    help="With --latent: train on the posterior means, or on a fresh posterior sample of each "
    "image every step (LDM's encoding; the encoder still runs once).",
)
@click.option(
    "--sde", type=click.Choice(sde_names()), default=model_default("sde"), show_default=True
)
@click.option(
    "--network", type=click.Choice(NETWORKS), default=model_default("network"), show_default=True
)
@click.option(
    "--width", type=click.IntRange(1, 4096), default=None, help="MLP width / U-Net channels."
)
@click.option(
    "--parametrization",
    type=click.Choice(PARAMETRIZATIONS),
    default=model_default("parametrization"),
    show_default=True,
)
@click.option(
    "--loss-weighting",
    type=click.Choice(WEIGHTINGS),
    default=TRAIN.loss_weighting,
    show_default=True,
)
@click.option(
    "--method",
    type=click.Choice(TRAIN_METHODS),
    default="dsm",
    show_default=True,
    help="dsm: denoising score matching; consistency-training: a consistency model without a "
    "teacher (improved consistency training; its parametrisation becomes 'consistency').",
)
@click.option(
    "--levels",
    default="10,1280",
    show_default=True,
    help="consistency-training: the discretisation's intervals S0,S1, doubling from S0 to S1 "
    "over the run.",
)
@click.option(
    "--level-weights",
    type=click.Choice(LEVEL_WEIGHTS),
    default="lognormal",
    show_default=True,
    help="consistency-training: how each sample's noise level is drawn (iCT's log-normal or "
    "uniform over the levels).",
)
@click.option(
    "--conditional",
    is_flag=True,
    help="Class-conditional on the data's labels (digits, 8gaussians), for guidance.",
)
@click.option(
    "--cond-drop",
    type=click.FloatRange(0, 1, max_open=True),
    callback=not_nan,
    default=TRAIN.cond_drop_prob,
    show_default=True,
    help="With --conditional: share of labels replaced by the null label while training.",
)
@click.option("--steps", type=click.IntRange(1, 10**8), default=TRAIN.steps, show_default=True)
@click.option(
    "--batch-size", type=click.IntRange(1, 10**6), default=TRAIN.batch_size, show_default=True
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    callback=finite,
    default=TRAIN.lr,
    show_default=True,
)
@click.option(
    "--min-snr-gamma",
    type=click.FloatRange(min=0, min_open=True),
    callback=finite,
    default=TRAIN.min_snr_gamma,
    show_default=True,
    help="With --loss-weighting min-snr: the clamp of the signal-to-noise ratio.",
)
@click.option(
    "--immiscible",
    is_flag=True,
    help="Pair each batch's noise with its data by linear assignment (immiscible diffusion).",
)
@click.option(
    "--lr-schedule",
    type=click.Choice(LR_SCHEDULES),
    default=TRAIN.lr_schedule,
    show_default=True,
    help="edm2: after warm-up, lr / sqrt(max(step / --lr-decay-steps, 1)).",
)
@click.option(
    "--lr-decay-steps",
    type=click.IntRange(min=1),
    default=TRAIN.lr_decay_steps,
    show_default=True,
    help="With --lr-schedule edm2: the step where the decay starts.",
)
@click.option(
    "--ema",
    type=EmaSetting(),
    default=TRAIN.ema_decay,
    show_default=True,
    help="The EMA decay; 'posthoc' also keeps power-function EMAs and writes snapshots "
    "(OUT.phema/) that sdediff ema turns into an EMA of any length.",
)
@click.option(
    "--snapshot-every",
    type=click.IntRange(min=1),
    default=TRAIN.snapshot_every,
    show_default=True,
    help="With --ema posthoc: write a snapshot every N steps.",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    default=TRAIN.checkpoint_every,
    show_default=True,
)
@click.option(
    "--keep-every",
    type=click.IntRange(min=0),
    default=TRAIN.keep_every,
    help="Also keep the EMA weights every N steps as OUT.stepN.safetensors (early models: "
    "guides for sdediff sample --guide).",
)
@click.option(
    "--sample-every",
    type=click.IntRange(min=0),
    default=TRAIN.sample_every,
    help="Save a sample picture every N steps.",
)
@click.option(
    "--eval-every",
    type=click.IntRange(min=0),
    default=TRAIN.eval_every,
    help="Log the EMA model's quality every N steps (sliced W2, digits-FID, or the loss on "
    "5%% of user data held out).",
)
@click.option(
    "--tensorboard",
    type=SafePath(file_okay=False, path_type=Path),
    default=None,
    help="Also write the metrics as TensorBoard scalars to this folder.",
)
@out_option("runs/model.safetensors")
@resume_option(
    "Continue from this checkpoint (weights, EMA, optimiser, RNG); its settings are the "
    "defaults, so --resume FILE alone runs on to the step it was started for.",
    resume_defaults,
)
@click.option(
    "--resume-weights",
    default=None,
    help="Fine-tune this trained model (a shipped name or a checkpoint) on --data instead "
    "of training a new one.",
)
@click.option(
    "--lora-rank",
    type=click.IntRange(min=0),
    default=0,
    help="With --resume-weights: train only rank-R adapters (LoRA) and write them to "
    "OUT.lora.safetensors (for sdediff sample --lora).",
)
@click.option(
    "--lora-targets",
    default="linear,conv1x1",
    show_default=True,
    help=f"The layers LoRA adapts, from {', '.join(LORA_TARGETS)} (conv: every kernel size).",
)
@seed_option
@device_option
@speed_options
def train(
    data,
    latent,
    encode,
    sde,
    network,
    width,
    parametrization,
    loss_weighting,
    method,
    levels,
    level_weights,
    conditional,
    cond_drop,
    steps,
    batch_size,
    lr,
    min_snr_gamma,
    immiscible,
    lr_schedule,
    lr_decay_steps,
    ema,
    snapshot_every,
    checkpoint_every,
    keep_every,
    sample_every,
    eval_every,
    tensorboard,
    out,
    resume,
    resume_weights,
    lora_rank,
    lora_targets,
    seed,
    device,
    compile_,
    precision,
):
    """Train a score model; checkpoints are atomic and resumable.

    \b
    Examples:
      sdediff train --data moons --steps 2000 --out runs/moons.safetensors
      sdediff train --config train.toml --steps 500      # flags override the file
      sdediff train --resume runs/moons.safetensors --steps 4000
      sdediff train --data digits --conditional --cond-drop 0.1 --out runs/digits.safetensors
      sdediff train --data moons --ema posthoc --eval-every 500 --out runs/moons.safetensors
      sdediff train --resume-weights digits --lora-rank 4 --data threes.npz --steps 800
      sdediff train --latent ae.safetensors --data digits32 --out runs/latent.safetensors

    Every run logs OUT.metrics.jsonl and draws OUT.curves.png beside the checkpoint.
    """
    source = click.get_current_context().get_parameter_source("out")
    if resume is not None and source == click.core.ParameterSource.DEFAULT:
        out = resume  # continue in place unless --out says otherwise
    writable_output(out, suffixes=(".safetensors",))
    if encode != "mean" and latent is None:
        raise click.BadParameter("--encode goes with --latent", param_hint="--encode")
    if lora_rank and not resume_weights:
        raise click.BadParameter(
            "LoRA adapts a trained model: name it with --resume-weights MODEL",
            param_hint="--lora-rank",
        )
    if lora_rank and ema == "posthoc":
        raise click.BadParameter(
            "post-hoc EMA rebuilds whole networks, not adapters: give a LoRA run a decay "
            "(--ema 0.99)",
            param_hint="--ema",
        )
    ctx = click.get_current_context()
    if method == "consistency-training" and ctx.get_parameter_source("parametrization").name in (
        "DEFAULT",
    ):  # fmt: skip
        parametrization = "consistency"  # the boundary condition f(x, t_min) = x, exactly
    if method == "consistency-training" and (resume_weights or immiscible):
        raise click.BadParameter(
            "consistency training starts a new model from its own loss; drop --resume-weights "
            "and --immiscible",
            param_hint="--method",
        )
    if resume is not None:
        given = {
            "data": data, "latent": None if latent is None else str(latent.resolve()),
            "encode": encode if latent is not None else None,
            "sde": sde, "network": network, "width": width,
            "parametrization": parametrization, "conditional": conditional,
        }  # fmt: skip
        check_resumed_model(resume, given)
    device = training_device(device, batch_size)
    with friendly_errors("training"):
        dataset = load_data(data, 20000, seed)
        dataset.info["source"] = data  # what --resume loads again
        autoencoder = None
        if latent is not None:
            autoencoder = latent_autoencoder(latent, dataset, device)
            dataset = encode_dataset(dataset, autoencoder, autoencoder_source(latent), encode)
        metric = quality_metric(dataset, seed=seed) if eval_every else None
        if eval_every and metric is None:  # user data: keep 5% unseen to score against
            dataset, held_out = split_held_out(dataset, HELD_OUT, seed)
            metric = quality_metric(dataset, held_out, seed=seed)
        torch.manual_seed(seed)
        targets = tuple(comma_list(lora_targets, str, "LoRA target"))
        if resume is not None and resume_weights:  # a fine-tune: its own network, adapter
            model, _ = load_score_model(resume, ema=False, merge=False, device=device)
        elif resume_weights:
            model = fine_tuned(resume_weights, dataset, lora_rank, targets)
        else:
            model = build_model(
                dataset,
                sde=sde,
                network=network,
                width=width,
                parametrization=parametrization,
                conditional=conditional,
            )
        config = TrainConfig(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            ema_decay=TRAIN.ema_decay if ema == "posthoc" else ema,
            posthoc_ema=ema == "posthoc",
            snapshot_every=snapshot_every,
            loss_weighting=loss_weighting,
            min_snr_gamma=min_snr_gamma,
            immiscible=immiscible,
            lr_schedule=lr_schedule,
            lr_decay_steps=lr_decay_steps,
            eval_every=eval_every,
            seed=seed,
            checkpoint_every=checkpoint_every,
            keep_every=keep_every,
            sample_every=sample_every,
            device=str(device),
            compile=compile_,
            precision=precision,
            cond_drop_prob=cond_drop,
        )
        objective = None
        if method == "consistency-training":
            s0, s1 = parse_levels(levels)
            objective = ConsistencyObjective(
                model, steps, s0=s0, s1=s1, level_weights=level_weights
            )
        trainer = Trainer(model, dataset, config, metric, objective)
        if resume is not None:
            resume_run(trainer, resume, steps)
        params = sum(p.numel() for p in model.parameters())
        ranks = "" if trainer.world == 1 else f" on {trainer.world} processes"
        console.print(
            f"training a {params:,}-parameter {trainer.net.config['type']} on {dataset.name} "
            f"{tuple(dataset.x.shape)} under {model.sde!r}{ranks}"
        )

        def on_samples(step: int, x: torch.Tensor) -> None:
            picture = out.with_name(f"{out.stem}_samples_{step:06d}.png")
            if autoencoder is not None:
                x = autoencoder.decode(x.to(device)).clamp(-1, 1)
            data_units = x if x.ndim == 4 else dataset.to_data_units(x)
            save_samples(data_units.float().cpu(), picture, f"step {step}")

        history = run_trainer(trainer, out, on_samples=on_samples, tensorboard=tensorboard)
    if lora_rank and trainer.rank == 0:
        adapter = trainer.export_lora(lora_path(out))
        size = adapter.stat().st_size
        console.print(f"LoRA adapter ({size / 1024:.0f} KiB) -> {adapter}")
    last = history[-1]["loss"] if history else float("nan")
    console.print(f"[bold green]done[/]: step {trainer.step}, last loss {last:.4f} -> {out}")
    if trainer.rank == 0:
        console.print(f"log: {metrics_path(out)}, curves: {curves_path(out)}")


def training_device(device: str, batch_size: int) -> torch.device:
    """This rank's device (joining torchrun's group), after checking that the global batch
    splits evenly over the ranks (a usage error otherwise)."""
    device = start_ranks(parse_device(device))
    world = rank_and_world()[1]
    if batch_size % world:
        raise click.BadParameter(
            f"the global batch {batch_size} does not split evenly over {world} processes; "
            f"use a multiple of {world}",
            param_hint="--batch-size",
        )
    return device


def resume_run(trainer: Trainer, resume: Path, steps: int) -> None:
    """``trainer`` restored from ``resume``; a run already at ``steps`` is a usage error."""
    trainer.resume(resume)
    if trainer.step >= steps:
        raise click.BadParameter(
            f"{resume} is at step {trainer.step} already; ask for more steps to continue it",
            param_hint="--steps",
        )
    console.print(f"resumed from {resume} at step {trainer.step}")


def run_trainer(trainer: Trainer, out: Path, **options) -> list[dict[str, float]]:
    """``trainer.train(checkpoint=out, **options)`` with the command line's outcomes: Ctrl-C,
    SIGTERM, a non-finite loss or a failed peer rank end the run with its checkpoint saved
    and one line that says how to continue (``--resume OUT``)."""
    saved = f"checkpoint saved to {out}; continue with --resume {out}"
    if trainer.rank != 0:
        saved = "rank 0 writes the checkpoints"
    # SIGTERM stays handled until the outcome is reported: torchrun sends it to the
    # ranks that survive a failed one, and its default action would end a rank
    # between leaving training and saying why (so failures print here, not via click).
    with on_sigterm(lambda: setattr(trainer, "stop_requested", True)):
        try:
            history = trainer.train(checkpoint=out, **options)
        except KeyboardInterrupt:
            err_console.print(
                f"{rank_prefix()}[yellow]interrupted[/] at step {trainer.step}: {saved}",
                soft_wrap=True,  # one line, whatever the terminal's width
            )
            raise SystemExit(INTERRUPTED) from None
        except NonFiniteLossError as err:
            if debug_enabled():
                raise
            kept = f"{out} holds step {trainer.step}" if trainer.rank == 0 else "rank 0 saved"
            _fail(
                f"{rank_prefix()}training stopped: {err}; {kept} (finite): lower --lr and "
                f"continue with --resume {out}, or rescale the data"
            )
        except RuntimeError as err:
            if not peer_failure(err) or debug_enabled():
                raise
            _fail(
                f"{rank_prefix()}training stopped at step {trainer.step}: "
                f"{peer_story(err)}; {saved}"
            )
        if trainer.stop_requested:
            why = failed_ranks()
            err_console.print(
                f"{rank_prefix()}[yellow]stopped[/] by SIGTERM at step {trainer.step}"
                f"{f' after {why}' if why else ''}: {saved}",
                soft_wrap=True,
            )
            raise SystemExit(TERMINATED)
    return history


def latent_autoencoder(path: Path, dataset, device):
    """The autoencoder ``--latent`` names, checked to take ``dataset``'s images."""
    try:
        autoencoder = load_autoencoder(path, device=device)
    except CheckpointError as err:
        raise click.BadParameter(str(err), param_hint="--latent") from None
    shape, config = tuple(dataset.x.shape[1:]), autoencoder.config
    f = config["factor"]
    if len(shape) != 3 or shape[0] != config["in_channels"] or shape[1] % f or shape[2] % f:
        raise click.BadParameter(
            f"{path} encodes images ({config['in_channels']}, H, W) with H and W divisible by "
            f"{f}; {dataset.name} holds {shape}",
            param_hint="--latent",
        )
    return autoencoder


def parse_levels(value: str) -> tuple[int, int]:
    """``--levels S0,S1`` with ``1 <= S0 <= S1``."""
    try:
        s0, s1 = (int(v) for v in value.split(","))
    except ValueError:
        s0 = s1 = 0
    if not 1 <= s0 <= s1 <= 100_000:
        raise click.BadParameter(
            f"expected S0,S1: two integers with 1 <= S0 <= S1 <= 100000, got {value!r}",
            param_hint="--levels",
        )
    return s0, s1


def lora_path(out: Path) -> Path:
    """Where a LoRA run writes its adapter: ``OUT.lora.safetensors``."""
    return out.with_name(f"{out.stem}.lora.safetensors")


def fine_tuned(name: str, dataset, lora_rank: int, targets: tuple[str, ...]):
    """The model ``--resume-weights`` names, ready to fine-tune on ``dataset`` (with LoRA
    adapters when ``lora_rank``); a model of other data shapes is a usage error."""
    path = pretrained_path(name) if name in available() else Path(name)
    if not path.is_file():
        raise click.BadParameter(
            f"no model {name!r}: not a checkpoint nor one of {', '.join(available())}",
            param_hint="--resume-weights",
        )
    model, config = load_score_model(path)
    shape = list(config.get("data", {}).get("event_shape", []))
    if shape != list(dataset.x.shape[1:]):
        raise click.BadParameter(
            f"{name} models data of shape {tuple(shape)}, but {dataset.name} holds "
            f"{tuple(dataset.x.shape[1:])}",
            param_hint="--data",
        )
    dataset.info["base"] = name
    if lora_rank:
        digest = weights_hash(model.net.state_dict())
        add_lora(model.net, lora_rank, targets=targets)
        model.net.lora_config |= {"base": name, "base_hash": digest}
    return model


def _fail(message: str) -> NoReturn:
    """Report as click reports a ``ClickException`` (``Error: ...``, exit status 1), at once."""
    click.ClickException(message).show()
    raise SystemExit(1)
