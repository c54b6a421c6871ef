"""The training checkpoint's schema: what a run writes, and everything that reads it back.

A checkpoint is a ``.safetensors`` file (written atomically by :mod:`.checkpoint`) whose
tensors are ``model/*`` (the weights), ``ema/*`` (their EMA), ``ema_n_averaged``,
``phema/<i>/*`` (post-hoc EMA's power averages), ``optim/<param>/<name>`` (AdamW's
moments), ``rng/generator`` and ``rng/torch``, and whose JSON metadata holds the model
config (``network``, ``sde``, ``parametrization``, ``sigma_data``), the data's config,
the :class:`~sde_diffusion.training.TrainConfig` (``train``), the ``step``, AdamW's
``optimizer_groups`` and ``posthoc_ema``'s update count; a student's checkpoint also holds
``objective/*`` tensors (a consistency target network) and the ``objective`` and
``sampling`` entries (:mod:`.objectives`).  An exported model keeps only
``ema/*`` and the config.  This module alone writes and reads that layout.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..latent import LatentModel
from ..networks import build_network
from ..networks.autoencoder import Autoencoder
from ..parametrization import ScoreModel
from ..sdes import sde_config, sde_from_config
from .autoencoding import AutoencoderModel, measured_config
from .checkpoint import CheckpointError, load_checkpoint, prefixed, save_checkpoint
from .lora import add_lora, merge_lora, save_lora

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = [
    "ema_weights",
    "export_lora",
    "export_model",
    "load_autoencoder",
    "load_score_model",
    "load_training_state",
    "model_config",
    "run_settings",
    "save_training_state",
    "training_tensors",
]

_EMA_PREFIX = "module.net."  # where AveragedModel keeps the averaged network's weights


def model_config(trainer: Trainer) -> dict[str, Any]:
    """The metadata of a checkpoint: what rebuilds the model, the data and the run."""
    model = trainer.model
    if isinstance(model, AutoencoderModel):  # the EMA autoencoder's latent statistics
        measured = measured_config(trainer.ema.module.net, trainer._x)
        return measured | {
            "data": trainer.data.config(),
            "train": asdict(trainer.config),
            "step": trainer.step,
            "objective": trainer.objective.config(),
        }
    return (
        {
            "network": trainer.net.config,
            "sde": sde_config(model.sde),
            "parametrization": model.parametrization,
            "sigma_data": model.sigma_data,
            "data": trainer.data.config(),
            "train": asdict(trainer.config),
            "step": trainer.step,
        }
        | ({"lora": trainer.net.lora_config} if hasattr(trainer.net, "lora_config") else {})
        | (student_config(trainer.objective))
    )


def student_config(objective) -> dict[str, Any]:
    """A student's entries: ``objective`` (its method and teacher) and ``sampling`` (the
    solver and times it samples with, which ``sdediff sample`` takes by default)."""
    found = {"objective": objective.config(), "sampling": objective.sampling()}
    return {k: v for k, v in found.items() if v is not None}


def ema_weights(trainer: Trainer) -> dict[str, Tensor]:
    """The EMA network's weights, named as the network's own."""
    state = trainer.ema.state_dict()
    return {k[len(_EMA_PREFIX) :]: v for k, v in state.items() if k.startswith(_EMA_PREFIX)}


def training_tensors(trainer: Trainer) -> dict[str, Tensor]:
    """Everything that resumes the run bit for bit: weights, EMA, AdamW state, RNG states."""
    tensors = {f"model/{k}": v for k, v in trainer.net.state_dict().items()}
    tensors |= {f"ema/{k}": v for k, v in ema_weights(trainer).items()}
    tensors["ema_n_averaged"] = trainer.ema.n_averaged
    for index, state in trainer.optimizer.state_dict()["state"].items():
        tensors |= {f"optim/{index}/{k}": v for k, v in state.items()}
    if trainer.phema is not None:
        names = [name for name, _ in trainer.net.named_parameters()]
        tensors |= {f"phema/{k}": v for k, v in trainer.phema.tensors(names).items()}
    tensors |= {f"objective/{k}": v for k, v in trainer.objective.state_tensors().items()}
    tensors["rng/generator"] = trainer.generator.get_state()
    tensors["rng/torch"] = torch.get_rng_state()
    return tensors


def save_training_state(trainer: Trainer, path: str | Path, tensors: dict[str, Tensor]) -> Path:
    """Write ``tensors`` (from :func:`training_tensors`) with the run's metadata."""
    groups = trainer.optimizer.state_dict()["param_groups"]
    extra = {"optimizer_groups": groups}
    if trainer.scaler.is_enabled():  # fp16's loss scale and its growth count
        extra["grad_scaler"] = trainer.scaler.state_dict()
    if trainer.phema is not None:
        extra["posthoc_ema"] = trainer.phema.state()
    return save_checkpoint(path, tensors, model_config(trainer) | extra)


def export_model(trainer: Trainer, path: str | Path) -> Path:
    """Write the EMA weights and the model config only (a small file to ship)."""
    tensors = {f"ema/{k}": v for k, v in ema_weights(trainer).items()}
    return save_checkpoint(path, tensors, model_config(trainer))


def export_lora(trainer: Trainer, path: str | Path) -> Path:
    """Write a LoRA run's adapter: the EMA of the low-rank weights, the base's identity."""
    config = dict(trainer.net.lora_config)
    base, digest = config.pop("base"), config.pop("base_hash")
    tensors = {k: v for k, v in ema_weights(trainer).items() if ".lora_" in k}
    return save_lora(path, tensors, config, base, digest)


def load_training_state(trainer: Trainer, path: str | Path) -> None:
    """Restore into ``trainer`` everything :func:`save_training_state` wrote."""
    tensors, config = load_checkpoint(path, trainer.device)
    trainer.net.load_state_dict(prefixed(tensors, "model"))
    ema_state = {_EMA_PREFIX + k: v for k, v in prefixed(tensors, "ema").items()}
    ema_state["n_averaged"] = tensors["ema_n_averaged"]
    trainer.ema.load_state_dict(ema_state, strict=False)
    optim_state: dict[int, dict[str, Tensor]] = {}
    for key, value in prefixed(tensors, "optim").items():
        index, name = key.split("/", 1)
        optim_state.setdefault(int(index), {})[name] = value
    trainer.optimizer.load_state_dict(
        {"state": optim_state, "param_groups": config["optimizer_groups"]}
    )
    trainer.objective.load_state(prefixed(tensors, "objective"))
    trainer.generator.set_state(tensors["rng/generator"].cpu())
    torch.set_rng_state(tensors["rng/torch"].cpu())
    if trainer.phema is not None:
        if "posthoc_ema" not in config:
            raise CheckpointError(
                f"{path} was trained without post-hoc EMA; its power-function averages "
                "cannot start midway: resume it without --ema posthoc"
            )
        names = [name for name, _ in trainer.net.named_parameters()]
        count = int(config["posthoc_ema"]["count"])
        trainer.phema.load(prefixed(tensors, "phema"), names, count)
    if "grad_scaler" in config and trainer.scaler.is_enabled():
        trainer.scaler.load_state_dict(config["grad_scaler"])
    trainer.step = int(config["step"])


def run_settings(path: str | Path) -> dict[str, Any]:
    """The settings a training checkpoint was started with, named as ``build_model`` and
    ``TrainConfig`` name them (``data`` is the source it loaded, ``train`` the config).

    An exported model (no optimiser state) or a file of another layout raises
    :class:`~sde_diffusion.training.checkpoint.CheckpointError`.
    """
    _, config = load_checkpoint(path, "cpu")
    if "optimizer_groups" not in config:
        raise CheckpointError(
            f"{path} holds no optimiser state: an exported model, not a training checkpoint"
        )
    try:
        net, data = config["network"], config["data"]
        return {
            "data": data.get("source", data["name"]),
            "latent": data.get("latent", {}).get("autoencoder_path"),
            "encode": data.get("latent", {}).get("encoding"),
            "sde": config["sde"]["type"],
            "network": net["type"],
            "width": net.get("width", net.get("channels")),
            "parametrization": config["parametrization"],
            "conditional": net.get("num_classes") is not None,
            "resume_weights": data.get("base"),
            "lora_rank": config.get("lora", {}).get("rank", 0),
            "train": dict(config["train"]),
            "objective": config.get("objective"),
        }
    except (KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path} is not a training checkpoint: {err!r}") from None


def load_score_model(
    path: str | Path, *, ema: bool = True, device: str | torch.device = "cpu", merge: bool = True
) -> tuple[ScoreModel | LatentModel, dict[str, Any]]:
    """Rebuild the ``ScoreModel`` a checkpoint describes (EMA weights by default); a LoRA
    run's adapter is merged into its base weights unless ``merge=False``; a latent model
    comes back as a :class:`~sde_diffusion.latent.LatentModel` with its autoencoder."""
    tensors, config = load_checkpoint(path, device)
    try:
        net = build_network(config["network"])
        if "lora" in config:  # a LoRA run's checkpoint: the base with its adapter
            lora = config["lora"]
            add_lora(net, int(lora["rank"]), float(lora["alpha"]), tuple(lora["targets"]))
            net.lora_config = lora
        model = ScoreModel(
            net, sde_from_config(config["sde"]), config["parametrization"], config["sigma_data"]
        )
        net.load_state_dict(prefixed(tensors, "ema" if ema else "model"))
        if "lora" in config and merge:
            merge_lora(net)
    except (KeyError, TypeError, RuntimeError, ValueError) as err:
        hint = ""
        if "emb.weight" in str(err) and "size mismatch" in str(err):
            hint = (
                "; it comes from an earlier U-Net whose residual blocks added the noise and "
                "label embedding before a normalisation that removed it: retrain it"
            )
        raise CheckpointError(
            f"{path}: cannot rebuild the model it describes ({str(err)[:300]}){hint}"
        ) from None
    latent = config.get("data", {}).get("latent")
    if latent is not None:  # a latent model carries its autoencoder
        autoencoder = load_autoencoder(autoencoder_path(path, latent), device=device)
        shapes = latent["image_shape"], config["data"]["event_shape"]
        model = LatentModel(model, autoencoder, *shapes)
    return model.to(device).eval(), config


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (how a latent model names its autoencoder's version)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def autoencoder_source(path: str | Path) -> dict[str, str]:
    """How a latent model's checkpoint names its autoencoder: the file's name (looked for
    beside the checkpoint first, so the two move together), its absolute path and digest."""
    path = Path(path).resolve()
    return {"autoencoder": path.name, "autoencoder_path": str(path),
            "autoencoder_sha256": file_digest(path)}  # fmt: skip


def autoencoder_path(checkpoint: str | Path, latent: dict[str, Any]) -> Path:
    """The autoencoder a latent checkpoint names: beside it, else at its recorded path; a
    missing file or one whose digest differs is a :class:`CheckpointError`."""
    beside = Path(checkpoint).resolve().parent / latent["autoencoder"]
    found = [p for p in (beside, Path(latent["autoencoder_path"])) if p.is_file()]
    if not found:
        raise CheckpointError(
            f"{checkpoint} is a latent model whose autoencoder {latent['autoencoder']} is "
            f"neither beside it nor at {latent['autoencoder_path']}; put it beside the checkpoint"
        )
    for path in found:
        if file_digest(path) == latent["autoencoder_sha256"]:
            return path
    raise CheckpointError(
        f"{found[0]} is not the autoencoder {checkpoint} was trained on (its SHA-256 differs)"
    )


def load_autoencoder(path: str | Path, *, device: str | torch.device = "cpu") -> Autoencoder:
    """The EMA autoencoder of an autoencoder run's checkpoint, with its latent statistics."""
    tensors, config = load_checkpoint(path, device)
    if config.get("network", {}).get("type") != "autoencoder":
        raise CheckpointError(f"{path} holds no autoencoder (it is not a train-autoencoder run)")
    try:
        net = build_network(config["network"])
        net.load_state_dict(prefixed(tensors, "ema"))
    except (KeyError, TypeError, RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"{path}: cannot rebuild its autoencoder ({str(err)[:300]})"
        ) from None
    return net.to(device).eval()
