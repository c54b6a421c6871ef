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


def group_norm(channels: int) -> nn.GroupNorm:
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
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2, self.conv2 = group_norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
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
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.mT, k.mT, v.mT)  # (b, heads, hw, c/heads)
        return x + self.proj(out.mT.reshape(b, c, h, w))


class CrossAttention(nn.Module):
    """Multi-head attention from the pixels of a feature map to a sequence condition
    ``(B, L, context_dim)`` (the text-encoder states of latent diffusion, Rombach et al.
    2022), residual; the output projection starts at zero."""

    def __init__(self, channels: int, context_dim: int, heads: int = 4):
        super().__init__()
        self.heads = heads if channels % heads == 0 else 1
        self.norm = group_norm(channels)
        self.query = nn.Conv2d(channels, channels, 1)
        self.key_value = nn.Linear(context_dim, 2 * channels)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q = self.query(self.norm(x)).reshape(b, self.heads, c // self.heads, h * w).mT
        kv = self.key_value(context.to(x.dtype)).reshape(b, -1, 2, self.heads, c // self.heads)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # (b, heads, L, c/heads) each
        out = F.scaled_dot_product_attention(q, k, v)  # (b, heads, hw, c/heads)
        return x + self.proj(out.mT.reshape(b, c, h, w))


class UNet(nn.Module):
    """``x (B, C, H, W)``, ``c_noise (B,)`` and an optional condition to ``(B, C, H, W)``.

    ``channel_mult`` sets the resolutions (H must be divisible by
    ``2^(len(channel_mult) - 1)``); self-attention runs at every resolution
    ``<= attention_below``.  With ``num_classes`` a label embedding is added (the
    label ``num_classes`` is the null label, for classifier-free guidance), with
    ``cond_dim`` a vector condition (see ``ConditionEmbedding``), with ``context_dim`` a
    sequence condition ``(B, L, context_dim)`` read by cross-attention at every attention
    resolution and in the middle block (``cond`` a 3-D float tensor, or ``{"context": ...}``
    beside ``labels``/``vector``; a missing context is a learned one-token null context, for
    classifier-free guidance).
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
        context_dim: int | None = None,
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
            "context_dim": context_dim,
        }
        emb_dim = 4 * channels
        self.factor = 2 ** (len(channel_mult) - 1)
        self.embed = NoiseEmbedding(emb_dim, embedding)
        self.cond = ConditionEmbedding(emb_dim, num_classes, cond_dim)
        self.null_context = nn.Parameter(torch.zeros(1, 1, context_dim)) if context_dim else None
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)
        widths, ch = [channels], channels
        self.down = nn.ModuleList()
        res = image_size or 1 << 30
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(
                    self._stage(
                        ch, channels * mult, emb_dim, dropout, res, attention_below, context_dim
                    )
                )
                ch = channels * mult
                widths.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                widths.append(ch)
                res //= 2
        mid = [ResBlock(ch, ch, emb_dim, dropout), Attention(ch)]
        mid += [CrossAttention(ch, context_dim)] if context_dim else []
        self.mid = nn.ModuleList([*mid, ResBlock(ch, ch, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(
                    self._stage(
                        ch + widths.pop(),
                        channels * mult,
                        emb_dim,
                        dropout,
                        res,
                        attention_below,
                        context_dim,
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
        self.out = nn.Sequential(
            group_norm(ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @staticmethod
    def _stage(cin, cout, emb_dim, dropout, res, attention_below, context_dim) -> nn.ModuleList:
        layers = [ResBlock(cin, cout, emb_dim, dropout)]
        if res <= attention_below:
            layers.append(Attention(cout))
            if context_dim:
                layers.append(CrossAttention(cout, context_dim))
        return nn.ModuleList(layers)

    def _run(self, layer: nn.Module, h: Tensor, emb: Tensor, context: Tensor | None) -> Tensor:
        for sub in layer if isinstance(layer, nn.ModuleList) else [layer]:
            if isinstance(sub, ResBlock):
                h = sub(h, emb)
            elif isinstance(sub, CrossAttention):
                h = sub(h, context)
            else:
                h = sub(h)
        return h

    def _split_context(self, cond, batch: int) -> tuple[Tensor | None, Any]:
        """The sequence condition (the null context if none) and the rest of ``cond``."""
        context = None
        if isinstance(cond, Tensor) and cond.is_floating_point() and cond.ndim == 3:
            context, cond = cond, None
        elif isinstance(cond, dict) and "context" in cond:
            cond = dict(cond)
            context = cond.pop("context")
        dim = self.config["context_dim"]
        if context is None:
            return None if dim is None else self.null_context.expand(batch, -1, -1), cond
        if dim is None:
            raise ArgumentError(
                "this network takes no sequence condition (build it with context_dim=d for "
                "(B, L, d) contexts)"
            )
        if context.ndim != 3 or context.shape[0] != batch or context.shape[-1] != dim:
            raise ArgumentError(
                f"a sequence condition must have shape ({batch}, L, {dim}), got "
                f"{tuple(context.shape)}"
            )
        return context, cond

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
        context, cond = self._split_context(cond, x.shape[0])
        emb = self.cond(cond, self.embed(c_noise))
        h = self.inp(x)
        skips = [h]
        for layer in self.down:
            h = self._run(layer, h, emb, context)
            skips.append(h)
        h = self._run(self.mid, h, emb, context)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(layer, h, emb, context)
        return self.out(h)
