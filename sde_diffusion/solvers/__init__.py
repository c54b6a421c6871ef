"""Solvers for the reverse SDE and the probability-flow ODE, one module per method.

Importing this package imports every module in it, so a method registers by being a file
here with a ``@register_solver(...)`` class.
"""

from ..discovery import import_submodules
from .base import AdaptiveSolver, Solver, SolverInfo
from .registry import (
    SolverOptionError,
    UnknownSolverError,
    get_solver,
    list_solvers,
    register_solver,
    solver_names,
)

import_submodules(__name__, __path__)

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
