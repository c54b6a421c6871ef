"""Registries fill themselves: importing a package imports every module in it."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

__all__ = ["import_submodules"]


def import_submodules(package: str, path: Iterable[str]) -> None:
    """Import every module of ``package`` (found on ``path``, its ``__path__``), so the
    classes they decorate with a registry's decorator register: a new solver or SDE is
    one new file."""
    for module in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{module.name}")
