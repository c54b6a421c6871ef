"""Embeddings of the noise conditioning ``c_noise`` (a ``(B,)`` tensor) and of conditions."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ArgumentError

__all__ = ["ConditionEmbedding", "GaussianFourierFeatures", "NoiseEmbedding", "SinusoidalEmbedding"]


class GaussianFourierFeatures(nn.Module):
    """``[sin(2 pi W c), cos(2 pi W c)]`` with fixed ``W ~ N(0, scale^2)`` (Tancik et al. 2020)."""

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0):
        super().__init__()
        if dim % 2:
            raise ArgumentError(f"embedding dim must be even, got {dim}")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("weight", torch.randn(dim // 2, generator=g) * scale)

    def forward(self, c: Tensor) -> Tensor:
        angles = 2 * math.pi * c[:, None] * self.weight.to(c.dtype)
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class SinusoidalEmbedding(nn.Module):
    """Transformer positional features of ``c`` (Vaswani et al. 2017), geometric frequencies."""

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ArgumentError(f"embedding dim must be even, got {dim}")
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(max_period) * torch.arange(half) / half))

    def forward(self, c: Tensor) -> Tensor:
        angles = c[:, None] * self.freqs.to(c.dtype) * 1000.0  # c_noise spans about [-2, 2]
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class NoiseEmbedding(nn.Module):
    """Features of ``c_noise`` followed by a two-layer SiLU MLP."""

    def __init__(self, dim: int, kind: str = "fourier"):
        super().__init__()
        if kind not in ("fourier", "sinusoidal"):
            raise ArgumentError(f"embedding must be 'fourier' or 'sinusoidal', got {kind!r}")
        features = GaussianFourierFeatures(dim) if kind == "fourier" else SinusoidalEmbedding(dim)
        self.net = nn.Sequential(features, nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c: Tensor) -> Tensor:
        return self.net(c)


class ConditionEmbedding(nn.Module):
    """A condition as a vector added to the noise embedding.

    Class labels, integers of shape ``(B,)``, index a learned table whose extra row
    ``num_classes`` is the **null label** (no condition): condition dropout in
    training teaches it the unconditional score that classifier-free guidance
    needs.  A float ``(B, cond_dim)`` vector (an embedding of any other
    condition) goes through a learned linear map.  A dict may hold both, as
    ``{"labels": ..., "vector": ...}``; a missing condition is the null label and
    a zero vector.
    """

    def __init__(self, dim: int, num_classes: int | None = None, cond_dim: int | None = None):
        super().__init__()
        self.num_classes, self.cond_dim = num_classes, cond_dim
        self.label = nn.Embedding(num_classes + 1, dim) if num_classes else None
        self.vector = nn.Linear(cond_dim, dim) if cond_dim else None

    def forward(self, cond: Tensor | dict[str, Tensor] | None, emb: Tensor) -> Tensor:
        """``emb`` plus the embedding of ``cond``."""
        parts = dict(cond) if isinstance(cond, dict) else {}
        if isinstance(cond, Tensor):
            parts["vector" if cond.is_floating_point() else "labels"] = cond
        unknown = set(parts) - {"labels", "vector"}
        if unknown:
            raise ArgumentError(f"unknown condition keys {sorted(unknown)}; use 'labels', 'vector'")
        if self.label is not None:
            labels = parts.pop("labels", None)
            if labels is None:
                labels = torch.full((emb.shape[0],), self.num_classes, device=emb.device)
            elif labels.device.type == "cpu" and bool(
                ((labels < 0) | (labels > self.num_classes)).any()
            ):  # on CPU a free check; an accelerator's lookup reports it itself
                raise ArgumentError(
                    f"class labels must lie in 0..{self.num_classes - 1} (or {self.num_classes}, "
                    f"the null label), got {labels.min().item()}..{labels.max().item()}"
                )
            emb = emb + self.label(labels.long())
        if self.vector is not None and "vector" in parts:
            emb = emb + self.vector(parts.pop("vector").to(emb.dtype))
        if parts:
            raise ArgumentError(
                f"this network takes no {' or '.join(sorted(parts))} condition "
                f"(num_classes={self.num_classes}, cond_dim={self.cond_dim})"
            )
        return emb
