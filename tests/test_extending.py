"""A new solver or a new SDE is one new file: no other file is edited.

A copy of the package gets one throwaway solver module and one throwaway SDE module; the
copy then lists them (``sdediff solvers``), samples with them from the command line (the
solver's option as a flag, the SDE in ``--sde``), runs them through the registry-driven
tests, and documents them on the API pages.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SOLVER = '''
"""Explicit midpoint with a free stage point (a throwaway method for the extension test)."""

from sde_diffusion.solvers.base import Solver
from sde_diffusion.solvers.registry import register_solver


@register_solver("theta_midpoint", kind="ode", order=2, nfe_per_step=2, stochastic=False)
class ThetaMidpoint(Solver):
    """Second-order two-stage Runge-Kutta with its stage at theta of the step."""

    def __init__(self, theta: float = 0.5):
        self.theta = float(theta)

    def step(self, process, t0, t1, x, state, noise):
        if t1 == 0.0:  # the last step of a grid ending at t = 0: the Tweedie step
            return process.denoise(x, t0), state
        h, th = t1 - t0, self.theta
        k1 = process.velocity(x, t0)
        k2 = process.velocity(x + th * h * k1, t0 + th * h)
        return x + h * ((1 - 1 / (2 * th)) * k1 + k2 / (2 * th)), state
'''

SDE = '''
"""The cosine VP schedule (a throwaway SDE for the extension test)."""

import math

import torch

from sde_diffusion.sdes.base import SDE, broadcast_coefficient
from sde_diffusion.sdes.registry import register_sde


@register_sde("cosine_vp")
class CosineVP(SDE):
    """alpha = cos(pi t / 2), sigma = sin(pi t / 2) (Nichol & Dhariwal 2021)."""

    def __init__(self, t_min: float = 1e-3, T: float = 0.99):
        self.t_min, self.T = float(t_min), float(T)

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * self.check_time(t))

    def sigma(self, t):
        return torch.sin(0.5 * math.pi * self.check_time(t))

    def drift_coefficient(self, t):
        return -0.5 * math.pi * torch.tan(0.5 * math.pi * self.check_time(t))

    def drift(self, x, t):
        return broadcast_coefficient(self.drift_coefficient(t), x) * x

    def diffusion(self, t):
        return torch.sqrt(-2 * self.drift_coefficient(t))
'''


@pytest.fixture(scope="module")
def extended(tmp_path_factory):
    """A copy of the package and the command line with the two new files, and the
    environment that imports the copy."""
    root = tmp_path_factory.mktemp("extended")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "sde_diffusion", root / "sde_diffusion", ignore=ignore)
    shutil.copytree(ROOT / "cli", root / "sdediff_cli", ignore=ignore)
    shutil.copytree(ROOT / "docs", root / "docs", ignore=ignore)
    (root / "sde_diffusion" / "solvers" / "theta_midpoint.py").write_text(SOLVER)
    (root / "sde_diffusion" / "sdes" / "cosine_vp.py").write_text(SDE)
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "200"}
    return root, env


def _run(args, env, cwd):
    result = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_the_copy_is_what_runs(extended):
    root, env = extended
    out = _run(
        [sys.executable, "-c", "import sde_diffusion; print(sde_diffusion.__file__)"], env, root
    )
    assert out.strip().startswith(str(root))


def test_a_new_solver_and_sde_reach_the_command_line(extended, tmp_path):
    _root, env = extended
    cli = [sys.executable, "-m", "sde_diffusion"]
    assert "theta_midpoint" in _run([*cli, "solvers"], env, tmp_path)
    assert "--theta" in _run([*cli, "sample", "--help"], env, tmp_path)
    assert "cosine_vp" in _run([*cli, "sample", "--help"], env, tmp_path)
    out = tmp_path / "ring.npz"
    sample = ["sample", "--model", "gmm8", "--sde", "cosine_vp", "--solver", "theta_midpoint"]
    _run(
        [*cli, *sample, "--theta", "0.6", "--steps", "12", "-n", "32", "--out", str(out)],
        env,
        tmp_path,
    )
    assert out.stat().st_size > 0


def test_a_new_solver_and_sde_join_the_registry_driven_tests(extended):
    root, env = extended
    tests = [str(ROOT / "tests" / name) for name in ("test_solvers.py", "test_sdes.py")]
    out = _run(
        [
            sys.executable,
            "-m",
            "pytest",
            *tests,
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "theta_midpoint or cosine_vp",
            "--rootdir",
            str(ROOT),
        ],
        env,
        root,
    )
    counts = out.strip().splitlines()[-1]
    assert "failed" not in counts and int(counts.split()[0]) >= 8, counts


def test_a_new_solver_and_sde_are_on_the_api_pages(extended):
    root, env = extended
    script = (
        "import sys; sys.path.insert(0, 'docs'); from hooks import module_entries; "
        "print(module_entries('sde_diffusion.solvers'), module_entries('sde_diffusion.sdes'))"
    )
    out = _run([sys.executable, "-c", script], env, root)
    assert "::: sde_diffusion.solvers.theta_midpoint" in out
    assert "::: sde_diffusion.sdes.cosine_vp" in out
