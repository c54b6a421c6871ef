"""The SDE registry: one name per SDE, the parameters read from its ``__init__``.

``register_sde("name")`` on an :class:`~sde_diffusion.sdes.base.SDE` subclass makes it
available by name everywhere: ``build_sde``, the command line's ``--sde``, checkpoints
(``sde_config`` / ``sde_from_config``) and the registry-driven tests.  Every parameter
needs a default, so ``build_sde(name)`` always gives a working SDE.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import ArgumentError
from .base import SDE, init_parameters

__all__ = [
    "SDE_TYPES",
    "build_sde",
    "register_sde",
    "sde_class",
    "sde_config",
    "sde_from_config",
    "sde_names",
]

SDE_TYPES: dict[str, type[SDE]] = {}  # name -> class, in registration order

S = TypeVar("S", bound=type[SDE])


def register_sde(name: str) -> Callable[[S], S]:
    """Class decorator: register an ``SDE`` subclass under ``name`` (lower case)."""
    key = name.strip().lower().replace("-", "_")

    def decorate(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, SDE)):
            raise TypeError(f"register_sde decorates SDE subclasses, got {cls!r}")
        if key in SDE_TYPES:
            raise ArgumentError(f"SDE name {key!r} is already registered (by {SDE_TYPES[key]!r})")
        params = inspect.signature(cls.__init__).parameters
        required = [p for p in init_parameters(cls) if params[p].default is inspect.Parameter.empty]
        if required:
            raise TypeError(f"{cls.__name__}: every parameter needs a default, not {required}")
        cls.name = key
        SDE_TYPES[key] = cls
        return cls

    return decorate


def sde_names() -> list[str]:
    """Names of the registered SDEs, in registration order."""
    return list(SDE_TYPES)


def sde_class(name: str) -> type[SDE]:
    """The class registered under ``name``; an unknown name lists the valid ones."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in SDE_TYPES:
        raise ArgumentError(f"unknown SDE {name!r}; choose one of {', '.join(SDE_TYPES)}")
    return SDE_TYPES[key]


def build_sde(name: str, **options: Any) -> SDE:
    """The SDE ``name`` with ``options`` (its constructor's arguments, checked by name)."""
    cls = sde_class(name)
    unknown = sorted(set(options) - set(init_parameters(cls)))
    if unknown:
        takes = ", ".join(init_parameters(cls)) or "no options"
        raise ArgumentError(
            f"SDE {cls.name!r} does not take option(s) {', '.join(unknown)}; it takes: {takes}"
        )
    return cls(**options)


def sde_config(sde: SDE) -> dict[str, Any]:
    """A JSON-ready description of a registered SDE (for checkpoints): name and parameters."""
    if SDE_TYPES.get(type(sde).name) is not type(sde):
        raise ArgumentError(
            f"only registered SDEs can be saved, got {type(sde).__name__}; decorate it with "
            "register_sde"
        )
    return {"type": sde.name, **sde.params()}


def sde_from_config(config: dict[str, Any]) -> SDE:
    """Rebuild an SDE from :func:`sde_config` output or a name (``vp``, ``ve``, ...)."""
    options = dict(config)
    return build_sde(str(options.pop("type", "")), **options)
