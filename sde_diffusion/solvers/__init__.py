"""Solvers for the reverse SDE and the probability-flow ODE, one module per method.

Importing this package registers every built-in method.
"""

from . import (  # noqa: F401  (imported to register)
    ancestral,
    ddim,
    deis,
    dormand_prince,
    dpm_2,
    dpm_adaptive,
    dpmpp_2m,
    dpmpp_2m_sde,
    dpmpp_2s,
    dpmpp_3m,
    dpmpp_3m_sde,
    dpmpp_sde,
    euler,
    euler_ancestral,
    euler_maruyama,
    heun,
    heun_sde,
    ipndm,
    lms,
    pc,
    restart,
    torchsde_methods,
    unipc,
)
from .base import Solver, SolverInfo
from .registry import (
    SolverOptionError,
    UnknownSolverError,
    get_solver,
    list_solvers,
    register_solver,
    solver_names,
)

__all__ = [
    "Solver",
    "SolverInfo",
    "SolverOptionError",
    "UnknownSolverError",
    "get_solver",
    "list_solvers",
    "register_solver",
    "solver_names",
]
