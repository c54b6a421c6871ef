"""Networks: noise embeddings, a residual MLP, a small U-Net and a KL autoencoder."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ArgumentError
from .autoencoder import Autoencoder
from .embeddings import GaussianFourierFeatures, NoiseEmbedding, SinusoidalEmbedding
from .mlp import ResidualMLP
from .unet import UNet

__all__ = [
    "Autoencoder",
    "GaussianFourierFeatures",
    "NoiseEmbedding",
    "ResidualMLP",
    "SinusoidalEmbedding",
    "UNet",
    "build_network",
]

_NETWORKS = {"mlp": ResidualMLP, "unet": UNet, "autoencoder": Autoencoder}


def build_network(config: dict[str, Any]) -> nn.Module:
    """Rebuild a network from its ``config`` (as stored in checkpoints)."""
    options = dict(config)
    kind = options.pop("type", None)
    if kind not in _NETWORKS:
        raise ArgumentError(f"unknown network type {kind!r}; choose one of {', '.join(_NETWORKS)}")
    if kind == "unet" and "channel_mult" in options:
        options["channel_mult"] = tuple(options["channel_mult"])
    return _NETWORKS[kind](**options)
