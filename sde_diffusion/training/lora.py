"""Low-rank adapters (LoRA, Hu et al. 2021) for fine-tuning a trained network.

Each adapted layer keeps its weight ``W`` frozen and adds a trainable low-rank update,

    y = W x + scale * (alpha / r) * B (A x),      A: r × in,  B: out × r,  B = 0 at start,

so the adapted network starts as the base network exactly.  A ``Linear`` gets linear
``A``, ``B``; a ``Conv2d`` gets ``A`` a convolution with the base kernel's size, stride
and padding into ``r`` channels and ``B`` a 1×1 convolution.  By default the linear and
1×1 convolution layers are adapted (the embeddings, attention's projections, skips):
on the small U-Nets here the 3×3 kernels would make the adapter a third of the model.

An adapter file holds the ``A``, ``B`` weights only, with its rank, alpha and targets,
the base model's name and the hash of its weights (:func:`weights_hash`): applied to
another model it is refused.  :func:`merge_lora` folds ``scale * (alpha/r) * B A`` into
the base weights (no extra cost per call).

A small module rather than ``peft``: peft brings transformers and accelerate as
dependencies and keys its adapters to Hugging Face model classes, while the adapter here
is the same maths on any ``nn.Module`` in a page of code, saved in the project's
safetensors checkpoint format.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ArgumentError
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__all__ = [
    "LORA_TARGETS",
    "LoRALayer",
    "add_lora",
    "apply_lora",
    "load_lora",
    "lora_tensors",
    "merge_lora",
    "save_lora",
    "weights_hash",
]

LORA_TARGETS = ("linear", "conv1x1", "conv")


class LoRALayer(nn.Module):
    """``base`` (frozen) plus ``scale * (alpha / rank) * B(A(x))``."""

    def __init__(self, base: nn.Linear | nn.Conv2d, rank: int, alpha: float):
        super().__init__()
        self.base, self.rank, self.alpha, self.scale = base, rank, alpha, 1.0
        base.requires_grad_(False)
        if isinstance(base, nn.Linear):
            self.lora_A = nn.Linear(base.in_features, rank, bias=False)
            self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        else:
            self.lora_A = nn.Conv2d(
                base.in_channels,
                rank,
                base.kernel_size,
                base.stride,
                base.padding,
                base.dilation,
                bias=False,
            )
            self.lora_B = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        self.lora_A.to(base.weight)
        self.lora_B.to(base.weight)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=5**0.5)
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x)) * (self.scale * self.alpha / self.rank)

    def delta(self) -> Tensor:
        """``scale * (alpha / r) * B A`` in the base weight's shape."""
        a, b = self.lora_A.weight, self.lora_B.weight
        if isinstance(self.base, nn.Linear):
            product = b @ a
        else:  # (out, r, 1, 1) x (r, in, kh, kw) -> (out, in, kh, kw)
            product = torch.einsum("or,rikl->oikl", b.flatten(1), a)
        return product * (self.scale * self.alpha / self.rank)


def _targeted(module: nn.Module, targets: tuple[str, ...]) -> bool:
    if isinstance(module, nn.Linear):
        return "linear" in targets
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        one = module.kernel_size == (1, 1)
        return "conv" in targets or (one and "conv1x1" in targets)
    return False


def add_lora(
    net: nn.Module,
    rank: int = 4,
    alpha: float | None = None,
    targets: tuple[str, ...] = ("linear", "conv1x1"),
) -> list[str]:
    """Replace ``net``'s targeted layers by :class:`LoRALayer` in place and freeze
    everything else; returns the adapted layers' names.  ``alpha`` defaults to ``rank``."""
    if rank < 1:
        raise ArgumentError(f"the LoRA rank must be >= 1, got {rank}")
    unknown = set(targets) - set(LORA_TARGETS)
    if unknown or not targets:
        raise ArgumentError(
            f"unknown LoRA target(s) {sorted(unknown)}; choose from {', '.join(LORA_TARGETS)}"
        )
    net.requires_grad_(False)
    names = [n for n, m in net.named_modules() if n and _targeted(m, tuple(targets))]
    for name in names:
        parent, _, leaf = name.rpartition(".")
        owner = net.get_submodule(parent) if parent else net
        setattr(owner, leaf, LoRALayer(getattr(owner, leaf), rank, alpha or float(rank)))
    if not names:
        raise ArgumentError(f"the network has no layer of the kinds {', '.join(targets)}")
    net.lora_config = {"rank": rank, "alpha": alpha or float(rank), "targets": list(targets)}
    return names


def lora_tensors(net: nn.Module) -> dict[str, Tensor]:
    """The adapter's weights (``....lora_A.weight``, ``....lora_B.weight``)."""
    return {k: v for k, v in net.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


def weights_hash(state: dict[str, Tensor]) -> str:
    """SHA-256 of a network's weights (names and bytes, LoRA weights and the base
    layers' new names left out), the base model's identity for an adapter."""
    digest = hashlib.sha256()
    base = {k.replace(".base.", "."): v for k, v in state.items() if ".lora_" not in k}
    for name in sorted(base):
        digest.update(name.encode())
        digest.update(base[name].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def save_lora(
    path: str | Path, tensors: dict[str, Tensor], config: dict[str, Any], base: str, digest: str
) -> Path:
    """Write an adapter: its weights, ``config`` (rank, alpha, targets) and the base's
    name and weights hash."""
    meta = {"lora": {**config, "base": base, "base_hash": digest}}
    return save_checkpoint(path, {f"lora/{k}": v for k, v in tensors.items()}, meta)


def load_lora(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An adapter file's weights and its ``lora`` metadata."""
    tensors, config = load_checkpoint(path, "cpu")
    if "lora" not in config:
        raise CheckpointError(
            f"{path} is not a LoRA adapter (sdediff train --lora-rank writes one)"
        )
    return {k[5:]: v for k, v in tensors.items() if k.startswith("lora/")}, config["lora"]


def apply_lora(
    net: nn.Module, path: str | Path, scale: float = 1.0, merge: bool = True
) -> dict[str, Any]:
    """Apply the adapter at ``path`` to ``net`` at strength ``scale``; ``merge`` folds it
    into the weights.  A base whose weights hash differs from the adapter's is refused."""
    tensors, meta = load_lora(path)
    digest = weights_hash(net.state_dict())
    if digest != meta["base_hash"]:
        raise ArgumentError(
            f"{path} adapts {meta['base']!r} (weights {meta['base_hash']}), not this model "
            f"(weights {digest}); apply it to the model it was trained from"
        )
    add_lora(net, int(meta["rank"]), float(meta["alpha"]), tuple(meta["targets"]))
    try:
        net.load_state_dict({**net.state_dict(), **tensors})
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit the model: {str(err)[:200]}") from None
    for layer in net.modules():
        if isinstance(layer, LoRALayer):
            layer.scale = scale
    if merge:
        merge_lora(net)
    return meta


@torch.no_grad()
def merge_lora(net: nn.Module) -> None:
    """Fold every :class:`LoRALayer` into its base weight and put the base layer back."""
    for name, layer in list(net.named_modules()):
        if isinstance(layer, LoRALayer):
            layer.base.weight += layer.delta().to(layer.base.weight)
            parent, _, leaf = name.rpartition(".")
            owner = net.get_submodule(parent) if parent else net
            setattr(owner, leaf, layer.base)
    if hasattr(net, "lora_config"):
        del net.lora_config
