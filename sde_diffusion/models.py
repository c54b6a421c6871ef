"""The model protocol: the one currency between networks and solvers.

A **model** is called as ``model(x, t, cond)``: ``x`` of shape ``(B, *event)``,
``t`` of shape ``(B,)``, ``cond`` ``None``, a tensor with one row per sample, or a
dict of such tensors.  It returns a tensor shaped like ``x`` and declares in
``prediction`` what that tensor is: ``"eps"``, ``"x0"``, ``"v"``, ``"score"`` or
``"velocity"`` (see :mod:`sde_diffusion.parametrization`).  A model may also set
``passes_per_call`` (network forward passes per call, 1 by default), so results
report honest network work beside the NFE (read after every call, so a model whose
cost varies, as guidance with an interval does, sets it per call).

A plain ``score_fn(x, t)`` is a model too: :func:`as_model` wraps it as an
unconditional score model.  ``ScoreModel``, the exact mixture
``GaussianMixture.score_fn(sde)`` and the adapters in :mod:`sde_diffusion.adapters`
are models; :class:`FunctionModel` turns any ``fn(x, t, cond)`` into one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from .errors import ArgumentError
from .parametrization import check_prediction

__all__ = ["ConditionError", "FunctionModel", "Model", "as_model", "check_cond", "slice_cond"]

Cond = Tensor | dict[str, Tensor] | None


class ConditionError(ArgumentError):
    """A condition that does not fit the batch or the model."""


@runtime_checkable
class Model(Protocol):
    """``model(x, t, cond) -> Tensor`` with a declared ``prediction``."""

    prediction: str

    def __call__(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor: ...


class FunctionModel:
    """A callable as a model: ``fn(x, t, cond)``, or ``fn(x, t)`` when not ``conditional``."""

    def __init__(
        self,
        fn: Callable[..., Tensor],
        prediction: str = "score",
        *,
        conditional: bool = True,
        passes_per_call: int = 1,
    ):
        if not callable(fn):
            raise TypeError(f"a model must be callable, got {type(fn).__name__}")
        self.fn, self.prediction = fn, check_prediction(prediction)
        self.conditional, self.passes_per_call = conditional, int(passes_per_call)

    def __call__(self, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        if self.conditional:
            return self.fn(x, t, cond)
        if cond is not None:
            raise ConditionError(
                "this model is a plain function of (x, t) and takes no condition; wrap a "
                "function of (x, t, cond) as sd.FunctionModel(fn, prediction=...)"
            )
        return self.fn(x, t)

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", type(self.fn).__name__)
        return f"FunctionModel({name}, prediction={self.prediction!r})"


def as_model(model: Any) -> Model:
    """``model`` itself if it declares a ``prediction``; a plain ``score_fn(x, t)`` wrapped."""
    prediction = getattr(model, "prediction", None)
    if isinstance(prediction, str):
        check_prediction(prediction)
        return model
    if callable(model):
        return FunctionModel(model, "score", conditional=False)
    raise TypeError(
        f"expected a model (model(x, t, cond) with a 'prediction') or a score_fn(x, t), "
        f"got {type(model).__name__}"
    )


def check_cond(cond: Cond, batch: int, device: torch.device) -> Cond:
    """``cond`` checked to carry one row per sample on ``x``'s device."""
    if cond is None:
        return None
    items = cond.items() if isinstance(cond, dict) else [("cond", cond)]
    for name, value in items:
        if not isinstance(value, Tensor):
            raise ConditionError(
                f"{name} must be a tensor (labels or embeddings), got {type(value).__name__}"
            )
        if value.ndim == 0 or value.shape[0] != batch:
            raise ConditionError(
                f"{name} must have one row per sample, shape ({batch}, ...), got "
                f"{tuple(value.shape)}"
            )
        if value.device != device:
            raise ConditionError(f"{name} is on {value.device} but x is on {device}")
    return cond


def slice_cond(cond: Cond, index: slice | Tensor) -> Cond:
    """The rows ``index`` of a per-sample condition (tensor or dict of tensors)."""
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: v[index] for k, v in cond.items()}
    return cond[index]
