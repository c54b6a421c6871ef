"""sde-diffusion: score-based generative modelling with SDEs.

import sde_diffusion as sd
sde = sd.EDMSDE()
gmm = sd.eight_gaussians()
res = sd.sample(gmm.score_fn(sde), sde, shape=(1024, 2), solver="heun", steps=32)
"""

from .analytic import GaussianMixture, eight_gaussians, high_dim_mixture
from .likelihood import ELBOResult, LikelihoodResult, bits_per_dim, elbo, log_likelihood
from .noise import BrownianNoise, GeneratorNoise, NoiseSource, PerSampleNoise
from .reverse import ProbabilityFlowODE, ReverseProcess, ReverseSDE, ScoreFn
from .sampling import CountingScore, NonFiniteError, SampleResult, StepInfo, sample, solve
from .sdes import EDMSDE, SDE, VESDE, VPSDE, SubVPSDE, append_dims
from .solvers import (
    Solver,
    SolverInfo,
    SolverOptionError,
    UnknownSolverError,
    get_solver,
    list_solvers,
    register_solver,
    solver_names,
)
from .timesteps import SCHEDULES, timesteps, validate_grid

__version__ = "0.1.0"

__all__ = [
    "EDMSDE",
    "SCHEDULES",
    "SDE",
    "VESDE",
    "VPSDE",
    "BrownianNoise",
    "CountingScore",
    "ELBOResult",
    "GaussianMixture",
    "GeneratorNoise",
    "LikelihoodResult",
    "NoiseSource",
    "NonFiniteError",
    "PerSampleNoise",
    "ProbabilityFlowODE",
    "ReverseProcess",
    "ReverseSDE",
    "SampleResult",
    "ScoreFn",
    "Solver",
    "SolverInfo",
    "SolverOptionError",
    "StepInfo",
    "SubVPSDE",
    "UnknownSolverError",
    "__version__",
    "append_dims",
    "bits_per_dim",
    "eight_gaussians",
    "elbo",
    "get_solver",
    "high_dim_mixture",
    "list_solvers",
    "log_likelihood",
    "register_solver",
    "sample",
    "solve",
    "solver_names",
    "timesteps",
    "validate_grid",
]
