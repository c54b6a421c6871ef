"""Checkpoints: ``.safetensors`` with the configuration as JSON metadata.

Tensors go in under prefixes (``model/``, ``ema/``, ``optim/``, ``rng/``); the
configuration (network, SDE, parametrisation, data normalisation, training
state that is not a tensor) goes in the metadata, so a checkpoint alone rebuilds
a ``ScoreModel``.  Writes go to a temporary file in the same folder and are
renamed into place: a crash never leaves a half-written checkpoint.  Loading
never unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor

from ..atomic import atomic_path

__all__ = ["FORMAT", "CheckpointError", "load_checkpoint", "save_checkpoint"]

FORMAT = "sde-diffusion/1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or not ours."""


def save_checkpoint(path: str | Path, tensors: dict[str, Tensor], config: dict[str, Any]) -> Path:
    """Write ``tensors`` and ``config`` to ``path`` atomically."""
    path = Path(path)
    metadata = {"format": FORMAT, "config": json.dumps(config)}
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    data = save(contiguous, metadata=metadata)  # bytes: safetensors' own file writer
    try:  # would leave its temporary file behind if killed
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as err:  # a full disk, a folder made read-only, a quota
        kept = "the checkpoint already there is unchanged" if path.exists() else "none was written"
        failed = OSError(f"could not write {path}: {err.strerror or err}; {kept}")
        failed.errno = err.errno
        raise failed from err
    return path


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(tensors, config)``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    with path.open("rb") as f:
        head = f.read(9)  # safetensors: an 8-byte header length, then the JSON header's "{"
    pickled = head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"  # torch.save's zip, a pickle
    if pickled and head[8:9] != b"{":
        raise CheckpointError(
            f"{path} is a PyTorch pickle (torch.save), which sde-diffusion never loads: "
            "unpickling can run code. For a k-diffusion or other PyTorch model, build it in "
            "Python, load its weights with torch.load(..., weights_only=True) and sample "
            "through sd.adapters.from_kdiffusion(model)"
        )
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as err:  # safetensors raises several types for damaged files
        raise CheckpointError(
            f"{path} is not a readable .safetensors checkpoint (damaged or truncated?): {err}"
        ) from None
    found = metadata.get("format")
    if isinstance(found, str) and found.startswith("sde-diffusion/") and found != FORMAT:
        raise CheckpointError(
            f"{path} was written in format {found!r} by another version of sde-diffusion; "
            f"this version reads {FORMAT!r} (upgrade sde-diffusion to load it)"
        )
    if any(k.startswith(("conv_in.", "down_blocks.", "time_embedding.")) for k in tensors):
        raise CheckpointError(
            f"{path} holds a diffusers model, not an sde-diffusion checkpoint; load its "
            f"folder with diffusers and wrap it: sd.adapters.from_diffusers("
            f"UNet2DModel.from_pretrained({str(path.parent)!r}), scheduler)"
        )
    if found != FORMAT:
        raise CheckpointError(
            f"{path} is a .safetensors file but not an sde-diffusion "
            f"checkpoint (format {metadata.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: its configuration is missing or damaged ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path}: its configuration must be a JSON object, got {type(config).__name__}"
        )
    floats = [k for k, v in tensors.items() if v.is_floating_point()]
    finite = torch.stack([torch.isfinite(tensors[k]).all() for k in floats]) if floats else None
    if finite is not None and not bool(finite.all()):  # one host read
        bad = [k for k, ok in zip(floats, finite.tolist(), strict=True) if not ok]
        raise CheckpointError(
            f"{path} holds non-finite values (NaN or inf) in {len(bad)} tensor(s), e.g. "
            f"{bad[0]}; sde-diffusion never writes such a file: it is damaged or was edited"
        )
    return tensors, config


def prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under ``prefix/``, with the prefix removed."""
    start = f"{prefix}/"
    return {k[len(start) :]: v for k, v in tensors.items() if k.startswith(start)}
