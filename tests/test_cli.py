"""The sdediff command line."""

import shutil
import subprocess
import sys

from click.testing import CliRunner
from sdediff_cli.main import main

import sde_diffusion as sd


def test_solvers_table_lists_the_registry():
    result = CliRunner().invoke(main, ["solvers"])
    assert result.exit_code == 0
    for name in sd.solver_names():
        assert name in result.output


def test_solvers_kind_filter():
    result = CliRunner().invoke(main, ["solvers", "--kind", "ode"])
    assert result.exit_code == 0
    assert "dpmpp_2m" in result.output and "euler_maruyama" not in result.output


def test_usage_error_exits_2():
    result = CliRunner().invoke(main, ["solvers", "--kind", "banana"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_installed_entry_point_runs():
    exe = shutil.which("sdediff")
    assert exe is not None, "the sdediff console script is not installed"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    assert "solvers" in out.stdout


def test_python_dash_m_runs():
    out = subprocess.run(
        [sys.executable, "-m", "sde_diffusion", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert sd.__version__ in out.stdout
