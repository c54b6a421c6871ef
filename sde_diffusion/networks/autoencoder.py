"""A small KL-regularised convolutional autoencoder (the "KL-f" family of Rombach et al. 2022).

The encoder maps an image ``(B, C, H, W)`` to the mean and log-variance of a diagonal
Gaussian posterior over a latent ``(B, c, H/f, W/f)`` (``f = 2, 4, 8``: one stride-2
convolution per halving); the decoder maps a latent back to an image.  A score model
trains on the **scaled latent** ``z = (mean - latent_shift) * latent_scale`` (unit
standard deviation over the training set, as Stable Diffusion's ``scaling_factor`` and
``shift_factor``); :meth:`Autoencoder.encode` and :meth:`Autoencoder.decode` speak those
units, :meth:`Autoencoder.posterior` and :meth:`Autoencoder.decode_raw` the raw ones.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ArgumentError
from .unet import group_norm

__all__ = ["FACTORS", "Autoencoder", "kl_to_standard_normal"]

FACTORS = (2, 4, 8)
LOGVAR_RANGE = (-30.0, 20.0)  # the posterior's log-variance is clamped here (as LDM's)


class ConvBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual connection (a 1x1 skip if widths differ)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            group_norm(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1),
            group_norm(cout), nn.SiLU(), nn.Conv2d(cout, cout, 3, padding=1),
        )  # fmt: skip
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class Autoencoder(nn.Module):
    """``encode``/``decode`` between images ``(B, C, H, W)`` and latents ``(B, c, H/f, W/f)``.

    ``factor`` f is 2, 4 or 8; ``latent_channels`` c; ``channels`` the first level's
    width (doubled at each halving, at most 4x).  ``latent_scale`` and ``latent_shift``
    are measured on the training data after training
    (:func:`sde_diffusion.training.autoencoding.latent_statistics`) and kept in ``config``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        factor: int = 4,
        latent_channels: int = 4,
        channels: int = 32,
        latent_scale: float = 1.0,
        latent_shift: float = 0.0,
    ):
        super().__init__()
        if factor not in FACTORS:
            raise ArgumentError(
                f"factor must be one of {', '.join(map(str, FACTORS))}, got {factor}"
            )
        if latent_channels < 1 or channels < 1 or in_channels < 1:
            raise ArgumentError(
                f"in_channels, latent_channels and channels must be >= 1, got {in_channels}, "
                f"{latent_channels}, {channels}"
            )
        self.config: dict[str, Any] = {
            "type": "autoencoder",
            "in_channels": in_channels,
            "factor": factor,
            "latent_channels": latent_channels,
            "channels": channels,
            "latent_scale": float(latent_scale),
            "latent_shift": float(latent_shift),
        }
        levels = int(math.log2(factor))
        widths = [channels * min(2**i, 4) for i in range(levels + 1)]
        down: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        for i in range(levels):
            down += [
                ConvBlock(widths[i], widths[i + 1]),
                nn.Conv2d(widths[i + 1], widths[i + 1], 3, 2, 1),
            ]
        down += [ConvBlock(widths[-1], widths[-1]), group_norm(widths[-1]), nn.SiLU()]
        down.append(nn.Conv2d(widths[-1], 2 * latent_channels, 3, padding=1))
        self.encoder = nn.Sequential(*down)
        up: list[nn.Module] = [nn.Conv2d(latent_channels, widths[-1], 3, padding=1)]
        up.append(ConvBlock(widths[-1], widths[-1]))
        for i in reversed(range(levels)):
            up += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(widths[i + 1], widths[i + 1], 3, padding=1),
                ConvBlock(widths[i + 1], widths[i]),
            ]
        up += [group_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*up)

    @property
    def factor(self) -> int:
        return self.config["factor"]

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """The latent ``(c, H/f, W/f)`` of images ``(C, H, W)``."""
        _, h, w = image_shape[-3:]
        f = self.factor
        return self.config["latent_channels"], h // f, w // f

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of ``q(z | x)`` in the raw latent units."""
        c, f = self.config["in_channels"], self.factor
        if x.ndim != 4 or x.shape[1] != c or x.shape[-1] % f or x.shape[-2] % f:
            raise ArgumentError(
                f"the autoencoder takes images (B, {c}, H, W) with H and W divisible by {f}, "
                f"got {tuple(x.shape)}"
            )
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode_raw(self, z: Tensor) -> Tensor:
        """Images from raw latents."""
        return self.decoder(z)

    def forward(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The reconstruction of ``x`` from the posterior sample ``mean + exp(logvar/2) eps``,
        with the posterior's mean and log-variance."""
        mean, logvar = self.posterior(x)
        return self.decode_raw(mean + (0.5 * logvar).exp() * eps), mean, logvar

    def scaled_posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation of ``q(z | x)`` in the scaled units."""
        mean, logvar = self.posterior(x)
        scale = self.config["latent_scale"]
        return (mean - self.config["latent_shift"]) * scale, (0.5 * logvar).exp() * scale

    def encode(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Scaled latents of ``x``: the posterior mean, or a posterior sample with ``generator``."""
        mean, std = self.scaled_posterior(x)
        if generator is None:
            return mean
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + std * eps

    def decode(self, z: Tensor) -> Tensor:
        """Images from scaled latents (the score model's units)."""
        raw = z / self.config["latent_scale"] + self.config["latent_shift"]
        return self.decode_raw(raw.to(next(self.parameters()).dtype)).to(z.dtype)


def kl_to_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mean, exp(logvar)) || N(0, I))`` summed over each sample's latent, ``(B,)``."""
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(1)
