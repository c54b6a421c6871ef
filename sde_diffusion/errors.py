"""The kinds of error the library raises on purpose.

``ArgumentError`` (a ``ValueError``) means the caller asked for something invalid: a bad
option, shape, grid or file; its message names what is valid.  The command line turns it
into a usage error (exit 2) without adding a word.  Anything else that escapes the
library is a failure at run time (``NonFiniteError``, an ``OSError``) or a bug, and
surfaces as what it is.
"""

from __future__ import annotations

import torch

__all__ = ["ArgumentError", "NonFiniteError", "raise_if_not_finite"]


class ArgumentError(ValueError):
    """An invalid argument: its message says what was received and what is valid."""


class NonFiniteError(FloatingPointError):
    """The state became NaN or infinite during a solve."""


def raise_if_not_finite(values: torch.Tensor, what: str) -> None:
    """A :class:`NonFiniteError` naming how many of the per-sample ``values`` are not
    finite (one host read)."""
    bad = int((~torch.isfinite(values)).sum())
    if bad:
        raise NonFiniteError(
            f"{what} is not finite for {bad} of {len(values)} samples: the model returned "
            "non-finite values or the solver diverged; check the model, or use more steps"
        )
