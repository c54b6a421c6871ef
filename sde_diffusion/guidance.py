"""Guidance as model wrappers: classifier-free and classifier guidance.

Both wrap a model (``model(x, t, cond)`` with a ``prediction``) and are models
themselves, so every registered solver runs them unchanged, and both report the
network passes each call costs (``passes_per_call``, read by the solver's process
after every call) beside the NFE.

**Classifier-free guidance** (Ho & Salimans 2022), written on the denoiser:

    D_w(x, c) = D(x, ∅) + w (D(x, c) − D(x, ∅))

``w = 1`` is the conditional model, ``w = 0`` the unconditional one, ``w > 1``
pushes away from the unconditional prediction.  Ho & Salimans write
``(1 + w') ε(x, c) − w' ε(x, ∅)``: their ``w'`` is ``w − 1``.  Every prediction kind
is affine in ``(x, ε)`` with the same ``x`` coefficient for both terms, so
combining the model's own prediction is the same as combining denoisers, noise
predictions or scores.  The two evaluations run as one network call on a batch of
``2B``.  With ``interval = (lo, hi)`` guidance acts only where the noise level
``ν = σ/α`` lies in ``[lo, hi]`` (Kynkäänniemi et al. 2024); elsewhere the call is
the conditional model alone, one network pass.

Variants of the combination, each an option of :class:`ClassifierFreeGuidance` and
composable with the interval (costs stay two network passes a call):

- ``rescale = φ`` (Lin et al. 2024, diffusers' ``guidance_rescale``): on the noise
  prediction, ``ε_r = ε_w · std(ε_c)/std(ε_w)`` per sample, then ``φ ε_r + (1 − φ) ε_w``.
- ``apg = APG(eta, norm_threshold, momentum)`` (Sadat et al. 2025, adaptive projected
  guidance): on the denoiser, the update ``Δ = D_c − D_∅`` (with momentum
  ``Δ ← Δ + β Δ_prev``, clipped to norm ``r``) is split into its part parallel to ``D_c``
  and the rest; ``D = D_c + (w − 1)(Δ_⊥ + η Δ_∥)``.
- ``zero_star=True`` (Fan et al. 2025, CFG-Zero*): the unconditional noise prediction is
  first scaled by ``s* = ⟨ε_c, ε_∅⟩/‖ε_∅‖²`` per sample: ``ε = s* ε_∅ + w (ε_c − s* ε_∅)``.
- ``guide = model`` (Karras et al. 2024, autoguidance): the second branch is a weaker
  model of the same condition (an early checkpoint, a smaller network) instead of the
  unconditional one: ``D = D_guide(x, c) + w (D(x, c) − D_guide(x, c))``; two networks,
  so two passes that cannot share a batch.

**Classifier guidance** (Dhariwal & Nichol 2021; Song et al. 2021, eq. 48):
``∇ log p_w(x | c) = ∇ log p_t(x) + w ∇_x log p(c | x, t)`` with the gradient of any
differentiable classifier ``log_prob(x, t, c) -> (B,)``.  It predicts ``score``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import ArgumentError
from .models import Cond, as_model
from .parametrization import convert
from .sdes import SDE, append_dims


@dataclass(frozen=True)
class APG:
    """Adaptive projected guidance (Sadat et al. 2025): ``eta`` weighs the part of the
    update parallel to the conditional denoiser (0 drops it: what oversaturates),
    ``norm_threshold`` clips the update's norm per sample (0: no clipping), ``momentum``
    ``β`` adds ``β`` times the previous step's update (0: none; the paper uses −0.5)."""

    eta: float = 0.0
    norm_threshold: float = 0.0
    momentum: float = 0.0

    def __post_init__(self):
        if not (0.0 <= self.eta <= 1.0 and 0.0 <= self.norm_threshold <= 1e6):
            raise ArgumentError(
                f"APG needs eta in [0, 1] and norm_threshold in [0, 1e6], got {self.eta!r} "
                f"and {self.norm_threshold!r}"
            )
        if not -1.0 < self.momentum <= 1.0:
            raise ArgumentError(f"APG momentum must lie in (-1, 1], got {self.momentum!r}")


def _flat_dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).flatten(1).sum(1)


__all__ = ["APG", "ClassifierFreeGuidance", "ClassifierGuidance", "null_condition"]


def null_condition(cond: Cond, null: Any) -> Cond:
    """The "no condition" input matching ``cond``: ``null`` is a value (a label such as
    ``num_classes``), a tensor that broadcasts to one row, a dict of those, or a
    function of ``cond``."""
    if callable(null):
        return null(cond)
    if isinstance(cond, dict):
        return {
            k: null_condition(v, null[k] if isinstance(null, dict) else null)
            for k, v in cond.items()
        }
    if isinstance(null, Tensor):
        return null.to(cond).expand_as(cond)
    return torch.full_like(cond, null)


MAX_SCALE = 1000.0  # published scales are 1-30; far beyond, float32 predictions overflow


def _finite_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ArgumentError(f"the guidance scale must be a number, got {scale!r}")
    if not abs(scale) <= MAX_SCALE:
        raise ArgumentError(
            f"the guidance scale must be a number in [-{MAX_SCALE:g}, {MAX_SCALE:g}], got {scale!r}"
        )
    return float(scale)


def _concat(a: Cond, b: Cond) -> Cond:
    if isinstance(a, dict):
        return {k: torch.cat([a[k], b[k]]) for k in a}
    return torch.cat([a, b])


class ClassifierFreeGuidance:
    """``D(x, ∅) + scale (D(x, c) − D(x, ∅))`` of a model trained with condition dropout.

    ``null`` says what "no condition" is for the model (see :func:`null_condition`;
    for our networks and the analytic mixture it is the label ``num_classes``).
    ``interval = (lo, hi)`` limits guidance to noise levels ``ν = σ/α`` in
    ``[lo, hi]`` of ``sde`` (needed then), judged per sample, so solvers that give each
    sample its own time (the adaptive ones) stay batch-free; a call with no sample inside
    makes one conditional pass.
    """

    def __init__(
        self,
        model: Any,
        scale: float,
        null: Any,
        *,
        interval: tuple[float, float] | None = None,
        sde: SDE | None = None,
        rescale: float = 0.0,
        apg: APG | None = None,
        zero_star: bool = False,
        guide: Any = None,
    ):
        self.model = as_model(model)
        self.prediction = self.model.prediction
        self.scale, self.null = _finite_scale(scale), null
        if not 0.0 <= rescale <= 1.0:
            raise ArgumentError(f"the guidance rescale must lie in [0, 1], got {rescale!r}")
        if apg is not None and not isinstance(apg, APG):
            raise ArgumentError(f"apg must be an APG(eta, norm_threshold, momentum), got {apg!r}")
        if (rescale or apg is not None or zero_star) and sde is None:
            raise ArgumentError("rescale, apg and zero_star need the sde (to convert predictions)")
        self.rescale, self.apg, self.zero_star = float(rescale), apg, bool(zero_star)
        self.guide = None if guide is None else as_model(guide)
        if self.guide is not None and self.guide.prediction != self.prediction:
            raise ArgumentError(
                f"the guide predicts {self.guide.prediction!r} and the model "
                f"{self.prediction!r}: autoguidance needs two models of one parametrisation"
            )
        self._momentum: tuple[Tensor, Tensor] | None = None  # (t, previous update) for APG
        if interval is not None:
            lo, hi = map(float, interval)
            if not 0 <= lo < hi:
                raise ArgumentError(f"a guidance interval needs 0 <= lo < hi, got {interval!r}")
            if sde is None:
                raise ArgumentError("a guidance interval needs the sde (to read noise levels)")
            interval = (lo, hi)
        self.interval, self.sde = interval, sde
        self.passes_per_call = 2
        self.unconditional: Tensor | None = None
        """The unconditional prediction of the last call (``None``: it made none), which
        CFG++ samplers read through ``ReverseProcess.denoise_guided``."""
        self.keep_unconditional = False
        """Run the unconditional branch even at scale 1 (CFG++ samplers set it per call)."""

    def _inside(self, t: Tensor) -> Tensor | None:
        """Per sample, whether its noise level lies in the interval (``None``: no interval)."""
        if self.interval is None:
            return None
        nu = self.sde.sigma(t) / self.sde.alpha(t)
        return (nu >= self.interval[0]) & (nu <= self.interval[1])

    def __call__(self, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        if cond is None:
            raise ArgumentError("classifier-free guidance needs cond (the condition to guide to)")
        inside = self._inside(t)
        self.unconditional = None
        plain = self.scale == 1.0 and not self.keep_unconditional
        if plain or (inside is not None and not bool(inside.any())):  # one read
            self.passes_per_call = 1
            return self.model(x, t, cond)
        self.passes_per_call = 2
        if self.guide is not None:  # two networks: two calls
            conditional, unconditional = self.model(x, t, cond), self.guide(x, t, cond)
        else:
            both = self.model(
                torch.cat([x, x]), torch.cat([t, t]), _concat(cond, null_condition(cond, self.null))
            )
            conditional, unconditional = both.chunk(2)
        guided = self._combine(conditional, unconditional, x, t)
        if inside is None:
            self.unconditional = unconditional
            return guided
        inside = append_dims(inside, x.ndim)
        self.unconditional = torch.where(inside, unconditional, conditional)
        return torch.where(inside, guided, conditional)

    def _combine(self, conditional: Tensor, unconditional: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """The guided prediction of the two branches (the model's own kind)."""
        if not (self.rescale or self.apg or self.zero_star):
            return torch.lerp(unconditional, conditional, self.scale)

        def to(kind, value, source=self.prediction):
            return convert(value, x, t, self.sde, source, kind)

        if self.apg is not None:
            d_c, d_u = to("x0", conditional), to("x0", unconditional)
            guided = to(self.prediction, self._projected(d_c, d_c - d_u, t), "x0")
        elif self.zero_star:
            e_c, e_u = to("eps", conditional), to("eps", unconditional)
            scale = _flat_dot(e_c, e_u) / _flat_dot(e_u, e_u).clamp_min(1e-12)
            e_u = e_u * append_dims(scale, x.ndim)
            guided = to(self.prediction, torch.lerp(e_u, e_c, self.scale), "eps")
        else:
            guided = torch.lerp(unconditional, conditional, self.scale)
        if self.rescale:
            e_c, e_w = to("eps", conditional), to("eps", guided)
            ratio = e_c.flatten(1).std(1) / e_w.flatten(1).std(1).clamp_min(1e-12)
            e_r = e_w * append_dims(ratio, x.ndim)
            guided = to(self.prediction, torch.lerp(e_w, e_r, self.rescale), "eps")
        return guided

    def _projected(self, d_c: Tensor, update: Tensor, t: Tensor) -> Tensor:
        """APG's denoiser ``D_c + (w − 1)(Δ_⊥ + η Δ_∥)`` for the update ``Δ = D_c − D_∅``."""
        apg = self.apg
        if apg.momentum:
            previous = self._momentum
            if previous is not None and previous[1].shape == update.shape:
                # a sample whose time went up began a new solve: nothing to carry (no host read)
                fresh = append_dims(t > previous[0], update.ndim)
                update = update + apg.momentum * torch.where(fresh, 0.0, previous[1])
            self._momentum = (t.detach(), update.detach())
        if apg.norm_threshold > 0:
            norm = update.flatten(1).norm(dim=1).clamp_min(1e-12)
            factor = torch.clamp(apg.norm_threshold / norm, max=1.0)
            update = update * append_dims(factor, update.ndim)
        unit = d_c / append_dims(d_c.flatten(1).norm(dim=1).clamp_min(1e-12), d_c.ndim)
        parallel = unit * append_dims(_flat_dot(update, unit), d_c.ndim)
        return d_c + (self.scale - 1) * (update - parallel + apg.eta * parallel)

    def __repr__(self) -> str:
        window = f", interval={self.interval}" if self.interval else ""
        extras = "".join(
            f", {k}={v!r}"
            for k, v in (
                ("rescale", self.rescale),
                ("apg", self.apg),
                ("zero_star", self.zero_star),
            )
            if v
        )
        guide = f", guide={self.guide!r}" if self.guide is not None else ""
        return f"ClassifierFreeGuidance({self.model!r}, scale={self.scale}{window}{extras}{guide})"


class ClassifierGuidance:
    """``score(x, t) + scale ∇_x log p(c | x, t)`` with a differentiable classifier.

    ``log_prob(x, t, cond)`` returns the classifier's log-probability of ``cond``
    per sample, shape ``(B,)``.  ``model`` may be conditional or not
    (``model_cond=False`` calls it without the condition).  Costs one model pass
    and one classifier forward and backward pass per call.
    """

    prediction = "score"
    passes_per_call = 1

    def __init__(
        self,
        model: Any,
        log_prob: Callable[[Tensor, Tensor, Cond], Tensor],
        scale: float,
        sde: SDE,
        *,
        model_cond: bool = False,
    ):
        self.model, self.log_prob = as_model(model), log_prob
        self.scale, self.sde, self.model_cond = _finite_scale(scale), sde, model_cond

    def __call__(self, x: Tensor, t: Tensor, cond: Cond = None) -> Tensor:
        if cond is None:
            raise ArgumentError("classifier guidance needs cond (the class to guide to)")
        out = self.model(x, t, cond if self.model_cond else None)
        score = convert(out, x, t, self.sde, self.model.prediction, "score")
        with torch.enable_grad(), torch.inference_mode(False):
            x_in = x.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_prob(x_in, t.clone(), cond).sum(), x_in)
        return score + self.scale * grad.to(score.dtype)

    def __repr__(self) -> str:
        return f"ClassifierGuidance({self.model!r}, scale={self.scale})"
