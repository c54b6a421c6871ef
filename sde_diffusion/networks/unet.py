"""A small U-Net for images (DDPM/EDM style, sized for 8x8 to 64x64 on one machine)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ArgumentError
from .embeddings import ConditionEmbedding, NoiseEmbedding

__all__ = ["UNet"]


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups that divide ``channels``."""
    return nn.GroupNorm(math.gcd(channels, 32), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, a 1x1 skip if needed; the embedding scales and shifts
    the second normalisation (ADM's scale-shift norm, Dhariwal & Nichol 2021).

    The embedding acts after the norm: a per-channel shift added before a GroupNorm
    with one channel per group (narrow networks) would be normalised away.
    """

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.heads = heads if channels % heads == 0 else 1
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.mT, k.mT, v.mT)  # (b, heads, hw, c/heads)
        return x + self.proj(out.mT.reshape(b, c, h, w))


class UNet(nn.Module):
    """``x (B, C, H, W)``, ``c_noise (B,)`` and an optional condition to ``(B, C, H, W)``.

    ``channel_mult`` sets the resolutions (H must be divisible by
    ``2^(len(channel_mult) - 1)``); self-attention runs at every resolution
    ``<= attention_below``.  With ``num_classes`` a label embedding is added (the
    label ``num_classes`` is the null label, for classifier-free guidance), with
    ``cond_dim`` a vector condition (see ``ConditionEmbedding``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 64,
        channel_mult: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 2,
        attention_below: int = 4,
        dropout: float = 0.0,
        num_classes: int | None = None,
        embedding: str = "fourier",
        image_size: int | None = None,
        cond_dim: int | None = None,
    ):
        super().__init__()
        self.config: dict[str, Any] = {
            "type": "unet",
            "in_channels": in_channels,
            "channels": channels,
            "channel_mult": list(channel_mult),
            "num_res_blocks": num_res_blocks,
            "attention_below": attention_below,
            "dropout": dropout,
            "num_classes": num_classes,
            "embedding": embedding,
            "image_size": image_size,
            "cond_dim": cond_dim,
        }
        emb_dim = 4 * channels
        self.factor = 2 ** (len(channel_mult) - 1)
        self.embed = NoiseEmbedding(emb_dim, embedding)
        self.cond = ConditionEmbedding(emb_dim, num_classes, cond_dim)
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        widths, ch = [channels], channels
        self.down = nn.ModuleList()
        res = image_size or 1 << 30
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(
                    self._stage(ch, channels * mult, emb_dim, dropout, res, attention_below)
                )
                ch = channels * mult
                widths.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                widths.append(ch)
                res //= 2
        self.mid = nn.ModuleList(
            [ResBlock(ch, ch, emb_dim, dropout), Attention(ch), ResBlock(ch, ch, emb_dim, dropout)]
        )
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(
                    self._stage(
                        ch + widths.pop(), channels * mult, emb_dim, dropout, res, attention_below
                    )
                )
                ch = channels * mult
            if level > 0:
                self.up.append(
                    nn.Sequential(
                        nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)
                    )
                )
                res *= 2
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @staticmethod
    def _stage(cin, cout, emb_dim, dropout, res, attention_below) -> nn.ModuleList:
        layers = [ResBlock(cin, cout, emb_dim, dropout)]
        if res <= attention_below:
            layers.append(Attention(cout))
        return nn.ModuleList(layers)

    def _run(self, layer: nn.Module, h: Tensor, emb: Tensor) -> Tensor:
        if isinstance(layer, nn.ModuleList):
            for sub in layer:
                h = sub(h, emb) if isinstance(sub, ResBlock) else sub(h)
            return h
        return layer(h, emb) if isinstance(layer, ResBlock) else layer(h)

    def forward(self, x: Tensor, c_noise: Tensor, cond=None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.config["in_channels"]:
            raise ArgumentError(
                f"UNet expects x of shape (B, {self.config['in_channels']}, H, W), "
                f"got {tuple(x.shape)}"
            )
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ArgumentError(
                f"image size {tuple(x.shape[-2:])} must be divisible by {self.factor}"
            )
        emb = self.cond(cond, self.embed(c_noise))
        h = self.inp(x)
        skips = [h]
        for layer in self.down:
            h = self._run(layer, h, emb)
            skips.append(h)
        for layer in self.mid:
            h = self._run(layer, h, emb)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(layer, h, emb)
        return self.out(h)
