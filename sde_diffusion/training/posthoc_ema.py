"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", section 3): choose the EMA length after training.

A *power-function EMA* with exponent ``gamma`` updates, at its ``t``-th update,

    theta_hat_t = beta_t theta_hat_{t-1} + (1 - beta_t) theta_t,   beta_t = (1 - 1/t)^(gamma+1),

so that ``t^(gamma+1) theta_hat_t = sum_{tau <= t} (tau^(gamma+1) - (tau-1)^(gamma+1)) theta_tau``
exactly: its weights over the training trajectory form the profile
``w_t(tau) = (tau^(gamma+1) - (tau-1)^(gamma+1)) / t^(gamma+1)``, a power function whose
standard deviation in units of the training length ``t`` (the EMA's relative length) is
``sigma_rel = ((gamma+1) / ((gamma+2)^2 (gamma+3)))^(1/2)``.

Training keeps two such averages (``sigma_rel`` 0.05 and 0.10 by default) and writes
snapshots of both every K steps.  Any other profile — another ``sigma_rel``, at any
step — is approximated by a linear combination of the snapshots' profiles, the
coefficients solving the least-squares problem ``G x = b`` with ``G_ij = <w_i, w_j>`` and
``b_i = <w_i, w_target>`` over the discrete steps; the reconstructed weights are the same
combination of the snapshots' weights.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ArgumentError
from ..parametrization import ScoreModel
from .checkpoint import CheckpointError, load_checkpoint, prefixed, save_checkpoint

__all__ = [
    "PowerEMA",
    "Snapshot",
    "export_posthoc",
    "gamma_from_sigma_rel",
    "posthoc_model",
    "profile",
    "reconstruct",
    "sigma_rel_from_gamma",
    "snapshot_dir",
    "snapshots",
    "solve_coefficients",
]

DEFAULT_SIGMA_RELS = (0.05, 0.10)


def sigma_rel_from_gamma(gamma: float) -> float:
    """The standard deviation of the power profile ``(gamma+1) tau^gamma`` on ``[0, 1]``."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def gamma_from_sigma_rel(sigma_rel: float) -> float:
    """The exponent whose profile has standard deviation ``sigma_rel``: the real
    root of ``gamma^3 + 7 gamma^2 + (16 - 1/s^2) gamma + (12 - 1/s^2) = 0`` (EDM2, eq. 3)."""
    if not 0 < sigma_rel < sigma_rel_from_gamma(0.0):
        raise ArgumentError(
            f"sigma_rel must lie in (0, {sigma_rel_from_gamma(0.0):.4f}) (the flat profile's), "
            f"got {sigma_rel}"
        )
    inv = 1 / sigma_rel**2
    roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def profile(gamma: float, step: int, length: int) -> np.ndarray:
    """The weights ``w_step(tau)`` of a power EMA after ``step`` updates, for
    ``tau = 1 .. length`` (zero after ``step``), float64."""
    tau = np.arange(1, length + 1, dtype=np.float64)
    # (tau/t)^(g+1) - ((tau-1)/t)^(g+1), computed in ratios (no overflow at large steps)
    w = (tau / step) ** (gamma + 1) - ((tau - 1) / step) ** (gamma + 1)
    w[step:] = 0.0
    return w


def solve_coefficients(
    sources: Sequence[tuple[float, int]], target: tuple[float, int]
) -> tuple[np.ndarray, float]:
    """Least-squares coefficients of ``sources`` (``(gamma, step)`` pairs) for ``target``,
    and the fit's relative residual ``||sum x_i w_i - w_target|| / ||w_target||``."""
    length = max(step for _, step in [*sources, target])
    basis = np.stack([profile(g, s, length) for g, s in sources])  # (K, length)
    goal = profile(*target, length)
    coeffs, *_ = np.linalg.lstsq(basis.T, goal, rcond=None)
    residual = np.linalg.norm(coeffs @ basis - goal) / np.linalg.norm(goal)
    return coeffs, float(residual)


class PowerEMA:
    """Power-function EMAs of ``params`` for several exponents, updated together."""

    def __init__(self, params: Iterable[Tensor], sigma_rels: Sequence[float] = DEFAULT_SIGMA_RELS):
        self.params = list(params)
        self.sigma_rels = tuple(float(s) for s in sigma_rels)
        self.gammas = tuple(gamma_from_sigma_rel(s) for s in self.sigma_rels)
        self.averages = [[p.detach().clone() for p in self.params] for _ in self.gammas]
        self.count = 0  # updates so far: the EMAs' t

    @torch.no_grad()
    def update(self) -> None:
        """One update with the current parameters (the first copies them)."""
        self.count += 1
        current = [p.detach() for p in self.params]
        for gamma, average in zip(self.gammas, self.averages, strict=True):
            beta = (1 - 1 / self.count) ** (gamma + 1)
            torch._foreach_lerp_(average, current, 1 - beta)

    def tensors(self, names: Sequence[str]) -> dict[str, Tensor]:
        """The averages as ``{index}/{name}`` (``index`` into ``sigma_rels``)."""
        return {
            f"{i}/{name}": value
            for i, average in enumerate(self.averages)
            for name, value in zip(names, average, strict=True)
        }

    def load(self, tensors: dict[str, Tensor], names: Sequence[str], count: int) -> None:
        for i, average in enumerate(self.averages):
            for name, value in zip(names, average, strict=True):
                value.copy_(tensors[f"{i}/{name}"])
        self.count = count

    def state(self) -> dict:
        return {"sigma_rels": list(self.sigma_rels), "count": self.count}


def snapshot_dir(checkpoint: str | Path) -> Path:
    """Where a run's snapshots live: ``NAME.phema/`` beside its checkpoint."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}.phema")


def save_snapshot(checkpoint: str | Path, ema: PowerEMA, names: Sequence[str], step: int) -> Path:
    """Write the current averages as ``NAME.phema/step00001000.safetensors``."""
    folder = snapshot_dir(checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step{step:08d}.safetensors"
    return save_checkpoint(path, ema.tensors(names), {"step": step, **ema.state()})


class Snapshot:
    """One snapshot file: the averages of every tracked ``sigma_rel`` after ``count`` updates."""

    def __init__(self, path: Path):
        self.path = path
        self.tensors, config = load_checkpoint(path, "cpu")
        try:
            self.step, self.count = int(config["step"]), int(config["count"])
            self.sigma_rels = [float(s) for s in config["sigma_rels"]]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path} is not a post-hoc EMA snapshot") from None

    def weights(self, index: int) -> dict[str, Tensor]:
        return prefixed(self.tensors, str(index))


def snapshots(checkpoint: str | Path) -> list[Snapshot]:
    """A run's snapshots in step order; none is a :class:`CheckpointError`."""
    folder = snapshot_dir(checkpoint)
    files = sorted(p for p in folder.glob("step*.safetensors") if re.fullmatch(r"step\d+", p.stem))
    if not files:
        raise CheckpointError(
            f"no post-hoc EMA snapshots in {folder}: train with --ema posthoc to write them"
        )
    return [Snapshot(p) for p in files]


def reconstruct(
    found: Sequence[Snapshot], sigma_rel: float, at: int | None = None
) -> tuple[dict[str, Tensor], float]:
    """The EMA of relative length ``sigma_rel`` after ``at`` updates (default: the last
    snapshot's), rebuilt from ``found``; returns the weights and the fit's relative residual."""
    at = max(s.count for s in found) if at is None else at
    usable = [s for s in found if s.count <= at]
    if not usable:
        raise ArgumentError(f"no snapshot at or before update {at}")
    sources = [(s, i) for s in usable for i in range(len(s.sigma_rels))]
    pairs = [(gamma_from_sigma_rel(s.sigma_rels[i]), s.count) for s, i in sources]
    coeffs, residual = solve_coefficients(pairs, (gamma_from_sigma_rel(sigma_rel), at))
    total: dict[str, Tensor] = {}
    for (snap, index), c in zip(sources, coeffs, strict=True):
        if c == 0.0:
            continue
        for name, value in snap.weights(index).items():
            term = value.double() * float(c)
            total[name] = total[name] + term if name in total else term
    reference = usable[-1].weights(0)
    return {k: v.to(reference[k].dtype) for k, v in total.items()}, residual


def posthoc_model(
    base: ScoreModel, found: Sequence[Snapshot], sigma_rel: float, at: int | None = None
) -> tuple[ScoreModel, float]:
    """A copy of ``base`` (the run's model, ``load_score_model(run)``) with the post-hoc
    EMA of length ``sigma_rel`` rebuilt from ``found`` as weights: ``(model, residual)``.
    The network's buffers stay ``base``'s."""
    weights, residual = reconstruct(found, sigma_rel, at)
    unmatched = set(weights) ^ {name for name, _ in base.net.named_parameters()}
    if unmatched:
        raise CheckpointError(
            f"the snapshots in {found[0].path.parent} do not fit the run's network (e.g. "
            f"{sorted(unmatched)[0]})"
        )
    model = copy.deepcopy(base)
    model.net.load_state_dict({**model.net.state_dict(), **weights})
    return model, residual


def export_posthoc(model: ScoreModel, config: dict, path: str | Path, sigma_rel: float) -> Path:
    """Write ``model`` as an exported model (``ema/*`` and the run's config), recording
    the post-hoc EMA length it was built with."""
    tensors = {f"ema/{k}": v for k, v in model.net.state_dict().items()}
    keep = ("network", "sde", "parametrization", "sigma_data", "data", "train", "step")
    meta = {k: config[k] for k in keep if k in config} | {"posthoc_sigma_rel": sigma_rel}
    return save_checkpoint(path, tensors, meta)
