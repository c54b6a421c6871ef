"""Training the latent autoencoder, and the data a latent score model trains on.

The :class:`~sde_diffusion.training.Trainer` runs an :class:`AutoencoderObjective` on an
:class:`AutoencoderModel` as it runs any objective (EMA, DDP, atomic checkpoints, resume,
SIGTERM): per sample the loss is the reconstruction error (L1 or squared, averaged over
pixels) of a posterior sample ``z = mean + exp(logvar / 2) eps`` plus ``kl_weight`` times
``KL(q(z | x) || N(0, I))`` per pixel (the LDM objective without its perceptual and
adversarial terms; Rombach et al. 2022, sec. 3 and app. G).  Each checkpoint records the
EMA autoencoder's latent statistics (the shift and scale that give the latents zero mean
and unit standard deviation over the training data, Stable Diffusion's ``shift_factor`` and
``scaling_factor``) and its reconstruction error; :func:`encode_dataset` turns a data set
into the scaled latents a score model trains on.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ArgumentError
from ..networks.autoencoder import Autoencoder, kl_to_standard_normal
from .data import Dataset
from .objectives import Objective

__all__ = [
    "ENCODINGS",
    "RECONSTRUCTION_LOSSES",
    "AutoencoderModel",
    "AutoencoderObjective",
    "encode_dataset",
    "latent_statistics",
    "reconstruction_error",
]

RECONSTRUCTION_LOSSES = ("l1", "l2")
ENCODE_BATCH = 512


class AutoencoderModel(nn.Module):
    """What the trainer trains for an autoencoder run: ``net`` is the :class:`Autoencoder`
    (``sde`` is ``None``: there is no diffusion in this run)."""

    sde = None

    def __init__(self, net: Autoencoder):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.net(x, eps)


class AutoencoderObjective(Objective):
    """Reconstruction plus ``kl_weight`` x KL, both per pixel (see the module docstring)."""

    method = "autoencoder"

    def __init__(self, net: Autoencoder, kl_weight: float = 1e-6, reconstruction: str = "l1"):
        if reconstruction not in RECONSTRUCTION_LOSSES:
            raise ArgumentError(
                f"unknown reconstruction loss {reconstruction!r}; choose one of "
                f"{', '.join(RECONSTRUCTION_LOSSES)}"
            )
        if not 0 <= kl_weight < float("inf"):
            raise ArgumentError(f"kl_weight must be a finite number >= 0, got {kl_weight}")
        self.net, self.kl_weight, self.reconstruction = net, float(kl_weight), reconstruction

    def draw(self, size, generator, step, like):
        shape = (size, *self.net.latent_shape(tuple(like.shape[1:])))
        return {
            "eps": torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
        }

    def loss(self, model, x0, draws, cond):
        recon, mean, logvar = model(x0, draws["eps"])
        error = (recon - x0).abs() if self.reconstruction == "l1" else (recon - x0).square()
        pixels = x0[0].numel()
        return (
            error.flatten(1).mean(1) + self.kl_weight * kl_to_standard_normal(mean, logvar) / pixels
        )

    def config(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "kl_weight": self.kl_weight,
            "reconstruction": self.reconstruction,
        }


def _batches(x: Tensor):
    for start in range(0, len(x), ENCODE_BATCH):
        yield x[start : start + ENCODE_BATCH]


@torch.no_grad()
def posterior_means(net: Autoencoder, x: Tensor) -> Tensor:
    """The raw posterior means of ``x``, encoded in batches."""
    return torch.cat([net.posterior(chunk)[0] for chunk in _batches(x)])


def latent_statistics(net: Autoencoder, x: Tensor, means: Tensor | None = None):
    """``(shift, scale)``: the mean of the posterior means over ``x`` and one over their
    standard deviation, so ``(mean - shift) * scale`` has zero mean and unit variance
    (``means``: those of ``x``, if already encoded)."""
    means = (posterior_means(net, x) if means is None else means).double()
    return float(means.mean()), float(1.0 / means.std().clamp_min(1e-12))


@torch.no_grad()
def reconstruction_error(net: Autoencoder, x: Tensor, means: Tensor | None = None) -> float:
    """Mean squared error per pixel (model units) of decoding the posterior means of ``x``
    (``means``, if already encoded)."""
    means = posterior_means(net, x) if means is None else means
    squared = [(net.decode_raw(z) - chunk).square().sum()
               for z, chunk in zip(_batches(means), _batches(x), strict=True)]  # fmt: skip
    return float(torch.stack(squared).sum()) / x.numel()


def measured_config(net: Autoencoder, x: Tensor) -> dict[str, Any]:
    """``net.config`` with its latent statistics measured on ``x``, and the reconstruction
    error there (what a checkpoint records): one pass of the encoder."""
    was_training = net.training
    net.eval()
    means = posterior_means(net, x)
    shift, scale = latent_statistics(net, x, means)
    error = reconstruction_error(net, x, means)
    net.train(was_training)
    return {"network": net.config | {"latent_shift": shift, "latent_scale": scale},
            "reconstruction_mse": error}  # fmt: skip


ENCODINGS = ("mean", "sample")


@torch.no_grad()
def encode_dataset(
    data: Dataset, autoencoder: Autoencoder, source: dict[str, Any], encoding: str = "mean"
) -> Dataset:
    """``data`` as the scaled latents of ``autoencoder``: what a latent score model trains
    on.  ``encoding="mean"`` encodes once, to the posterior means; ``"sample"`` also keeps
    the posterior's standard deviations (``spread``), so that each training step draws a
    fresh latent ``z ~ q(z | x)`` of every image (LDM's encoding, an augmentation) at the
    cost of none of the encoder.  The labels and the image units (``scale``, ``shift``)
    stay; ``info["latent"]`` holds ``source`` (how to find the autoencoder), the encoding
    and the image shape."""
    if encoding not in ENCODINGS:
        raise ArgumentError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    autoencoder.eval()
    device = next(autoencoder.parameters()).device
    means, spreads = [], []
    for chunk in _batches(data.x):
        mean, std = autoencoder.scaled_posterior(chunk.to(device))
        means.append(mean.cpu())
        spreads.append(std.cpu())
    latent = {**source, "encoding": encoding, "image_shape": list(data.x.shape[1:])}
    info = {**data.info, "latent": latent}
    spread = torch.cat(spreads) if encoding == "sample" else None
    return Dataset(torch.cat(means), data.labels, data.name, data.scale, data.shift, info, spread)
