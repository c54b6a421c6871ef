"""RePaint (Lugmayr et al. 2022): replacement with resampling.

Replacement (:mod:`.replacement`) leaves the two parts of the image out of step; RePaint
gives them time to agree by travelling back: after reaching certain times it re-noises the
state ``jump`` steps up the grid with the forward process, ``x_b/α_b = x_a/α_a +
√(ν_b² − ν_a²) z``, and solves down again, ``resample`` times in all (the paper's jump
schedule, §4.2; ``jump = 10``, ``resample = 10`` there).  Every step down is a solver step
followed by replacement; DDPM (``ddim`` with ``η = 1``) by default, as in the paper.  The
network passes grow to about ``resample`` times the grid's steps.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any, ClassVar

from ..loop import integrate
from ..noise import GeneratorNoise
from ..sampling import SampleResult
from .base import Method, OwnLoop, whole
from .replacement import replacer

__all__ = ["RePaint", "repaint_walk"]


def repaint_walk(steps: int, jump: int, resample: int) -> list[int]:
    """The grid indices RePaint visits on a grid of ``steps`` intervals (0: the start)."""
    left = {k: resample - 1 for k in range(0, steps - jump, jump)}  # steps left to the end
    k, path = steps, [0]
    while k >= 1:
        k -= 1
        path.append(steps - k)
        if left.get(k, 0) > 0:
            left[k] -= 1
            for _ in range(jump):
                k += 1
                path.append(steps - k)
    return path


class RePaint(Method):
    """Replacement with the forward jumps of RePaint (see the module)."""

    name = "repaint"
    reference = "Lugmayr et al. 2022, Algorithm 1"
    needs_svd = True
    default_solver = "ddim"
    default_solver_options: ClassVar[dict[str, Any]] = {"eta": 1.0}

    def __init__(self, jump: int = 10, resample: int = 10):
        self.jump = whole("jump", jump, 1, 10_000)
        self.resample = whole("resample", resample, 1, 1_000)

    def down_steps(self, steps: int) -> int:
        """Solver steps a grid of ``steps`` intervals costs."""
        path = repaint_walk(steps, self.jump, self.resample)
        return sum(b > a for a, b in pairwise(path))

    def run(self, model, sde, obs, x_T, grid, solver, generator, cond=None) -> SampleResult:
        loop = OwnLoop(self, model, sde, x_T, grid, generator, cond)
        hook, noise = replacer(sde, obs, x_T, generator), GeneratorNoise(generator)
        path = repaint_walk(len(grid) - 1, self.jump, self.resample)
        x, i = x_T, 0
        while i < len(path) - 1:
            j = i
            while j + 1 < len(path) and path[j + 1] > path[j]:
                j += 1
            if j > i:  # down from grid index path[i] to path[j]
                leg = [grid[k] for k in range(path[i], path[j] + 1)]
                x = integrate(solver, loop.process, leg, x, noise, lambda *a: None, hook)
                i = j
                continue
            while j + 1 < len(path) and path[j + 1] < path[j]:
                j += 1
            lo, hi = grid[path[i]], grid[path[j]]  # up: forward noising from lo to hi
            lift = max(loop.nu(hi) ** 2 - loop.nu(lo) ** 2, 0.0) ** 0.5
            x = loop.alpha(hi) * (x / loop.alpha(lo) + lift * loop.noise(x))
            i = j
        return loop.result(x, solver.name)
