"""Students of a teacher that sample in fewer steps: progressive and guided distillation.

**Progressive distillation** (Salimans & Ho 2022, algorithm 2): the teacher samples with
deterministic DDIM on a grid of ``2N`` steps ``t_0 = T > ... > t_2N``; the student learns
to take the teacher's two steps ``t_2i -> t_2i+1 -> t_2i+2`` in one DDIM step.  With
``z_t = alpha_t x_0 + sigma_t eps`` and the teacher's two steps ending at ``z_s``, the
student's ``x0`` prediction at ``(z_t, t)`` must be

    x~ = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t),

the value that makes one DDIM step from ``t`` land on ``z_s`` exactly.  The loss is
``max(SNR_t, 1) ||x̂_0 - x~||^2`` (the paper's truncated-SNR weighting).  Each round
halves the steps; the student of a round is the teacher of the next.

**Guided distillation** (Meng et al. 2023, stage one): a student that takes the guidance
scale ``w`` as an input learns the teacher's classifier-free-guided prediction
``x̂_u + w (x̂_c - x̂_u)`` in one pass, ``w`` drawn uniformly from a range; then
progressive rounds run on it with ``w`` drawn the same way.  ``w`` reaches the network as
the vector condition :func:`guidance_features` (the U-Net's ``cond_dim``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..errors import ArgumentError
from ..networks import build_network
from ..parametrization import ScoreModel, convert
from ..sdes import SDE, append_dims
from ..timesteps import timesteps
from .losses import DenoisingScoreMatching
from .objectives import Objective

__all__ = [
    "GUIDANCE_FEATURES",
    "GuidanceDistillation",
    "GuidedStudent",
    "ProgressiveDistillation",
    "ddim_step",
    "guidance_features",
    "progressive_grids",
    "progressive_target",
    "student_of",
]

GUIDANCE_FEATURES = 8  # the vector condition's width: cos and sin of w at 4 frequencies


def guidance_features(w: Tensor, w_max: float) -> Tensor:
    """``(B,) -> (B, 8)``: ``cos(pi k w / w_max), sin(pi k w / w_max)`` for ``k = 1..4``
    (a Fourier embedding of the guidance scale, as Meng et al. embed ``w``)."""
    k = torch.arange(1, GUIDANCE_FEATURES // 2 + 1, device=w.device, dtype=w.dtype)
    angles = math.pi * w[:, None] * k / w_max
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def progressive_grids(
    sde: SDE, teacher_steps: int, student_steps: int, schedule: str = "karras"
) -> list[Tensor]:
    """The teacher's DDIM grid of every round, ``teacher_steps`` halving down to
    ``student_steps``: ``timesteps(sde, teacher_steps, schedule, to_zero=True)`` and every
    other time of it, round by round (``teacher_steps = student_steps * 2^rounds``)."""
    rounds = math.log2(teacher_steps / student_steps) if student_steps >= 1 else 0.5
    if teacher_steps < 2 or rounds < 1 or rounds != int(rounds):
        raise ArgumentError(
            f"the teacher's {teacher_steps} steps must be the student's {student_steps} times "
            "a power of two (2, 4, 8, ...): each round halves the steps"
        )
    grid = timesteps(sde, teacher_steps, schedule, to_zero=True)
    return [grid[:: 2**r] for r in range(int(rounds))]


def student_of(
    teacher: ScoreModel, *, parametrization: str | None = None, guidance_input: bool = False
) -> ScoreModel:
    """A trainable student that starts as ``teacher``'s network (a copy of its weights),
    optionally re-parametrised (``"consistency"``) or taking the guidance scale as a vector
    condition of :data:`GUIDANCE_FEATURES` (its map starts at zero: the teacher exactly)."""
    config = dict(getattr(teacher.net, "config", None) or {})
    if not config:
        raise ArgumentError(
            "a student copies one of sde-diffusion's networks; the teacher has none"
        )
    if guidance_input:
        if not config.get("num_classes"):
            raise ArgumentError(
                "guided distillation needs a class-conditional teacher (trained with "
                "--conditional, as digits-cond is)"
            )
        config["cond_dim"] = GUIDANCE_FEATURES
    net = build_network(config)
    missing, unexpected = net.load_state_dict(teacher.net.state_dict(), strict=False)
    if unexpected or any(not k.startswith("cond.vector") for k in missing):
        raise ArgumentError(
            f"the student cannot hold the teacher's weights ({missing, unexpected})"
        )
    if guidance_input:
        torch.nn.init.zeros_(net.cond.vector.weight)
        torch.nn.init.zeros_(net.cond.vector.bias)
    return ScoreModel(
        net, teacher.sde, parametrization or teacher.parametrization, teacher.sigma_data
    ).to(next(teacher.parameters()).device)


class GuidedStudent(torch.nn.Module):
    """A guided student as a model of labels alone: ``model(x, t, labels)`` runs ``student``
    with guidance scale ``w`` (one pass, where classifier-free guidance takes two)."""

    def __init__(self, student: ScoreModel, w: float, w_max: float):
        super().__init__()
        self.student, self.w, self.w_max = student, float(w), float(w_max)

    @property
    def prediction(self) -> str:
        return self.student.prediction

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        w = torch.full((x.shape[0],), self.w, device=x.device, dtype=x.dtype)
        return self.student(x, t, {"labels": cond, "vector": guidance_features(w, self.w_max)})


def _coefficients(sde: SDE, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    return (append_dims(sde.alpha(t).to(x), x.ndim), append_dims(sde.sigma(t).to(x), x.ndim))


def ddim_step(model, sde: SDE, x: Tensor, t: Tensor, s: Tensor, cond: Any = None) -> Tensor:
    """One deterministic DDIM step ``t -> s`` with per-sample times ``(B,)``:
    ``x_s = alpha_s x̂_0 + sigma_s (x - alpha_t x̂_0) / sigma_t``."""
    a_t, s_t = _coefficients(sde, t, x)
    a_s, s_s = _coefficients(sde, s, x)
    x0 = convert(model(x, t.to(x.dtype), cond), x, t.to(x.dtype), sde, model.prediction, "x0")
    return a_s * x0 + s_s * (x - a_t * x0) / s_t


def progressive_target(sde: SDE, z_t: Tensor, z_s: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """The ``x0`` whose DDIM step ``(z_t, t) -> s`` lands on ``z_s`` (the module's ``x~``)."""
    a_t, s_t = _coefficients(sde, t, z_t)
    a_s, s_s = _coefficients(sde, s, z_t)
    ratio = s_s / s_t
    return (z_s - ratio * z_t) / (a_s - ratio * a_t)


class _GuidanceInput:
    """Draws ``w ~ U[w_min, w_max]`` and adds its features to the labels' condition."""

    def __init__(self, guidance: tuple[float, float] | None):
        if guidance is not None and not 0 <= guidance[0] <= guidance[1] < math.inf:
            raise ArgumentError(f"a guidance range needs 0 <= w_min <= w_max, got {guidance}")
        self.guidance = guidance

    def draw_w(self, size: int, generator: torch.Generator, like: Tensor) -> dict[str, Tensor]:
        if self.guidance is None:
            return {}
        lo, hi = self.guidance
        u = torch.rand(size, generator=generator, device=like.device, dtype=torch.float64)
        return {"w": lo + (hi - lo) * u}

    def student_cond(self, cond: Any, draws: dict, like: Tensor) -> Any:
        if self.guidance is None:
            return cond
        return {"labels": cond, "vector": guidance_features(draws["w"].to(like), self.guidance[1])}


class ProgressiveDistillation(_GuidanceInput, Objective):
    """One round of progressive distillation: ``teacher`` on the DDIM grid ``teacher_grid``
    (``2N + 1`` decreasing times), the student on every other time (``N`` steps).

    ``guidance=(w_min, w_max)``: the teacher and the student both take ``w`` as an input
    (the second stage of guided distillation).  ``record`` is metadata kept in the
    checkpoint (the teacher's name, the round).
    """

    method = "progressive"

    def __init__(
        self,
        teacher,
        sde: SDE,
        teacher_grid: Tensor,
        *,
        guidance: tuple[float, float] | None = None,
        record: dict[str, Any] | None = None,
    ):
        super().__init__(guidance)
        grid = torch.as_tensor(teacher_grid, dtype=torch.float64)
        if grid.ndim != 1 or len(grid) < 3 or len(grid) % 2 == 0 or bool((grid.diff() >= 0).any()):
            raise ArgumentError(
                "a progressive round needs an even number of decreasing teacher steps (2N + 1 "
                f"times), got {len(grid) - 1} steps"
            )
        self.teacher, self.sde, self.grid = teacher, sde, grid
        self.record = dict(record or {})

    @property
    def student_steps(self) -> int:
        return (len(self.grid) - 1) // 2

    def draw(self, size, generator, step, like):
        i = torch.randint(self.student_steps, (size,), generator=generator, device=like.device)
        eps = torch.randn(
            (size, *like.shape[1:]), generator=generator, device=like.device, dtype=like.dtype
        )
        return {"i": i, "eps": eps} | self.draw_w(size, generator, like)

    def loss(self, model, x0, draws, cond):
        grid, i = self.grid.to(x0.device), draws["i"]
        t, u, s = grid[2 * i], grid[2 * i + 1], grid[2 * i + 2]
        a_t, s_t = _coefficients(self.sde, t, x0)
        z_t = a_t * x0 + s_t * draws["eps"]
        cond = self.student_cond(cond, draws, x0)
        with torch.no_grad():
            z_u = ddim_step(self.teacher, self.sde, z_t, t, u, cond)
            z_s = ddim_step(self.teacher, self.sde, z_u, u, s, cond)
            target = progressive_target(self.sde, z_t, z_s, t, s)
        tt = t.to(x0.dtype)
        x0_hat = convert(model(z_t, tt, cond), z_t, tt, self.sde, model.prediction, "x0")
        weight = (a_t / s_t).flatten(1)[:, 0].square().clamp(min=1.0)
        return weight * (x0_hat - target).flatten(1).pow(2).sum(1)

    def config(self):
        found = {"method": self.method, "teacher_grid": self.grid.tolist(), **self.record}
        return found | ({"guidance": list(self.guidance)} if self.guidance else {})

    def sampling(self):
        return {"solver": "ddim", "solver_options": {}, "times": self.grid[::2].tolist()}


class GuidanceDistillation(_GuidanceInput, Objective):
    """Stage one of guided distillation: the student's prediction at ``(x_t, t, label, w)``
    regresses onto the ``teacher``'s guided ``x̂_u + w (x̂_c - x̂_u)`` (``null`` is the
    teacher's null label), times drawn as EDM's training draws them, EDM's weighting."""

    method = "guided"

    def __init__(
        self,
        teacher,
        sde: SDE,
        null: int,
        guidance: tuple[float, float],
        *,
        sigma_data: float = 0.5,
        record: dict[str, Any] | None = None,
    ):
        super().__init__(guidance)
        self.teacher, self.sde, self.null = teacher, sde, null
        self.times = DenoisingScoreMatching(sde, "edm")
        self.sigma_data = sigma_data
        self.record = dict(record or {})

    def draw(self, size, generator, step, like):
        t = self.times.sample_times(size, generator=generator, device=like.device)
        eps = torch.randn(
            (size, *like.shape[1:]), generator=generator, device=like.device, dtype=like.dtype
        )
        return {"t": t, "eps": eps} | self.draw_w(size, generator, like)

    def loss(self, model, x0, draws, cond):
        if cond is None:
            raise ArgumentError("guided distillation needs labelled data for its teacher")
        t = draws["t"]
        a_t, s_t = _coefficients(self.sde, t, x0)
        x_t = a_t * x0 + s_t * draws["eps"]
        tt = t.to(x0.dtype)
        with torch.no_grad():
            both = self.teacher(torch.cat([x_t, x_t]), torch.cat([tt, tt]), torch.cat(
                [cond, torch.full_like(cond, self.null)]
            ))  # fmt: skip
            both = convert(both, torch.cat([x_t, x_t]), torch.cat([tt, tt]), self.sde,
                           self.teacher.prediction, "x0")  # fmt: skip
            x0_c, x0_u = both.chunk(2)
            target = x0_u + append_dims(draws["w"].to(x0), x0.ndim) * (x0_c - x0_u)
        student = model(x_t, tt, self.student_cond(cond, draws, x0))
        x0_hat = convert(student, x_t, tt, self.sde, model.prediction, "x0")
        nu = (s_t / a_t).flatten(1)[:, 0]
        weight = (nu**2 + self.sigma_data**2) / (nu * self.sigma_data) ** 2
        return weight * (x0_hat - target).flatten(1).pow(2).sum(1)

    def config(self):
        return {"method": self.method, "guidance": list(self.guidance), **self.record}
