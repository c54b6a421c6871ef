"""Embeddings of the noise conditioning ``c_noise`` (a ``(B,)`` tensor)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["GaussianFourierFeatures", "NoiseEmbedding", "SinusoidalEmbedding"]


class GaussianFourierFeatures(nn.Module):
    """``[sin(2 pi W c), cos(2 pi W c)]`` with fixed ``W ~ N(0, scale^2)`` (Tancik et al. 2020)."""

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
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
            raise ValueError(f"embedding dim must be even, got {dim}")
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
            raise ValueError(f"embedding must be 'fourier' or 'sinusoidal', got {kind!r}")
        features = GaussianFourierFeatures(dim) if kind == "fourier" else SinusoidalEmbedding(dim)
        self.net = nn.Sequential(features, nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c: Tensor) -> Tensor:
        return self.net(c)
