"""Distances between sample sets: sliced Wasserstein-2 and MMD.

Both compare two batches ``(N, *event)`` and ``(M, *event)`` without a density.
Their noise floor is the value between two independent sample sets of the same
law and sizes (:func:`noise_floor`): a model is judged against it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..errors import ArgumentError

__all__ = ["mmd", "noise_floor", "sliced_wasserstein"]


def sliced_wasserstein(
    x: Tensor, y: Tensor, projections: int = 256, *, generator: torch.Generator | None = None
) -> float:
    """Sliced W2: ``sqrt(mean_theta W2^2(theta^T x, theta^T y))`` over random unit directions.

    Each 1-D W2 compares sorted projections (the quantiles of the smaller set if the
    sizes differ).
    """
    x, y = x.flatten(1).double(), y.flatten(1).double()
    if x.shape[1] != y.shape[1]:
        raise ArgumentError(f"sample sets differ in dimension: {x.shape[1]} and {y.shape[1]}")
    theta = torch.randn(
        x.shape[1],
        projections,
        generator=generator,
        dtype=torch.float64,
        device=generator.device if generator is not None else "cpu",
    )
    theta = (theta / theta.norm(dim=0)).to(x.device)
    px, py = (x @ theta).sort(0).values, (y @ theta).sort(0).values
    n = min(len(px), len(py))
    q = (torch.arange(n, dtype=torch.float64, device=x.device) + 0.5) / n
    px, py = (_quantiles(p, q) for p in (px, py))
    return float((px - py).pow(2).mean().sqrt())


def _quantiles(sorted_values: Tensor, q: Tensor) -> Tensor:
    index = (q * len(sorted_values)).long().clamp(max=len(sorted_values) - 1)
    return sorted_values[index]


def mmd(x: Tensor, y: Tensor, bandwidths: Sequence[float] = (0.1, 0.5, 1.0, 2.0, 5.0)) -> float:
    """Unbiased squared MMD with a sum of RBF kernels ``exp(-|a - b|^2 / (2 h^2))``."""
    x, y = x.flatten(1).double(), y.flatten(1).double()
    if len(x) < 2 or len(y) < 2:
        raise ArgumentError("MMD needs at least two samples in each set")

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * h**2)) for h in bandwidths)

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    n, m = len(x), len(y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(within_x + within_y - 2 * kxy.mean())


def noise_floor(
    sampler: Callable[[int, int], Tensor], n: int, metric=sliced_wasserstein, repeats: int = 5
) -> float:
    """Median of ``metric`` between two independent draws ``sampler(n, seed)``."""
    values = sorted(metric(sampler(n, 2 * i), sampler(n, 2 * i + 1)) for i in range(repeats))
    return values[len(values) // 2]
