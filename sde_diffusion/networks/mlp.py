"""A residual MLP for vector data."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..errors import ArgumentError
from .embeddings import ConditionEmbedding, NoiseEmbedding

__all__ = ["ResidualMLP"]


class _Block(nn.Module):
    def __init__(self, width: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.emb = nn.Linear(emb_dim, width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, width)
        )

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.mlp(self.norm(h) + self.emb(emb))


class ResidualMLP(nn.Module):
    """``x (B, dim)``, ``c_noise (B,)`` and an optional condition to ``(B, dim)``.

    Pre-norm residual blocks, the noise embedding (plus the condition's, see
    ``ConditionEmbedding``: labels with a null label, or a ``cond_dim`` vector)
    added in every block, the output layer zero-initialised.
    """

    def __init__(
        self,
        dim: int,
        width: int = 256,
        depth: int = 4,
        emb_dim: int = 128,
        embedding: str = "fourier",
        num_classes: int | None = None,
        cond_dim: int | None = None,
    ):
        super().__init__()
        self.config: dict[str, Any] = {
            "type": "mlp",
            "dim": dim,
            "width": width,
            "depth": depth,
            "emb_dim": emb_dim,
            "embedding": embedding,
            "num_classes": num_classes,
            "cond_dim": cond_dim,
        }
        self.embed = NoiseEmbedding(emb_dim, embedding)
        self.cond = ConditionEmbedding(emb_dim, num_classes, cond_dim)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_Block(width, emb_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, c_noise: Tensor, cond=None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.config["dim"]:
            raise ArgumentError(
                f"ResidualMLP expects x of shape (B, {self.config['dim']}), got {tuple(x.shape)}"
            )
        emb = self.cond(cond, self.embed(c_noise))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
