"""What a training step minimises: the :class:`Objective` protocol and denoising score matching.

The :class:`~sde_diffusion.training.Trainer` owns the loop (data indices, labels,
optimiser, EMA, DDP, checkpoints); an objective owns the rest of a step.  It draws its
per-sample randomness for the whole global batch from the trainer's generator
(``draw``: every rank draws alike and keeps its slice, so DDP runs follow the
single-process run), turns the batch into per-sample losses (``loss``), may update
state after the optimiser step (``after_step``: a consistency model's target network),
and says what a checkpoint records: ``config`` (JSON metadata), ``state_tensors`` (what
resumes it) and ``sampling`` (how the trained model samples, for a student).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..parametrization import ScoreModel
from .losses import DenoisingScoreMatching

__all__ = ["DenoisingObjective", "Objective"]


class Objective:
    """The part of a training step that is not the loop (see the module docstring)."""

    method = "dsm"

    def draw(self, size: int, generator: torch.Generator, step: int, like: Tensor) -> dict:
        """Per-sample random draws of the global batch (tensors with ``size`` rows)."""
        raise NotImplementedError

    def loss(self, model: ScoreModel, x0: Tensor, draws: dict, cond: Any) -> Tensor:
        """Per-sample losses ``(B,)`` of ``model`` on data ``x0`` with this rank's draws."""
        raise NotImplementedError

    def after_step(self, net: nn.Module) -> None:
        """Called after each optimiser step with the bare network."""

    def config(self) -> dict[str, Any] | None:
        """What a checkpoint records of the objective (``None``: plain score matching)."""
        return None

    def sampling(self) -> dict[str, Any] | None:
        """How the trained model samples: ``{"solver", "times", "solver_options"}``."""
        return None

    def state_tensors(self) -> dict[str, Tensor]:
        """Tensors a checkpoint needs to resume the objective exactly."""
        return {}

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        """Restore what :meth:`state_tensors` returned."""


class DenoisingObjective(Objective):
    """Denoising score matching (:class:`~.losses.DenoisingScoreMatching`): times ``t``
    of the weighting, Gaussian noise ``eps``."""

    def __init__(self, dsm: DenoisingScoreMatching):
        self.dsm = dsm

    def draw(self, size, generator, step, like):
        t = self.dsm.sample_times(size, generator=generator, device=like.device)
        eps = torch.randn(
            (size, *like.shape[1:]), generator=generator, device=like.device, dtype=like.dtype
        )
        return {"t": t, "eps": eps}

    def loss(self, model, x0, draws, cond):
        return self.dsm.loss_at(model, x0, draws["t"], draws["eps"], cond)
