"""Noise sources for stochastic samplers.

A sampler asks for a standard normal tied to its interval, ``noise(x, t0, t1)``,
and for independent extra normals, ``noise.fresh(x)`` (Langevin corrector,
EDM churn).  ``GeneratorNoise`` draws both from one ``torch.Generator``;
``BrownianNoise`` reads the interval's normal off one Brownian path,
``(W(t0) - W(t1)) / sqrt(t0 - t1)``, so the same path is replayed at every step
size (strong-order tests, comparing samplers on identical noise).
``PerSampleNoise`` gives every sample its own stream keyed by (seed, sample
index), so a sample does not depend on the batch it is drawn in.
"""

from __future__ import annotations

import math

import torch
import torchsde
from torch import Tensor

from .errors import ArgumentError

__all__ = [
    "BrownianNoise",
    "GeneratorNoise",
    "NoiseSource",
    "PerSampleNoise",
    "seed32",
    "seeded_generator",
]


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
            raise ArgumentError(f"BrownianNoise needs t_start > t_end, got {t_start} and {t_end}")
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


_MASK32 = 0xFFFFFFFF


def seed32(seed: int) -> int:
    """``seed`` as the 32-bit seed that torch's generators and ``PerSampleNoise`` use:
    itself below 2^32, else a hash of all its bits (torch's CPU generator keeps only a
    seed's low 32 bits, so 2^32 would otherwise replay seed 0)."""
    if seed <= _MASK32:
        return seed
    word, seed = _pcg_hash(seed & _MASK32), seed >> 32
    while seed:
        word, seed = _pcg_hash(word ^ _pcg_hash(seed & _MASK32)), seed >> 32
    return word


def seeded_generator(seed: int, device: torch.device | str | None = None) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`seed32` of ``seed``."""
    return torch.Generator(device=device or "cpu").manual_seed(seed32(seed))


def _pcg_hash(v):
    """The 32-bit PCG output hash of a Python int or, element-wise, an int64 tensor.

    Intermediate values stay below 2^62, so int64 never overflows.
    """
    state = (v * 747796405 + 2891336453) & _MASK32
    word = ((state >> ((state >> 28) + 4)) ^ state) * 277803737 & _MASK32
    return ((word >> 22) ^ word) & _MASK32


class PerSampleNoise(NoiseSource):
    """Normals keyed by ``(seed, sample index, draw number, element)``: batch-size free.

    Sample ``first_index + i`` of a batch sees the same normals whether it is
    drawn alone or among thousands (EDM draws its noise per sample for the same
    reason).  The key is hashed with the PCG output permutation and turned into
    normals by Box-Muller, all as tensor operations on ``x``'s device: no loop
    over samples, no host sync, and the same numbers on CPU and CUDA.
    """

    def __init__(self, seed: int = 0, first_index: int = 0):
        if seed < 0 or first_index < 0:
            raise ArgumentError(f"seed and first_index must be >= 0, got {seed} and {first_index}")
        self.seed, self.first_index, self.draws = int(seed), int(first_index), 0

    def _bits(self, key: Tensor, counter: Tensor) -> Tensor:
        return _pcg_hash(key ^ _pcg_hash(counter))

    def normal(self, shape: tuple[int, ...], device=None, dtype=None) -> Tensor:
        """The next draw: standard normals of ``shape = (B, *event)``."""
        dtype = dtype or torch.get_default_dtype()
        batch, size = shape[0], math.prod(shape[1:])
        index = torch.arange(self.first_index, self.first_index + batch, device=device)
        stream = _pcg_hash(_pcg_hash(_pcg_hash(seed32(self.seed)) ^ self.draws))  # a Python int
        key = _pcg_hash((index & _MASK32) ^ stream)[:, None]
        counter = 2 * torch.arange(size, device=device)
        work = torch.float64 if dtype == torch.float64 else torch.float32
        u1 = (self._bits(key, counter).to(work) + 0.5) / 2.0**32  # (0, 1): log is finite
        u2 = self._bits(key, counter + 1).to(work) / 2.0**32
        self.draws += 1
        z = (-2 * u1.log()).sqrt() * torch.cos(2 * math.pi * u2)
        return z.to(dtype).reshape(shape)

    def __call__(self, x: Tensor, t0: float, t1: float) -> Tensor:
        return self.fresh(x)

    def fresh(self, x: Tensor) -> Tensor:
        return self.normal(tuple(x.shape), x.device, x.dtype)
