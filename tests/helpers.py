"""Shared problems for the solver tests: exact scores, reference solutions, slopes."""

import math
import subprocess
import time
from collections.abc import Callable

import numpy as np
import torch

import sde_diffusion as sd
from sde_diffusion.solvers.registry import solver_class


def small_mixture() -> sd.GaussianMixture:
    """Three overlapping, correlated 2-D components with unequal weights."""
    means = torch.tensor([[-2.0, 0.5], [1.5, -1.0], [0.0, 2.5]], dtype=torch.float64)
    covs = torch.tensor(
        [[[0.5, 0.2], [0.2, 0.3]], [[0.2, -0.1], [-0.1, 0.4]], [[0.1, 0.0], [0.0, 0.6]]],
        dtype=torch.float64,
    )
    return sd.GaussianMixture(means, covs, [0.2, 0.5, 0.3])


def gaussian_score(sde: sd.SDE, data_std: float = 0.7):
    """Exact score of p_t for data N(0, data_std^2 I), for any event shape."""

    def score_fn(x, t):
        var = sde.alpha(t) ** 2 * data_std**2 + sde.sigma(t) ** 2
        return -x / sd.append_dims(var.to(x), x.ndim)

    return score_fn


def info(name: str) -> sd.SolverInfo:
    return solver_class(name).info


def names(predicate=lambda s: True) -> list[str]:
    """Registered solvers whose default instance satisfies ``predicate``."""
    return [n for n in sd.solver_names() if predicate(sd.get_solver(n))]


def adaptive(solver: sd.Solver) -> bool:
    return solver.adaptive


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).flatten(1).pow(2).sum(1).mean().sqrt())


def fitted_order(steps: list[int], errors: list[float]) -> float:
    """Minus the least-squares slope of log(error) against log(steps)."""
    return -float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


def moment_bounds(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, k: float = 4.5):
    """Largest |error| / standard error over the mean and covariance entries."""
    n = x.shape[0]
    m = x.mean(0)
    c = x - m
    products = c[:, :, None] * c[:, None, :]
    se_mean = x.std(0) / math.sqrt(n)
    se_cov = products.std(0) / math.sqrt(n)
    z_mean = ((m - mean).abs() / se_mean).max()
    z_cov = ((products.mean(0) - cov).abs() / se_cov).max()
    return float(z_mean), float(z_cov)


def wait_until(proc: subprocess.Popen, ready: Callable[[], bool]) -> None:
    """Poll until ``ready()`` (a file exists, has grown): a test waits for the state it
    needs, never for a fixed delay.  Fails if ``proc`` ends first."""
    while not ready():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)


def run_in(folder, *args):
    """``sdediff ARGS`` through click's test runner, in ``folder`` (relative paths there)."""
    import os

    from click.testing import CliRunner
    from sdediff_cli.main import main

    old = os.getcwd()
    os.chdir(folder)
    try:
        return CliRunner().invoke(main, [str(a) for a in args])
    finally:
        os.chdir(old)
