"""Noise sources for stochastic samplers.

A sampler asks for a standard normal tied to its interval, ``noise(x, t0, t1)``,
and for independent extra normals, ``noise.fresh(x)`` (Langevin corrector,
EDM churn).  ``GeneratorNoise`` draws both from one ``torch.Generator``;
``BrownianNoise`` reads the interval's normal off one Brownian path,
``(W(t0) - W(t1)) / sqrt(t0 - t1)``, so the same path is replayed at every step
size (strong-order tests, comparing samplers on identical noise).
"""

from __future__ import annotations

import math

import torch
import torchsde
from torch import Tensor

__all__ = ["BrownianNoise", "GeneratorNoise", "NoiseSource"]


class NoiseSource:
    """Standard normals for the interval ``t0 -> t1`` and independent extras."""

    def __call__(self, x: Tensor, t0: float, t1: float) -> Tensor:
        raise NotImplementedError

    def fresh(self, x: Tensor) -> Tensor:
        raise NotImplementedError


class GeneratorNoise(NoiseSource):
    """Fresh ``N(0, I)`` draws from ``generator`` (the global RNG if ``None``)."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def __call__(self, x: Tensor, t0: float, t1: float) -> Tensor:
        return self.fresh(x)

    def fresh(self, x: Tensor) -> Tensor:
        return torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)


class BrownianNoise(NoiseSource):
    """Increments of one Brownian path ``W`` on ``[t_end, t_start]``.

    ``torchsde.BrownianInterval`` answers any sub-interval consistently, so a
    run with 10 steps and a run with 1000 steps see the same path.  Extra
    normals come from a generator seeded alongside.
    """

    def __init__(
        self,
        x: Tensor,
        t_start: float,
        t_end: float,
        seed: int = 0,
        levy_area_approximation: str = "none",
    ):
        if not t_start > t_end:
            raise ValueError(f"BrownianNoise needs t_start > t_end, got {t_start} and {t_end}")
        self.t_start, self.t_end = float(t_start), float(t_end)
        self.shape = x.shape
        self.interval = torchsde.BrownianInterval(
            t0=-self.t_start,
            t1=-self.t_end,
            size=(x.shape[0], x[0].numel()),
            dtype=x.dtype,
            device=x.device,
            entropy=seed,
            levy_area_approximation=levy_area_approximation,
        )
        self._extra = torch.Generator(device=x.device).manual_seed(seed + 1)

    def increment(self, t0: float, t1: float) -> Tensor:
        """``W(t1) - W(t0)`` in reversed time (``-t`` increases), shaped like ``x``."""
        return self.interval(-t0, -t1).reshape(self.shape)

    def __call__(self, x: Tensor, t0: float, t1: float) -> Tensor:
        return self.increment(t0, t1) / math.sqrt(t0 - t1)

    def fresh(self, x: Tensor) -> Tensor:
        return torch.randn(x.shape, generator=self._extra, device=x.device, dtype=x.dtype)
