"""The solver interface: a small object with metadata, ``step`` and ``integrate``.

A solver sees one interval ``t0 -> t1`` (Python floats from the validated grid)
and returns the new ``x`` and its state.  State (multistep history, step index,
weights precomputed for the grid) is passed in and out, never kept on the
solver, so one solver object can serve many runs.  ``integrate`` is the loop
over the grid; methods with their own step-size control (scipy's adaptive
Runge–Kutta) override it, so callers never branch on what kind of method runs.

Metadata is read from the instance built with the user's options (``order``,
``stochastic``, ``expected_nfe``, ``uses``), never from the class alone;
``info`` describes the registered defaults for listings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, ClassVar, Literal

from torch import Tensor

from ..noise import NoiseSource
from ..reverse import ReverseProcess

__all__ = ["NonFiniteError", "Observer", "Solver", "SolverInfo"]

State = Any
Observer = Callable[[int, float, float, Tensor], None]  # (step index, t0, t1, new x)


class NonFiniteError(FloatingPointError):
    """The state became NaN or infinite during a solve."""


@dataclass(frozen=True)
class SolverInfo:
    """A solver with default options, as ``sd.list_solvers()`` and ``sdediff solvers`` show it.

    ``kind`` is the process it integrates ("sde": reverse SDE, "ode": PF-ODE);
    ``order`` the global convergence order (strong order for stochastic methods
    on additive noise); ``nfe_per_step`` the model evaluations per step
    (per Runge–Kutta step for adaptive methods); ``batch_invariant`` whether, with
    per-sample noise (``PerSampleNoise``, what ``sample_batched`` and the CLI use), a
    sample comes out the same bit for bit in any batch (``False``: the method couples
    the batch, e.g. one error norm over all samples).
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
    batch_invariant: bool = True


class Solver:
    """Base class of every sampler; subclasses are registered with ``register_solver``."""

    info: ClassVar[SolverInfo]
    uses: ClassVar[frozenset[str]] = frozenset({"velocity"})
    """What the solver asks of the process: ``velocity``, ``denoise``, ``score``, ``drift``."""

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def kind(self) -> str:
        """``"ode"`` (PF-ODE) or ``"sde"`` (reverse SDE)."""
        return self.info.kind

    @property
    def stochastic(self) -> bool:
        """Whether this instance draws noise (an option may change the class default)."""
        return self.info.stochastic

    @property
    def order(self) -> float:
        """Global order of this instance (options may change the class default)."""
        return self.info.order

    @property
    def batch_invariant(self) -> bool:
        """Whether a sample is independent of its batch (an option may change the default)."""
        return self.info.batch_invariant

    @property
    def nfe_per_step(self) -> int:
        """Model evaluations per step of this instance."""
        return self.info.nfe_per_step

    def expected_nfe(self, grid: list[float]) -> int | None:
        """Model evaluations a run over ``grid`` takes (``None``: chosen adaptively).

        A step to ``t = 0`` uses only its start point, so it costs one evaluation.
        """
        steps = len(grid) - 1
        if grid[-1] == 0.0:
            return (steps - 1) * self.nfe_per_step + 1
        return steps * self.nfe_per_step

    def init(
        self, process: ReverseProcess, grid: list[float], x: Tensor, noise: NoiseSource
    ) -> State:
        """The state before the first step (history, precomputed weights); ``None`` by default."""
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
        """Advance ``x`` from ``t0`` to ``t1``."""
        raise NotImplementedError

    def integrate(
        self,
        process: ReverseProcess,
        grid: list[float],
        x: Tensor,
        noise: NoiseSource,
        observe: Observer,
    ) -> Tensor:
        """Step through ``grid``; ``observe(i, t0, t1, x)`` sees each new ``x``."""
        state = self.init(process, grid, x, noise)
        for i, (t0, t1) in enumerate(pairwise(grid)):
            x, state = self.step(process, t0, t1, x, state, noise)
            observe(i, t0, t1, x)
        return x

    def options(self) -> dict[str, Any]:
        """The constructor options of this instance (for repr, results, the CLI)."""
        return dict(vars(self))

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"
