"""Solvers for the reverse SDE and the probability-flow ODE, one module per method.

Importing this package imports every module in it, so a method registers by being a file
here with a ``@register_solver(...)`` class.
"""

import importlib
import pkgutil

from .base import AdaptiveSolver, Solver, SolverInfo
from .registry import (
    SolverOptionError,
    UnknownSolverError,
    get_solver,
    list_solvers,
    register_solver,
    solver_names,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "AdaptiveSolver",
    "Solver",
    "SolverInfo",
    "SolverOptionError",
    "UnknownSolverError",
    "get_solver",
    "list_solvers",
    "register_solver",
    "solver_names",
]
