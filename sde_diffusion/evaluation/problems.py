"""Named sampling problems: analytic mixtures, shipped models and checkpoints.

A ``Problem`` bundles what a sampler needs (``model``, ``sde``, the event
shape) with what judging its samples needs (reference data and a quality
metric).  ``load_problem`` resolves a name the command line accepts:

- ``gmm8`` (the 2-D eight-Gaussians ring) and ``gmm64`` (a 64-D mixture with
  full covariances): exact scores, no network, under any of the four SDEs;
- a shipped model (``moons``, ``digits``: see ``sde_diffusion.pretrained``);
- a path to a checkpoint written by ``Trainer``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..analytic import GaussianMixture, eight_gaussians, high_dim_mixture
from ..errors import ArgumentError
from ..latent import latent_model_of
from ..noise import seeded_generator
from ..pretrained import available, load_pretrained
from ..reverse import ScoreFn
from ..sdes import SDE, build_sde, sde_names
from ..training.checkpoint import CheckpointError
from ..training.data import TOY_DATASETS, digits, digits32, digits32_to_8, toy_2d
from ..training.state import load_score_model
from .digits_eval import digits_fid
from .metrics import sliced_wasserstein

__all__ = ["ANALYTIC_PROBLEMS", "Problem", "ProblemError", "load_problem"]

ANALYTIC_PROBLEMS: dict[str, Callable[[], GaussianMixture]] = {
    "gmm8": eight_gaussians,
    "gmm64": high_dim_mixture,
}


class ProblemError(ArgumentError):
    """A model name or path that names no problem we can build."""


@dataclass
class Problem:
    """A score function with the means to judge its samples."""

    name: str
    model: ScoreFn
    sde: SDE
    event_shape: tuple[int, ...]
    reference: Callable[[int, int], Tensor] | None  # (n, seed) -> data, model units
    mixture: GaussianMixture | None = None
    to_data_units: Callable[[Tensor], Tensor] = field(default=lambda x: x)
    from_data_units: Callable[[Tensor], Tensor] = field(default=lambda x: x)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str] | None:
        """Names of the classes ``cond`` may request (index ``len`` is the null label), or
        ``None`` for an unconditional model."""
        if self.mixture is not None:
            return [str(k) for k in range(self.mixture.num_components)]
        if not self.config.get("network", {}).get("num_classes"):
            return None
        data = self.config.get("data", {})
        count = self.config["network"]["num_classes"]
        names = list(data.get("class_names") or [str(k) for k in range(count)])
        if len(names) != count:  # a name past the last class would reach the null label
            raise CheckpointError(
                f"the checkpoint names {len(names)} classes but its network has {count}; "
                "it is damaged or was edited"
            )
        return names

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The shape of one sample as sampling returns it: the event, or a latent model's
        decoded image (its ``event_shape`` is the latent's)."""
        latent = latent_model_of(self.model)
        return tuple(self.event_shape if latent is None else latent.image_shape)

    @property
    def is_digits(self) -> bool:
        """8x8 digits, or the 32x32 digits (judged mapped back to 8x8)."""
        name = self.config.get("data", {}).get("name")
        return tuple(self.event_shape) == (1, 8, 8) or name == "digits32"

    @property
    def metric_name(self) -> str:
        return "digits-FID" if self.is_digits else "sliced-W2"

    def quality(self, x: Tensor, seed: int = 0) -> float:
        """digits-FID for 8x8 digits, else sliced W2 to fresh reference samples."""

        if self.reference is None:
            return float("nan")
        real = self.reference(len(x), seed + 1)
        x = x.detach().float().cpu()
        if self.is_digits:
            small = [digits32_to_8(v) if v.shape[-1] == 32 else v for v in (x.clamp(-1, 1), real)]
            return digits_fid(*small)
        generator = seeded_generator(seed)
        return sliced_wasserstein(x.flatten(1), real.flatten(1).float(), generator=generator)


def _analytic(name: str, sde_name: str) -> Problem:
    mixture = ANALYTIC_PROBLEMS[name]()
    sde = build_sde(sde_name)

    def reference(n: int, seed: int) -> Tensor:
        return mixture.sample(n, generator=seeded_generator(seed))

    return Problem(
        name,
        mixture.score_fn(sde),
        sde,
        (mixture.dim,),
        reference,
        mixture,
        config={"problem": name, "sde": sde_name, "mixture": repr(mixture)},
    )


def _reference_data(data: dict[str, Any]) -> Callable[[int, int], Tensor] | None:

    name = data.get("name")
    if name in ("digits", "digits32"):
        test = (digits if name == "digits" else digits32)("test").x
        return lambda n, seed: test
    if name in TOY_DATASETS:
        scale, shift = data.get("scale", 1.0), data.get("shift", 0.0)
        return lambda n, seed: (toy_2d(name, n, seed=1000 + seed) - shift) / scale
    return None


def _trained(name: str, path: Path | None, device, dtype) -> Problem:

    model, config = load_score_model(path, device=device) if path else load_pretrained(name, device)
    model = model.to(dtype)
    data = config.get("data", {})
    scale, shift = float(data.get("scale", 1.0)), float(data.get("shift", 0.0))
    problem = Problem(
        name,
        model,
        model.sde,
        tuple(data.get("event_shape", ())),
        _reference_data(data),
        to_data_units=lambda x: x * scale + shift,
        from_data_units=lambda x: (x - shift) / scale,
        config=config,
    )
    _ = problem.class_names  # checked as it loads: names that do not match are a damaged file
    return problem


def load_problem(
    spec: str,
    *,
    sde: str = "edm",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Problem:
    """Resolve ``spec``: an analytic name, a shipped model, or a checkpoint path.

    ``sde`` (a registered SDE's name: ``edm``, ``vp``, ...) applies to analytic problems
    only; trained models carry their SDE in their config.
    """

    if spec in ANALYTIC_PROBLEMS:
        if sde not in sde_names():
            raise ProblemError(f"unknown SDE {sde!r}; choose one of {', '.join(sde_names())}")
        return _analytic(spec, sde)
    if spec in available():
        return _trained(spec, None, device, dtype)
    path = Path(spec)
    if path.suffix == ".safetensors" or path.exists() or "/" in spec:
        return _trained(path.stem, path, device, dtype)
    names = [*ANALYTIC_PROBLEMS, *available()]
    raise ProblemError(
        f"unknown model {spec!r}: not a checkpoint path nor one of {', '.join(names)}"
    )
