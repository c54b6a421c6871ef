"""Linear SDEs of score-based diffusion, one module per SDE, found by name.

Importing this package imports every module in it, so an SDE registers by being a file
here with a ``@register_sde("name")`` class (see :mod:`.registry`).
"""

from ..discovery import import_submodules
from .base import SDE, Time, append_dims, as_time, broadcast_coefficient
from .discrete_vp import DiscreteVPSDE
from .edm import EDMSDE
from .rectified_flow import RectifiedFlow
from .registry import (
    SDE_TYPES,
    build_sde,
    register_sde,
    sde_class,
    sde_config,
    sde_from_config,
    sde_names,
)
from .ve import VESDE
from .vp import VPSDE, SubVPSDE

import_submodules(__name__, __path__)

__all__ = [
    "EDMSDE",
    "SDE",
    "SDE_TYPES",
    "VESDE",
    "VPSDE",
    "DiscreteVPSDE",
    "RectifiedFlow",
    "SubVPSDE",
    "Time",
    "append_dims",
    "as_time",
    "broadcast_coefficient",
    "build_sde",
    "register_sde",
    "sde_class",
    "sde_config",
    "sde_from_config",
    "sde_names",
]
