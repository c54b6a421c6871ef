"""Consistency models: distillation from a teacher's PF-ODE, or training without one.

A consistency function maps every point of a PF-ODE trajectory to its start,
``f(x_t, t) = x_{t_min}``, with ``f(x, t_min) = x`` (the ``"consistency"``
parametrisation keeps that exactly).  Training compares the network at two adjacent
levels ``nu_n < nu_{n+1}`` of a Karras discretisation of the noise-to-signal ratio
``nu = sigma / alpha`` (Song et al. 2023, algorithms 2 and 3):

    L = lambda_n d(f_theta(x_{n+1}, t_{n+1}), f_theta-(x̂_n, t_n)),  lambda_n = 1/(nu_{n+1} - nu_n)

with ``x_{n+1} = alpha_{n+1} x_0 + sigma_{n+1} eps`` and

- **distillation** (CD): ``x̂_n`` one step of the teacher's PF-ODE from ``t_{n+1}`` to
  ``t_n`` by any registered deterministic solver;
- **training** (CT): ``x̂_n = alpha_n x_0 + sigma_n eps``, the same noise (the PF-ODE step
  with the one-sample score estimate).

``theta-`` is an EMA of the weights (``target_ema``; 0, the default, is iCT's
stop-gradient copy, Song & Dhariwal 2023).  ``d`` is the squared L2 distance or iCT's
pseudo-Huber ``sqrt(||x - y||^2 + c^2) - c`` with ``c = 0.00054 sqrt(dim)``.  The level
count follows iCT's curriculum ``N(k) = min(s0 2^floor(k / K'), s1) + 1`` over the run's
``K`` steps, and the level index is drawn with iCT's log-normal weights (or uniformly,
as the original consistency models draw it: ``level_weights="uniform"``).  A batch uses
``groups`` levels (each for a slice of the batch) so that the teacher's solver steps one
grid per group.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ArgumentError
from ..parametrization import convert
from ..sampling import solve
from ..sdes import SDE, append_dims
from ..solvers.registry import get_solver
from .checkpoint import prefixed
from .objectives import Objective

__all__ = [
    "METRICS",
    "ConsistencyObjective",
    "consistency_times",
    "curriculum",
    "karras_levels",
    "level_probabilities",
]

METRICS = ("pseudo-huber", "l2")
LEVEL_WEIGHTS = ("lognormal", "uniform")


def karras_levels(sde: SDE, count: int, rho: float = 7.0) -> tuple[Tensor, Tensor]:
    """``count`` increasing noise levels ``nu`` from ``nu(t_min)`` to ``nu(T)``, spaced as
    Karras et al. (2022, eq. 5) space them, and their times: ``(nu, t)``, float64."""
    nu_min = math.exp(-float(sde.log_snr(sde.t_min)))
    nu_max = math.exp(-float(sde.log_snr(sde.T)))
    u = torch.linspace(0, 1, count, dtype=torch.float64)
    nu = (nu_min ** (1 / rho) + u * (nu_max ** (1 / rho) - nu_min ** (1 / rho))) ** rho
    t = sde.t_from_log_snr(-nu.log())
    t[0], t[-1] = float(sde.t_min), float(sde.T)
    return nu, t


def curriculum(step: int, total: int, s0: int, s1: int) -> int:
    """iCT's level count at training step ``step`` of ``total``: ``s0`` intervals doubling
    in equal stages up to ``s1``; returns the number of levels (intervals + 1)."""
    stages = int(math.log2(s1 / s0)) + 1
    per_stage = max(total // stages, 1)
    return min(s0 * 2 ** (step // per_stage), s1) + 1


def level_probabilities(nu: Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> Tensor:
    """iCT's weights of the intervals ``[nu_n, nu_{n+1}]``: the mass a log-normal
    ``log nu ~ N(p_mean, p_std^2)`` puts on each."""
    cdf = torch.special.erf((nu.log() - p_mean) / (math.sqrt(2) * p_std))
    mass = cdf.diff()
    return mass / mass.sum()


def consistency_times(sde: SDE, steps: int) -> list[float]:
    """The times of ``steps``-step consistency sampling (Song et al. 2023, algorithm 1):
    ``T``, then ``steps - 1`` levels ``nu`` geometric from 0.8 down to 0.2 (their geometric
    mean, 0.4, for two steps), then 0.  Chosen on the distilled digits student, where the
    two-step digits-FID is 11.2 at nu = 0.4 against 13.2 at the 0.8 the paper used for
    CIFAR-10 and 21.9 at 1.6 (benchmarks/distillation.py)."""
    if steps < 1:
        raise ArgumentError(f"consistency sampling needs steps >= 1, got {steps}")
    if steps == 2:
        mids = torch.tensor([0.4], dtype=torch.float64)
    else:
        mids = torch.logspace(math.log10(0.8), math.log10(0.2), steps - 1, dtype=torch.float64)
    times = sde.t_from_log_snr(-mids.log()).tolist() if steps > 1 else []
    return [float(sde.T), *times, 0.0]


class ConsistencyObjective(Objective):
    """Consistency distillation (``teacher`` given) or training (``teacher=None``) of
    ``student`` (a ``ScoreModel``, ideally ``"consistency"``-parametrised) over ``total``
    steps; see the module docstring for the settings."""

    def __init__(
        self,
        student,
        total: int,
        *,
        teacher=None,
        teacher_solver: str = "heun",
        s0: int = 10,
        s1: int = 1280,
        rho: float = 7.0,
        metric: str = "pseudo-huber",
        target_ema: float = 0.0,
        level_weights: str = "lognormal",
        p_mean: float = -1.1,
        p_std: float = 2.0,
        groups: int = 8,
        sampling_steps: int = 1,
        record: dict[str, Any] | None = None,
    ):
        if level_weights not in LEVEL_WEIGHTS:
            raise ArgumentError(
                f"unknown level weights {level_weights!r}; choose {', '.join(LEVEL_WEIGHTS)}"
            )
        if metric not in METRICS:
            raise ArgumentError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        if not (1 <= s0 <= s1) or not 0 <= target_ema < 1 or groups < 1 or total < 1:
            raise ArgumentError(
                f"need 1 <= s0 <= s1, 0 <= target_ema < 1, groups >= 1 and total >= 1; got "
                f"s0={s0}, s1={s1}, target_ema={target_ema}, groups={groups}, total={total}"
            )
        self.sde, self.total, self.teacher = student.sde, total, teacher
        self.solver = get_solver(teacher_solver) if teacher is not None else None
        if self.solver is not None and (self.solver.stochastic or self.solver.adaptive):
            raise ArgumentError(
                f"the teacher's ODE step needs a deterministic fixed-grid solver; "
                f"{teacher_solver} is {'stochastic' if self.solver.stochastic else 'adaptive'}"
            )
        self.method = "consistency-distillation" if teacher is not None else "consistency-training"
        self.s0, self.s1, self.rho, self.metric = s0, s1, rho, metric
        self.p_mean, self.p_std, self.groups = p_mean, p_std, groups
        self.level_weights = level_weights
        self.target_ema, self.sampling_steps = target_ema, sampling_steps
        self.record = dict(record or {})
        self.target = copy.deepcopy(student).requires_grad_(False) if target_ema else None
        self._levels: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    def levels(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(nu, t, probabilities)`` of the discretisation at training step ``step``."""
        count = curriculum(step, self.total, self.s0, self.s1)
        if count not in self._levels:
            nu, t = karras_levels(self.sde, count, self.rho)
            if self.level_weights == "uniform":  # Song et al. 2023: every interval alike
                probs = torch.full((count - 1,), 1 / (count - 1), dtype=torch.float64)
            else:
                probs = level_probabilities(nu, self.p_mean, self.p_std)
            self._levels[count] = (nu, t, probs)
        return self._levels[count]

    def draw(self, size, generator, step, like):
        nu, t, probs = (v.to(like.device) for v in self.levels(step))
        groups = min(self.groups, size)
        n = torch.multinomial(probs, groups, replacement=True, generator=generator)
        n = n.repeat_interleave(-(-size // groups))[:size]
        eps = torch.randn(
            (size, *like.shape[1:]), generator=generator, device=like.device, dtype=like.dtype
        )
        return {"n": n, "t": t[n], "t_next": t[n + 1], "nu": nu[n], "nu_next": nu[n + 1],
                "eps": eps}  # fmt: skip

    def loss(self, model, x0, draws, cond):
        t, t_next, eps = draws["t"], draws["t_next"], draws["eps"]
        x_next = self._at(t_next, x0, eps)
        with torch.no_grad():
            x_cur = self._at(t, x0, eps) if self.teacher is None else self._teacher_step(
                x_next, draws, cond
            )  # fmt: skip
            target = self._x0(self._target_model(model), x_cur, t, cond)
        pred = self._x0(model, x_next, t_next, cond)
        diff = (pred - target).flatten(1)
        if self.metric == "l2":
            distance = diff.pow(2).sum(1)
        else:
            c = 0.00054 * math.sqrt(diff.shape[1])
            distance = (diff.pow(2).sum(1) + c**2).sqrt() - c
        weight = 1 / (draws["nu_next"] - draws["nu"])
        return weight.to(distance) * distance

    def _at(self, t: Tensor, x0: Tensor, eps: Tensor) -> Tensor:
        alpha = append_dims(self.sde.alpha(t).to(x0), x0.ndim)
        return alpha * x0 + append_dims(self.sde.sigma(t).to(x0), x0.ndim) * eps

    def _x0(self, model, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        t = t.to(x.dtype)
        return convert(model(x, t, cond), x, t, self.sde, model.prediction, "x0")

    def _target_model(self, model):
        if self.target is None:  # iCT: the student's own weights, without their gradient
            return model
        return self.target.to(next(model.parameters()).device)

    def _teacher_step(self, x_next: Tensor, draws: dict, cond: Any) -> Tensor:
        """The teacher's solver from ``t_{n+1}`` to ``t_n``, one grid per level present."""
        x_cur = torch.empty_like(x_next)
        n = draws["n"]
        for level in torch.unique(n).tolist():  # at most ``groups`` levels: one read
            rows = (n == level).nonzero().flatten()
            first = int(rows[0])
            grid = torch.stack([draws["t_next"][first], draws["t"][first]]).cpu()
            part = None if cond is None else cond[rows]
            x_cur[rows] = solve(self.teacher, self.sde, x_next[rows], grid, self.solver,
                                cond=part).x  # fmt: skip
        return x_cur

    def after_step(self, net: nn.Module) -> None:
        if self.target is not None:
            with torch.no_grad():
                pairs = zip(self.target.net.parameters(), net.parameters(), strict=True)
                for mine, theirs in pairs:
                    mine.lerp_(theirs, 1 - self.target_ema)

    def state_tensors(self):
        if self.target is None:
            return {}
        return {f"target/{k}": v for k, v in self.target.net.state_dict().items()}

    def load_state(self, tensors):
        if self.target is not None:
            self.target.net.load_state_dict(prefixed(tensors, "target"))

    def config(self):
        settings = {"s0": self.s0, "s1": self.s1, "rho": self.rho, "metric": self.metric,
                    "target_ema": self.target_ema, "total": self.total,
                    "level_weights": self.level_weights,
                    "sampling_steps": self.sampling_steps}  # fmt: skip
        if self.solver is not None:
            settings["teacher_solver"] = self.solver.name
        return {"method": self.method, **settings, **self.record}

    def sampling(self):
        times = consistency_times(self.sde, self.sampling_steps)
        return {"solver": "consistency", "solver_options": {}, "times": times}
