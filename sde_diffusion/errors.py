"""The kinds of error the library raises on purpose.

``ArgumentError`` (a ``ValueError``) means the caller asked for something invalid: a bad
option, shape, grid or file; its message names what is valid.  The command line turns it
into a usage error (exit 2) without adding a word.  Anything else that escapes the
library is a failure at run time (``NonFiniteError``, an ``OSError``) or a bug, and
surfaces as what it is.
"""

from __future__ import annotations

__all__ = ["ArgumentError", "NonFiniteError"]


class ArgumentError(ValueError):
    """An invalid argument: its message says what was received and what is valid."""


class NonFiniteError(FloatingPointError):
    """The state became NaN or infinite during a solve."""
