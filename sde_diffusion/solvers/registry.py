"""The solver registry: one name (plus aliases) per method.

Lookup ignores case and treats ``-`` and ``_`` alike.  Other packages add
methods by importing ``register_solver`` and decorating a ``Solver`` subclass.
"""

from __future__ import annotations

import difflib
import inspect
import numbers
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from ..errors import ArgumentError
from .base import AdaptiveSolver, Solver, SolverInfo

__all__ = [
    "SolverOptionError",
    "UnknownSolverError",
    "get_solver",
    "list_solvers",
    "register_solver",
    "solver_names",
]

_REGISTRY: dict[str, type[Solver]] = {}  # canonical name -> class
_LOOKUP: dict[str, str] = {}  # normalised name or alias -> canonical name

S = TypeVar("S", bound=type[Solver])


class UnknownSolverError(ArgumentError):
    """A solver name that is not registered."""


class SolverOptionError(ArgumentError):
    """An option a solver does not take."""


def _normalise(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_solver(
    name: str,
    *,
    kind: Literal["sde", "ode"],
    order: float,
    nfe_per_step: int,
    stochastic: bool,
    aliases: tuple[str, ...] = (),
    summary: str | None = None,
    reference: str = "",
    adaptive: bool = False,
    batch_invariant: bool = True,
) -> Callable[[S], S]:
    """Class decorator: register a ``Solver`` subclass under ``name`` and ``aliases``.

    The summary defaults to the first line of the class docstring.  A name or
    alias already taken raises ``ValueError``.
    """
    if kind not in ("sde", "ode"):
        raise ArgumentError(f"kind must be 'sde' or 'ode', got {kind!r}")

    def decorate(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, Solver)):
            raise TypeError(f"register_solver decorates Solver subclasses, got {cls!r}")
        if adaptive != issubclass(cls, AdaptiveSolver):
            raise TypeError(
                f"{cls.__name__}: an adaptive solver must define attempt(process, y, s, "
                "s_next, rows, state) with an error estimate (subclass AdaptiveSolver), and "
                "only adaptive solvers do"
            )
        keys = [_normalise(n) for n in (name, *aliases)]
        for key in keys:
            if key in _LOOKUP:
                raise ArgumentError(
                    f"solver name {key!r} is already registered (by {_LOOKUP[key]!r})"
                )
        text = summary or (inspect.getdoc(cls) or "").split("\n")[0]
        cls.info = SolverInfo(
            name=keys[0],
            kind=kind,
            order=order,
            nfe_per_step=nfe_per_step,
            stochastic=stochastic,
            summary=text,
            reference=reference,
            aliases=tuple(keys[1:]),
            adaptive=adaptive,
            batch_invariant=batch_invariant,
        )
        _REGISTRY[keys[0]] = cls
        _LOOKUP.update(dict.fromkeys(keys, keys[0]))
        return cls

    return decorate


def solver_names() -> list[str]:
    """Canonical names of the registered solvers, sorted."""
    return sorted(_REGISTRY)


def list_solvers() -> list[SolverInfo]:
    """Metadata of every registered solver, sorted by name."""
    return [_REGISTRY[n].info for n in solver_names()]


def solver_class(name: str) -> type[Solver]:
    """The class registered under ``name`` or one of its aliases."""
    if not isinstance(name, str):
        raise TypeError(f"a solver is named by a string, got {type(name).__name__} {name!r:.40}")
    key = _normalise(name)
    if key not in _LOOKUP:
        close = difflib.get_close_matches(key, list(_LOOKUP), n=1)
        hint = f"did you mean {_LOOKUP[close[0]]!r}? " if close else ""
        raise UnknownSolverError(
            f"unknown solver {name!r}; {hint}valid solvers: {', '.join(solver_names())}"
        )
    return _REGISTRY[_LOOKUP[key]]


def get_solver(name: str, **options: Any) -> Solver:
    """A solver instance by registry name, with its options checked."""
    cls = solver_class(name)
    accepted = solver_options(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "no options"
        raise SolverOptionError(
            f"solver {cls.info.name!r} does not take option(s) "
            f"{', '.join(unknown)}; it takes: {takes}"
        )
    wrong = [
        f"{k} must be {kind}, got {v!r:.40}"
        for k, v in options.items()
        if (kind := _misfit(cls, k, v))
    ]
    if wrong:
        raise SolverOptionError(f"solver {cls.info.name!r}: {'; '.join(wrong)}")
    not_numbers = sorted(k for k, v in options.items() if isinstance(v, float) and v != v)
    if not_numbers:  # NaN passes every range check written as a comparison
        raise SolverOptionError(
            f"solver {cls.info.name!r}: option(s) {', '.join(not_numbers)} must be numbers, got NaN"
        )
    solver = cls(**options)  # its own range checks first: they name the valid range
    huge = sorted(k for k, v in options.items() if _beyond_any_range(cls, k, v))
    if huge:
        raise SolverOptionError(
            f"solver {cls.info.name!r}: option(s) {', '.join(huge)} must be numbers of size at "
            f"most {MAX_OPTION:g}"
        )
    return solver


MAX_OPTION = 1e6  # no solver's number means anything beyond this; float32 overflows near it


def _misfit(cls: type[Solver], name: str, value: Any) -> str | None:
    """What kind of value option ``name`` takes, when ``value`` is not one (read off its
    default: a flag, an integer or a number; other options check themselves)."""
    default = _default(cls, name)
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if isinstance(default, float):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        return None if ok else "a number"
    return None


def _beyond_any_range(cls: type[Solver], name: str, value: Any) -> bool:
    """A number option past ``MAX_OPTION`` (inf included) unless it is the default (EDM's
    ``s_tmax`` may be inf): what a solver without its own bound would overflow on."""
    default = _default(cls, name)
    is_number = isinstance(default, float) and not isinstance(value, bool)
    return is_number and value != default and not abs(value) <= MAX_OPTION


def _default(cls: type[Solver], name: str) -> Any:
    return inspect.signature(cls.__init__).parameters[name].default


def solver_options(cls: type[Solver]) -> list[str]:
    """Names of the keyword options a solver class takes."""
    params = inspect.signature(cls.__init__).parameters.values()
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in params if p.name != "self" and p.kind not in variadic]
