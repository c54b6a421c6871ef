"""A measurement of a batch, ``y = A x + σ_y n``, with the spectral view SVD methods use.

With the thin SVD ``A = U diag(s) Vᵀ`` (rank ``r``) a sample splits into its spectral
coordinates ``x̄ = Vᵀ x`` (what ``A`` sees) and its null-space part ``x − V x̄`` (what it
does not).  The measurement in the same coordinates is ``ȳ = diag(s)⁻¹ Uᵀ y``: an
unbiased reading of ``x̄`` with noise ``σ_y / s_i`` in coordinate ``i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ArgumentError
from ..measurements import Measurement, check_sigma_y

__all__ = ["Observation", "Spectrum"]


@dataclass(frozen=True)
class Spectrum:
    """``U (m, r)``, ``s (r,)``, ``V (d, r)`` of ``A`` in the dtype and on the device of use."""

    u: Tensor
    s: Tensor
    v: Tensor

    def coordinates(self, x: Tensor) -> Tensor:
        """``x̄ = Vᵀ x``, shape ``(B, r)``."""
        return x.flatten(1) @ self.v

    def compose(self, coords: Tensor, rest: Tensor) -> Tensor:
        """The sample whose spectral coordinates are ``coords`` and whose null-space part is
        that of ``rest``: ``rest + V (coords − Vᵀ rest)``."""
        flat = rest.flatten(1)
        return (flat + (coords - flat @ self.v) @ self.v.T).view_as(rest)

    def reading(self, y: Tensor) -> Tensor:
        """``ȳ = diag(s)⁻¹ Uᵀ y``, shape ``(B, r)``."""
        return (y @ self.u) / self.s


class Observation:
    """``y`` (shape ``(B, m)``) of samples measured by ``measurement`` with noise ``sigma_y``."""

    def __init__(self, measurement: Measurement, y: Tensor, sigma_y: float = 0.0):
        if not isinstance(measurement, Measurement):
            raise ArgumentError(
                f"a measurement is a sde_diffusion.measurements operator, got {measurement!r}"
            )
        self.measurement, self.sigma_y = measurement, check_sigma_y(sigma_y)
        m = measurement.forward(torch.zeros(1, *measurement.event, dtype=torch.float64)).shape[1]
        if not isinstance(y, Tensor) or y.ndim != 2 or y.shape[1] != m:
            shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ArgumentError(f"y must have shape (B, {m}) for {measurement!r}, got {shape}")
        if not bool(torch.isfinite(y).all()):
            raise ArgumentError("the measurement y holds inf or NaN")
        self.y = y
        self._spectra: dict[tuple[torch.dtype, torch.device], Spectrum] = {}
        self._svd: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def batch(self) -> int:
        return self.y.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        """``A x``."""
        return self.measurement.forward(x)

    def residual(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """``A x − y``, shape ``(B, m)`` (``y``: these rows of the measurement, if not all)."""
        return self.measurement.forward(x) - (self.y if y is None else y).to(x)

    def spectrum(self, like: Tensor) -> Spectrum:
        """The thin SVD of ``A`` in ``like``'s dtype and on its device (computed once)."""
        key = (like.dtype, like.device)
        if key not in self._spectra:
            if self._svd is None:
                self._svd = self.measurement.svd()
            self._spectra[key] = Spectrum(*(a.to(like) for a in self._svd))
        return self._spectra[key]

    def reading(self, like: Tensor) -> Tensor:
        """``ȳ`` (see the module) in ``like``'s dtype."""
        return self.spectrum(like).reading(self.y.to(like))
