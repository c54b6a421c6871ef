"""sde-diffusion: score-based generative modelling with SDEs.

import sde_diffusion as sd
sde = sd.EDMSDE()
gmm = sd.eight_gaussians()
res = sd.sample(gmm.score_fn(sde), sde, shape=(1024, 2), solver="heun", steps=32)
"""

from . import adapters
from .acceleration import PRECISIONS, accelerate
from .analytic import GaussianMixture, MixtureScore, eight_gaussians, high_dim_mixture
from .controllers import PIDController
from .editing import sdedit
from .errors import ArgumentError, NonFiniteError
from .evaluation.elbo import ELBOResult, elbo, elbo_terms
from .evaluation.likelihood import (
    LikelihoodResult,
    bits_per_dim,
    likelihood_solvers,
    likelihood_terms,
    log_likelihood,
    nll_batched,
)
from .guidance import APG, ClassifierFreeGuidance, ClassifierGuidance
from .latent import LatentModel
from .models import ConditionError, FunctionModel, Model, as_model
from .noise import BrownianNoise, GeneratorNoise, NoiseSource, PerSampleNoise
from .parametrization import PREDICTIONS, ScoreModel
from .restoration import restore
from .reverse import ModelOutputError, ReverseProcess, ScoreFn
from .sampling import SampleResult, StepInfo, sample, sample_batched, solve
from .sdes import EDMSDE, SDE, VESDE, VPSDE, DiscreteVPSDE, RectifiedFlow, SubVPSDE, append_dims
from .solvers import (
    AdaptiveSolver,
    Solver,
    SolverInfo,
    SolverOptionError,
    UnknownSolverError,
    get_solver,
    list_solvers,
    register_solver,
    solver_names,
)
from .timesteps import SCHEDULE_ALIASES, SCHEDULES, timesteps, validate_grid
from .tuning import TunedGrid, load_grid, tune_timesteps

__version__ = "0.1.0"

__all__ = [
    "APG",
    "EDMSDE",
    "PRECISIONS",
    "PREDICTIONS",
    "SCHEDULES",
    "SCHEDULE_ALIASES",
    "SDE",
    "VESDE",
    "VPSDE",
    "AdaptiveSolver",
    "ArgumentError",
    "BrownianNoise",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "ConditionError",
    "DiscreteVPSDE",
    "ELBOResult",
    "FunctionModel",
    "GaussianMixture",
    "GeneratorNoise",
    "LatentModel",
    "LikelihoodResult",
    "MixtureScore",
    "Model",
    "ModelOutputError",
    "NoiseSource",
    "NonFiniteError",
    "PIDController",
    "PerSampleNoise",
    "RectifiedFlow",
    "ReverseProcess",
    "SampleResult",
    "ScoreFn",
    "ScoreModel",
    "Solver",
    "SolverInfo",
    "SolverOptionError",
    "StepInfo",
    "SubVPSDE",
    "TunedGrid",
    "UnknownSolverError",
    "__version__",
    "accelerate",
    "adapters",
    "append_dims",
    "as_model",
    "bits_per_dim",
    "eight_gaussians",
    "elbo",
    "elbo_terms",
    "get_solver",
    "high_dim_mixture",
    "likelihood_solvers",
    "likelihood_terms",
    "list_solvers",
    "load_grid",
    "log_likelihood",
    "nll_batched",
    "register_solver",
    "restore",
    "sample",
    "sample_batched",
    "sdedit",
    "solve",
    "solver_names",
    "timesteps",
    "tune_timesteps",
    "validate_grid",
]
