"""The score model a run trains, built from a few settings and the data's statistics.

``build_model(data, sde=..., network=..., width=..., parametrization=..., conditional=...)``
is what ``sdediff train`` builds: a residual MLP for vector data or a small U-Net for
images (``network="auto"``), EDM-preconditioned with ``sigma_data`` the data's standard
deviation, class-conditional on the data's labels when asked.  The defaults here are the
command line's.
"""

from __future__ import annotations

from ..errors import ArgumentError
from ..networks import ResidualMLP, UNet
from ..parametrization import PARAMETRIZATIONS, ScoreModel
from ..sdes import build_sde
from .data import Dataset

__all__ = ["NETWORKS", "build_model"]

NETWORKS = ("auto", "mlp", "unet")
MLP_WIDTH, MLP_DEPTH, MLP_EMBEDDING = 128, 3, 64
UNET_CHANNELS, UNET_RES_BLOCKS = 16, 1


def build_model(
    data: Dataset,
    *,
    sde: str = "vp",
    network: str = "auto",
    width: int | None = None,
    parametrization: str = "edm",
    conditional: bool = False,
) -> ScoreModel:
    """An EDM-preconditioned score model sized for ``data`` under the registered SDE ``sde``.

    ``network``: ``mlp`` (vectors: width ``width or 128``, depth 3), ``unet`` (images
    ``(C, H, W)``: ``width or 16`` base channels) or ``auto`` (by the data's shape).
    ``conditional`` needs labelled data (``digits``, ``8gaussians``).
    """
    event = tuple(data.x.shape[1:])
    if network not in NETWORKS:
        raise ArgumentError(f"unknown network {network!r}; choose one of {', '.join(NETWORKS)}")
    if parametrization not in PARAMETRIZATIONS:
        raise ArgumentError(
            f"unknown parametrization {parametrization!r}; choose one of "
            f"{', '.join(PARAMETRIZATIONS)}"
        )
    if conditional and data.labels is None:
        raise ArgumentError(
            f"a conditional model needs labelled data (digits, 8gaussians); {data.name} has "
            "no labels"
        )
    num_classes = data.num_classes if conditional else None
    if network == "auto":
        network = "unet" if len(event) == 3 else "mlp"
    if network == "mlp":
        if len(event) != 1:
            raise ArgumentError(f"the mlp network needs vector data, got events of shape {event}")
        net = ResidualMLP(
            event[0],
            width=width or MLP_WIDTH,
            depth=MLP_DEPTH,
            emb_dim=MLP_EMBEDDING,
            num_classes=num_classes,
        )
    else:
        if len(event) != 3:
            raise ArgumentError(f"the unet network needs images (C, H, W), got shape {event}")
        net = UNet(
            event[0],
            channels=width or UNET_CHANNELS,
            num_res_blocks=UNET_RES_BLOCKS,
            image_size=event[-1],
            num_classes=num_classes,
        )
    sigma_data = float(data.x.std())
    return ScoreModel(net, build_sde(sde), parametrization, sigma_data=sigma_data)
