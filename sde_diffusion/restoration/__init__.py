"""Sampling ``p(x | y)`` for a linear measurement ``y = A x + σ_y n`` with a model of ``p(x)``.

``restore(model, sde, measurement, y, sigma_y, method=...)`` runs one of the methods below
without retraining.  Methods that wrap the model (``pigdm``, ``diffpir`` with a solver) or
correct the state after each step (``replacement``, ``repaint``, ``dps``) run on registered
solvers; ``ddrm`` and ``diffpir`` (by default) have update rules of their own; ``daps``
uses a solver for its inner ODE.  Each method's docstring gives its update rule, defaults
and reference; ``docs/inverse-problems.md`` how far each lands from the exact posterior.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from ..devices import checked_dtype
from ..errors import ArgumentError
from ..latent import DecodedMeasurement, latent_inpainting, latent_model_of
from ..measurements import Inpaint, Measurement
from ..models import Cond
from ..noise import seeded_generator
from ..reverse import ScoreFn
from ..sampling import SampleResult, check_sampling_grid
from ..sdes import SDE
from ..solvers.base import Solver
from ..solvers.registry import get_solver
from ..timesteps import timesteps
from .base import Method
from .daps import DAPS
from .ddrm import DDRM
from .diffpir import DiffPIR
from .dps import DPS
from .mcg import MCG
from .observation import Observation, Spectrum
from .pigdm import PiGDM
from .repaint import RePaint, repaint_walk
from .replacement import Replacement

__all__ = [
    "DAPS",
    "DDRM",
    "DEFAULT_RESTORE_STEPS",
    "DPS",
    "MCG",
    "METHODS",
    "DiffPIR",
    "Method",
    "Observation",
    "PiGDM",
    "RePaint",
    "Replacement",
    "Spectrum",
    "get_method",
    "method_names",
    "repaint_walk",
    "restore",
]

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (Replacement, RePaint, DPS, MCG, PiGDM, DDRM, DiffPIR, DAPS)
}
DEFAULT_RESTORE_STEPS = 100


def method_names() -> list[str]:
    """The restoration methods ``restore`` and ``sdediff restore`` accept."""
    return list(METHODS)


def get_method(name: str | Method, **options: Any) -> Method:
    """The method ``name`` built with ``options`` (each checked), or ``name`` itself."""
    if isinstance(name, Method):
        if options:
            raise ArgumentError("options go with a method name, not with a Method instance")
        return name
    if name not in METHODS:
        raise ArgumentError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    cls = METHODS[name]
    takes = list(inspect.signature(cls).parameters)
    unknown = [k for k in options if k not in takes]
    if unknown:
        raise ArgumentError(
            f"{name} takes the options {', '.join(takes) or 'none'}; got {', '.join(unknown)}"
        )
    return cls(**options)


def _solver_for(method: Method, solver: str | Solver | None) -> Solver | None:
    if solver is None:
        if method.default_solver is None:
            return None
        return get_solver(method.default_solver, **method.default_solver_options)
    if not method.takes_solver:
        raise ArgumentError(f"{method.name} has an update rule of its own and takes no solver")
    return get_solver(solver) if isinstance(solver, str) else solver


def restore(
    model: ScoreFn,
    sde: SDE,
    measurement: Measurement,
    y: Tensor,
    sigma_y: float = 0.0,
    method: str | Method = "dps",
    solver: str | Solver | None = None,
    steps: int = DEFAULT_RESTORE_STEPS,
    schedule: str = "karras",
    *,
    cond: Cond = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    to_zero: bool = True,
    **options: Any,
) -> SampleResult:
    """Samples of ``p(x | y)``, one per row of ``y``, by ``method`` (built with ``options``)
    on the grid ``timesteps(sde, steps, schedule, to_zero=to_zero)`` from the prior (to
    ``t = 0`` by default, so that noise-free measurements are met exactly).

    ``solver`` (a registry name or a ``Solver``) runs methods that take one; by default
    each method's own choice.  ``res.nfe`` counts model calls and ``res.network_passes``
    forward and backward passes (a vector–Jacobian product costs two).  No autograd graph
    is kept: the result does not require a gradient.

    On a latent model (:class:`~sde_diffusion.latent.LatentModel`) ``measurement`` measures
    images, the method runs on latents and ``x`` is the decoded images (``latent`` the
    latents): ``dps`` measures the latents through the decoder
    (:class:`~sde_diffusion.latent.DecodedMeasurement`, any operator); the other methods
    need a linear operator and run inpainting as latent inpainting
    (:func:`~sde_diffusion.latent.latent_inpainting`).
    """
    method = get_method(method, **options)
    latent = latent_model_of(model)
    if latent is not None:
        if isinstance(measurement, Inpaint) and not method.through_decoder:
            measurement, y, sigma_y = latent_inpainting(measurement, latent, y, sigma_y)
        else:
            measurement = DecodedMeasurement(measurement, latent)
    obs = Observation(measurement, y, sigma_y)
    dtype = checked_dtype(dtype)
    solver = _solver_for(method, solver)
    grid = check_sampling_grid(sde, timesteps(sde, steps, schedule, to_zero=to_zero)).tolist()
    generator = seeded_generator(seed, y.device)
    shape = (obs.batch, *measurement.event)
    x_T = sde.prior_std * torch.randn(shape, generator=generator, device=y.device, dtype=dtype)
    if method.needs_svd:
        try:
            obs.spectrum(x_T)
        except ArgumentError as err:
            raise ArgumentError(
                f"{method.name} needs the SVD of the operator, and {measurement!r} has none "
                f"here ({err}); dps needs none"
            ) from None
    with torch.no_grad():  # methods that need a gradient ask for it themselves
        res = method.run(model, sde, obs, x_T, grid, solver, generator, cond)
        if latent is not None:
            res.latent, res.x = res.x, latent.decode(res.x)
    return res
