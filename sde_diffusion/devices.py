"""Device and dtype arguments, checked once where they enter the library.

A device that does not exist here, or an integer state dtype, is an ``ArgumentError``
naming what is valid, not a backend error deep inside a solve.
"""

from __future__ import annotations

import torch

from .errors import ArgumentError

__all__ = ["checked_device", "checked_dtype"]


def checked_device(value: torch.device | str) -> torch.device:
    """``value`` as a ``torch.device`` that exists on this machine (cpu, cuda[:N], mps)."""
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise ArgumentError(f"{value!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentError("CUDA is not available on this machine; use the cpu device")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ArgumentError(f"{value} does not exist: this machine has {count} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ArgumentError("MPS is not available on this machine; use the cpu device")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ArgumentError(f"unsupported device {value!r}; use cpu, cuda or cuda:N")
    return device


def checked_dtype(value: torch.dtype) -> torch.dtype:
    """``value`` as a floating-point state dtype (a solver's state cannot be integers)."""
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ArgumentError(
            f"dtype must be a floating-point torch.dtype (torch.float32, torch.float64), "
            f"got {value!r}"
        )
    return value
