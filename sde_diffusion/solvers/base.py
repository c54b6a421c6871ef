"""The solver interface: a small object with metadata and a ``step``.

``sampling.solve`` owns the loop; a solver sees one interval ``t0 -> t1``
(``t1 < t0``, Python floats from the validated grid) and returns the new
``x`` and its state.  State (multistep history, step index) is passed in and
out, never kept on the solver, so one solver object can serve many runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch import Tensor

from ..noise import NoiseSource
from ..reverse import ReverseProcess

__all__ = ["Solver", "SolverInfo"]

State = Any


@dataclass(frozen=True)
class SolverInfo:
    """What a solver is: shown by ``sd.list_solvers()`` and ``sdediff solvers``.

    ``kind`` is the process it integrates ("sde": reverse SDE, "ode": PF-ODE);
    ``order`` the global convergence order with default options (strong order
    for stochastic methods on additive noise); ``nfe_per_step`` the score
    evaluations per step with default options.
    """

    name: str
    kind: Literal["sde", "ode"]
    order: float
    nfe_per_step: int
    stochastic: bool
    summary: str
    reference: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    adaptive: bool = False


class Solver:
    """Base class of every sampler; subclasses are registered with ``register_solver``."""

    info: ClassVar[SolverInfo]

    @property
    def stochastic(self) -> bool:
        """Whether this instance draws noise (an option may change the class default)."""
        return self.info.stochastic

    @property
    def order(self) -> float:
        """Global order of this instance (options may change the class default)."""
        return self.info.order

    def expected_nfe(self, grid: list[float]) -> int:
        """Score evaluations a run over ``grid`` takes: a step to ``t = 0`` uses
        only its start point, so it costs one evaluation."""
        steps = len(grid) - 1
        if grid[-1] == 0.0:
            return (steps - 1) * self.info.nfe_per_step + 1
        return steps * self.info.nfe_per_step

    def init(
        self, process: ReverseProcess, grid: list[float], x: Tensor, noise: NoiseSource
    ) -> State:
        """The state before the first step (history, counters); ``None`` by default."""
        return None

    def step(
        self,
        process: ReverseProcess,
        t0: float,
        t1: float,
        x: Tensor,
        state: State,
        noise: NoiseSource,
    ) -> tuple[Tensor, State]:
        """Advance ``x`` from ``t0`` to ``t1 < t0``."""
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """The constructor options of this instance (for repr, results, the CLI)."""
        return dict(vars(self))

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"
