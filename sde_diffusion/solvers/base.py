"""The solver interface: a small object with metadata and ``step`` (or ``attempt``).

A fixed-grid solver sees one interval ``t0 -> t1`` (Python floats from the validated
grid) and returns the new ``x`` and its state.  State (multistep history, step index,
weights precomputed for the grid) is passed in and out, never kept on the solver, so
one solver object can serve many runs.  The loop over the grid is
:func:`sde_diffusion.loop.integrate`, the same for every method: a solver says *how* to
step, its ``controller`` says *where*, and ``legs`` may split the grid into pieces with
forward re-noisings between them (restart sampling).  An :class:`AdaptiveSolver` gives an
embedded error estimate per sample (``attempt``) and steps under a
:class:`~sde_diffusion.controllers.PIDController`.

Metadata is read from the instance built with the user's options (``order``,
``stochastic``, ``expected_nfe``, ``uses``), never from the class alone;
``info`` describes the registered defaults for listings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch import Tensor

from ..controllers import FIXED_GRID, FixedGrid, PIDController
from ..errors import NonFiniteError
from ..noise import NoiseSource
from ..reverse import ReverseProcess

__all__ = ["AdaptiveSolver", "Leg", "NonFiniteError", "Observer", "Solver", "SolverInfo"]

State = Any
Observer = Callable[[int, float, float, Tensor], None]  # (step index, t0, t1, new x)


@dataclass(frozen=True)
class Leg:
    """A piece of the path the loop steps with the solver: ``times`` (a decreasing grid),
    after a forward jump ``x/α ← x/α + renoise·ξ`` from the previous leg's end when
    ``renoise > 0``.  ``first_index`` is the grid index of the leg's first step for the
    observer; ``None``: the leg's steps are not grid steps and are not observed.  ``plan``,
    when given, is the state the leg starts with in place of ``init``'s (what the solver
    decided while splitting the grid: dpm_fast's order of each step)."""

    times: list[float]
    renoise: float = 0.0
    first_index: int | None = 0
    plan: Any = None


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
    """What the solver asks of the process: ``velocity``, ``denoise``, ``score``, ``drift``,
    ``guided`` (CFG++: the guided and the unconditional x̂_0 of one guided call)."""
    controller: FixedGrid | PIDController = FIXED_GRID
    """Where the loop steps: the grid, or a per-sample PID controller (adaptive solvers)."""

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

    @property
    def adaptive(self) -> bool:
        """Whether this instance chooses its own steps (the one place callers ask)."""
        return self.controller.adaptive

    def expected_nfe(self, grid: list[float]) -> int | None:
        """Model evaluations a run over ``grid`` takes (``None``: chosen adaptively).

        A step to ``t = 0`` uses only its start point, so it costs one evaluation.
        """
        if self.adaptive:
            return None
        steps = len(grid) - 1
        if grid[-1] == 0.0:
            return (steps - 1) * self.nfe_per_step + 1
        return steps * self.nfe_per_step

    def steps_for(self, nfe: int, to_zero: bool = True) -> int | None:
        """The most grid steps whose ``expected_nfe`` fits ``nfe`` (``None``: even the
        shortest grid, 2 steps to zero or else 1, costs more, or the solver is adaptive)."""
        if self.adaptive:
            return None

        def cost(steps: int) -> int:  # only the length and a final zero matter
            grid = [float(steps + 1 - i) for i in range(steps + 1)]  # ends at 1, not 0
            if to_zero:
                grid[-1] = 0.0
            return self.expected_nfe(grid)

        low = 2 if to_zero else 1  # cost grows with the steps: bisect (a cost is O(steps))
        if cost(low) > nfe:
            return None
        high = low + 1
        while cost(high) <= nfe:
            low, high = high, 2 * high
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if cost(middle) <= nfe else (low, middle)
        return low

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

    def legs(self, process: ReverseProcess, grid: list[float]) -> list[Leg]:
        """The pieces the loop steps: the whole grid, by default."""
        return [Leg(grid)]

    def options(self) -> dict[str, Any]:
        """The constructor options of this instance (for repr, results, the CLI)."""
        return dict(vars(self))

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


class AdaptiveSolver(Solver):
    """A solver with an embedded error estimate, stepped per sample under ``controller``.

    It works in its own coordinate ``s`` (time, or log-SNR) on its own state ``y``
    (``x``, or ``x/α``); the loop moves every sample from grid time to grid time with
    steps the controller sizes, calling ``attempt`` on the rows still short of the
    next one.  ``error_order`` is the ``p`` of the controller's exponents, ``setup_nfe``
    the evaluations ``start`` spends, ``min_step`` the step size below which the loop
    stops with a :class:`NonFiniteError`.
    """

    controller: PIDController
    error_order: ClassVar[float]
    setup_nfe: ClassVar[int] = 0
    min_step: ClassVar[float] = 1e-12
    coordinate_tolerance: ClassVar[float] = 0.0
    """A sample is done with a grid interval within this distance of its end."""

    def coordinate(self, process: ReverseProcess, t: float) -> float:
        """The coordinate of grid time ``t`` (the time itself, by default)."""
        return t

    def time_of(self, process: ReverseProcess, s: Tensor) -> Tensor:
        """The times of coordinates ``s`` (for messages)."""
        return s

    def enter(self, process: ReverseProcess, t: float, x: Tensor) -> Tensor:
        """The solver's state ``y`` of ``x`` at grid time ``t``."""
        return x

    def leave(self, process: ReverseProcess, t: float, y: Tensor) -> Tensor:
        """``x`` of the solver's state ``y`` at grid time ``t``."""
        return y

    def start(
        self, process: ReverseProcess, y: Tensor, s: Tensor, direction: float, span: float
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The first step sizes ``|h|`` (shape ``(B,)``) and the per-sample state."""
        raise NotImplementedError

    def attempt(
        self,
        process: ReverseProcess,
        y: Tensor,
        s: Tensor,
        s_next: Tensor,
        rows: Tensor | slice,
        state: dict[str, Tensor],
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """One step of the batch rows ``rows`` (indices, or ``slice(None)``: all) from ``s``
        to ``s_next``: the new ``y``, the
        per-sample scaled error norm (``controller.error``) and the state if accepted."""
        raise NotImplementedError

    def expected_nfe(self, grid: list[float]) -> int | None:
        return None
