"""Latent diffusion: a score model in an autoencoder's latent space that carries its decoder.

A :class:`LatentModel` is a :class:`~sde_diffusion.parametrization.ScoreModel` whose
``x`` is a scaled latent ``z`` (Rombach et al. 2022): solvers, guidance, tuned grids and
the likelihood see only the latent space, and :func:`sde_diffusion.sample` decodes the
sampled latents into images through ``model.decode`` (``decode=False`` keeps them).  The
autoencoder is any module with ``encode(x) -> z`` and ``decode(z) -> x`` in the score
model's units: ours (:class:`~sde_diffusion.networks.Autoencoder`) or diffusers'
``AutoencoderKL`` through :class:`~sde_diffusion.adapters.DiffusersAutoencoder`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .errors import ArgumentError
from .measurements import Inpaint, Measurement, check_sigma_y

__all__ = [
    "DecodedMeasurement",
    "LatentModel",
    "latent_inpainting",
    "latent_mask",
    "latent_model_of",
]

GAIN_ROWS = 256  # observed latent entries the encoder's gain is measured on


class LatentModel:
    """``model`` (any model, trained on latents) with the ``autoencoder`` of its latents.

    Called as ``model(x, t, cond)`` on latents; every other attribute (``sde``, ``net``,
    ``prediction``, ``denoise``, ...) is the inner model's.  ``image_shape`` is the decoded
    image's ``(C, H, W)``, ``latent_shape`` what is sampled.
    """

    def __init__(
        self,
        model: Any,
        autoencoder: nn.Module,
        image_shape: tuple[int, ...],
        latent_shape: tuple[int, ...],
    ):
        self.model, self.autoencoder = model, autoencoder
        self.image_shape, self.latent_shape = tuple(image_shape), tuple(latent_shape)

    @property
    def prediction(self) -> str:
        return self.model.prediction

    def __call__(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.model(x, t, cond)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["model"], name)

    def encode(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Scaled latents of images ``x`` (the posterior mean; a sample with ``generator``)."""
        return self.autoencoder.encode(x, generator=generator)

    def decode(self, z: Tensor) -> Tensor:
        """Images of scaled latents ``z``."""
        return self.autoencoder.decode(z)

    def to(self, *args: Any, **kwargs: Any) -> LatentModel:
        """Both parts moved or cast as ``nn.Module.to`` does."""
        self.model.to(*args, **kwargs)
        self.autoencoder.to(*args, **kwargs)
        return self

    def eval(self) -> LatentModel:
        self.model.eval()
        self.autoencoder.eval()
        return self

    def __repr__(self) -> str:
        return f"LatentModel({self.model!r}, latents {self.latent_shape} -> {self.image_shape})"


def latent_model_of(model: Any) -> LatentModel | None:
    """The :class:`LatentModel` inside ``model`` (itself, or the model a guidance or other
    wrapper holds as ``.model``), or ``None``."""
    seen = 0
    while model is not None and seen < 8:
        if isinstance(model, LatentModel):
            return model
        model, seen = getattr(model, "model", None), seen + 1
    return None


class DecodedMeasurement(Measurement):
    """A measurement of images read through a latent model's decoder: ``z -> A D(z)``.

    What :func:`sde_diffusion.restore` measures when its model is a latent model: the
    methods run in latent space and the measurement of a latent is that of its decoded
    image (latent DPS: the gradient of ``‖y − A D(ẑ_0)‖`` runs back through the decoder).
    The map is not linear, so it has no adjoint and no SVD: methods that need them refuse.
    """

    def __init__(self, measurement: Measurement, model: LatentModel):
        if tuple(measurement.event) != tuple(model.image_shape):
            raise ArgumentError(
                f"the measurement takes images of shape {measurement.event}; the latent model "
                f"decodes to {model.image_shape}"
            )
        super().__init__(model.latent_shape)
        self.measurement, self.model = measurement, model

    def forward(self, z: Tensor) -> Tensor:
        return self.measurement.forward(self.model.decode(z))

    def adjoint(self, y: Tensor) -> Tensor:
        raise ArgumentError(self._nonlinear("adjoint"))

    def matrix(self, dtype: torch.dtype = torch.float64) -> Tensor:
        raise ArgumentError(self._nonlinear("matrix (so no SVD)"))

    def _nonlinear(self, what: str) -> str:
        return (
            f"a measurement through the decoder is not linear: it has no {what}; on a latent "
            "model dps restores any measurement and every method inpaints"
        )

    def __repr__(self) -> str:
        return f"DecodedMeasurement({self.measurement!r} of decoded latents {self.event})"


def latent_mask(mask: Tensor, model: LatentModel) -> Tensor:
    """The latent cells an image ``mask`` observes: a cell (all latent channels at one
    position) is observed when every pixel of its ``f × f`` block, in every channel, is."""
    f = _factor(model)
    c, h, w = model.latent_shape
    blocks = mask.reshape(-1, h, f, w, f).all(dim=(0, 2, 4))
    return blocks.expand(c, h, w).clone()


def _factor(model: LatentModel) -> int:
    """``f``: how many pixels of the image one latent cell spans on each side."""
    if len(model.latent_shape) != 3 or len(model.image_shape) != 3:
        raise ArgumentError(
            f"latent inpainting needs images and latents of shape (C, H, W); this model "
            f"decodes {model.latent_shape} to {model.image_shape}; dps needs neither"
        )
    _, h, w = model.latent_shape
    _, height, width = model.image_shape
    if height % h or width % w or height // h != width // w:
        raise ArgumentError(
            f"latent inpainting needs images a whole factor larger than the latents; "
            f"{model.image_shape} decodes from {model.latent_shape}"
        )
    return height // h


def latent_inpainting(
    measurement: Inpaint, model: LatentModel, y: Tensor, sigma_y: float = 0.0
) -> tuple[Inpaint, Tensor, float]:
    """Inpainting of images as inpainting of their latents (the Stable Diffusion way):
    the operator keeps the latent cells of :func:`latent_mask`, its reading is the encoded
    image with the hidden pixels at zero, ``E(Aᵀ y)`` at those cells, and its noise
    ``σ_y g``, with ``g`` the encoder's gain (the root-mean-square norm of the rows of
    ``∂E/∂x`` over up to 256 observed entries, at decoded standard-normal latents: exact
    for a linear encoder).  Returns ``(latent operator, latent reading, latent noise)``; every
    restoration method runs on it."""
    if tuple(measurement.event) != tuple(model.image_shape):
        raise ArgumentError(
            f"the mask covers images of shape {measurement.event}; the latent model decodes "
            f"to {model.image_shape}"
        )
    cells = latent_mask(measurement.mask, model)
    if not bool(cells.any()):
        f = _factor(model)
        raise ArgumentError(
            f"no {f}×{f} block of the mask is wholly observed, so inpainting latents keeps "
            "nothing; dps measures the pixels through the decoder"
        )
    operator = Inpaint(cells)
    sigma_y = check_sigma_y(sigma_y)
    with torch.no_grad():
        reading = operator.forward(model.encode(measurement.adjoint(y)))
    if sigma_y > 0:
        sigma_y *= _encoder_gain(model, operator.observed, y)
    return operator, reading, sigma_y


def _encoder_gain(model: LatentModel, observed: Tensor, like: Tensor) -> float:
    """The root-mean-square row norm of the encoder's Jacobian over up to ``GAIN_ROWS``
    evenly spaced observed latent entries, each at its own decoded standard-normal latent
    (fixed seed: images like the model's, whatever the batch); one batched backward pass."""
    rows = observed[torch.linspace(0, len(observed) - 1, min(GAIN_ROWS, len(observed))).long()]
    with torch.enable_grad(), torch.inference_mode(False):
        rows = rows.unique().to(like.device)  # a normal tensor here, even from inference mode
        eps = torch.randn(
            len(rows), *model.latent_shape, generator=torch.Generator().manual_seed(0)
        )
        with torch.no_grad():
            images = model.decode(eps.to(like)).detach()
        images.requires_grad_(True)
        latents = model.encode(images).flatten(1)
        picked = latents[torch.arange(len(rows), device=rows.device), rows]
        (grad,) = torch.autograd.grad(picked.sum(), images)
    return float(grad.flatten(1).square().sum(1).mean().sqrt())
