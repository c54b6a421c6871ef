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

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..networks import build_network
from ..parametrization import ScoreModel
from ..sdes import sde_config, sde_from_config
from .checkpoint import CheckpointError, load_checkpoint, prefixed, save_checkpoint
from .lora import add_lora, merge_lora, save_lora

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = [
    "ema_weights",
    "export_lora",
    "export_model",
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
) -> tuple[ScoreModel, dict[str, Any]]:
    """Rebuild the ``ScoreModel`` a checkpoint describes (EMA weights by default); a LoRA
    run's adapter is merged into its base weights unless ``merge=False``."""
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
    return model.to(device).eval(), config
