"""Hostile input, generated: every case must end cleanly.

A clean ending is exit 0 with finite outputs, exit 2 (usage) or 1 (runtime) with an
``Error:`` sentence and no traceback, and never a hang (each case has a time limit);
the API raises ``ValueError``/``TypeError`` with a sentence.  The command line is driven
through click's ``CliRunner`` (in process) and, for a sample of cases, through real
``sdediff`` subprocesses.

The default profile runs over 1000 cases; ``pytest --hypothesis-profile=full
tests/test_fuzz.py`` runs about ten times as many.  ``-s`` prints the tally: cases,
clean endings, and the slowest case.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from sdediff_cli.main import main

import sde_diffusion as sd
from sde_diffusion.solvers.registry import solver_class, solver_options
from sde_diffusion.training.checkpoint import load_checkpoint, save_checkpoint

CASE_LIMIT_S = 120  # a case still running after this is a hang
TALLY = {"cases": 0, "clean": 0, "slowest": (0.0, "")}


def examples(default: int):
    """``default`` examples, ten times as many under ``--hypothesis-profile=full``."""
    full = settings().max_examples >= 1000
    return settings(
        max_examples=default * 10 if full else default,
        deadline=None,
        derandomize=not full,
        phases=[Phase.explicit, Phase.reuse, Phase.generate],  # report, do not shrink (slow)
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@pytest.fixture(scope="module", autouse=True)
def tally():
    yield
    seconds, case = TALLY["slowest"]
    print(
        f"\nfuzz: {TALLY['cases']} cases, {TALLY['clean']} clean endings, "
        f"slowest {seconds:.2f} s: {case}"
    )


class Hang(Exception):
    pass


@contextmanager
def case(description: str):
    """Count a case, time it, and fail it if it runs past ``CASE_LIMIT_S``."""

    def alarm(signum, frame):
        raise Hang(f"still running after {CASE_LIMIT_S} s: {description}")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(CASE_LIMIT_S)
    start = time.perf_counter()
    TALLY["cases"] += 1
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    took = time.perf_counter() - start
    TALLY["clean"] += 1  # reached only when the case's checks passed
    if took > TALLY["slowest"][0]:
        TALLY["slowest"] = (took, description)


# -- values a hostile user types -------------------------------------------------------

NUMBERS = [
    "-1", "0", "1", "0.5", "-0.0", "1e-300", "1e300", "1e400", "nan", "-nan", "inf", "-inf",
    str(2**31), str(10**9), str(2**63 - 1), str(2**63), str(2**64), str(10**30), "-" + str(2**64),
]  # fmt: skip
TEXT = [
    "",
    " ",
    "abc",
    "1,2",
    ",",
    "1,,2",
    "nan,inf",
    "0x10",
    "1_000",
    "☃",
    "-",
    "--",
    "/",
    "a\x00b",
    "new/dir/x.npz",
]


def _not_a_count(text: str) -> bool:
    """Plain numbers are drawn from NUMBERS: a random mid-sized one can be a legitimate
    request for hours of work (``train --steps 500000``), which is not a hang."""
    try:
        return not 1e4 <= abs(float(text)) < 1e9
    except ValueError:
        return True


hostile = st.one_of(
    st.sampled_from(NUMBERS + TEXT),
    st.floats(allow_nan=True, allow_infinity=True).map(repr).filter(_not_a_count),
    st.text(max_size=6).filter(_not_a_count),
)

# a cheap, valid run of each subcommand; one option at a time is then made hostile
BASE = {
    "sample": "--model gmm8 -n 4 --steps 2 --out s.png",
    "train": "--data moons --steps 2 --batch-size 8 --width 8 --checkpoint-every 1 "
    "--out m.safetensors",
    "tune": "--model gmm8 --solver euler --nfe 3 --samples 8 --max-evaluations 4 --out g.json",
    "bench": "--model gmm8 --solvers euler --nfe 4 -n 8 --out b.json",
    "likelihood": "--model gmm8 -n 4 --batch-size 4 --estimator ode --solver euler --steps 4",
    "solvers": "",
    "distill": "--teacher moons --steps 2 --teacher-steps 4 --train-steps 2 --batch-size 8 "
    "--checkpoint-every 1 --out s.safetensors",
}
OPTIONS = {
    name: [p for p in main.commands[name].params if isinstance(p, click.Option)] for name in BASE
}


def with_value(base: list[str], flag: str, value: str) -> list[str]:
    """``base`` with ``flag`` set to ``value`` (replaced if present, else appended)."""
    args = list(base)
    if flag in args:
        args[args.index(flag) + 1] = value
        return args
    return [*args, flag, value]


def solver_for(option: str) -> str | None:
    """A solver that takes the solver option ``option`` (its CLI flag's name)."""
    for name in sd.solver_names():
        if option in solver_options(solver_class(name)):
            return name
    return None


def check_outputs(folder: Path) -> None:
    """What a successful run wrote holds only finite numbers."""
    for path in folder.iterdir():
        if path.suffix == ".npz":
            data = np.load(path)
            assert np.isfinite(data["samples"]).all(), path
        elif path.suffix == ".safetensors":
            tensors, _ = load_checkpoint(path)
            assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())
        elif path.suffix == ".json":
            text = path.read_text()
            assert "NaN" not in text and "Infinity" not in text, path  # not JSON
            json.loads(text)


def assert_clean(result, args: list[str], folder: Path) -> None:
    """Exit 0 with finite outputs, or 1/2 with one ``Error:`` sentence; never a traceback."""
    shown = f"sdediff {' '.join(args)} -> {result.exit_code}\n{result.output}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{shown}\nraised {result.exception!r}") from result.exception
    assert result.exit_code in (0, 1, 2), shown
    assert "Traceback" not in result.output, shown
    if result.exit_code == 0:
        check_outputs(folder)
    else:
        errors = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and len(errors[0]) > len("Error: ") + 10, shown


def invoke(args: list[str], folder: Path):
    return CliRunner().invoke(main, args, catch_exceptions=True, env={"COLUMNS": "200"})


@pytest.fixture
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def fresh(folder: Path) -> Path:
    """An empty folder of its own for one case."""
    case_dir = folder / f"case{TALLY['cases']}"
    case_dir.mkdir()
    return case_dir


def run_in(case_dir: Path, args: list[str]):
    cwd = Path.cwd()
    try:
        import os

        os.chdir(case_dir)
        return invoke(args, case_dir)
    finally:
        os.chdir(cwd)


# -- the command line, one hostile option at a time -------------------------------------


@examples(320)
@given(data=st.data())
def test_every_option_of_every_subcommand_takes_hostile_values_cleanly(folder, data):
    command = data.draw(st.sampled_from(sorted(BASE)), label="command")
    option = data.draw(st.sampled_from(OPTIONS[command]), label="option")
    flag = max(option.opts, key=len)
    base = BASE[command].split()
    if command == "sample" and option.name not in {p.name for p in OPTIONS["train"]}:
        solver = solver_for(option.name)  # a solver flag: run a solver that takes it
        if solver is not None and flag != "--solver":
            base = with_value(base, "--solver", solver)
    if option.is_flag:
        args = [*base, flag]
    else:
        args = with_value(base, flag, data.draw(hostile, label="value"))
    here = fresh(folder)
    with case(" ".join([command, *args])):
        assert_clean(run_in(here, [command, *args]), [command, *args], here)


# -- damaged, foreign and tampered checkpoints -------------------------------------------


def tampered_checkpoint(path: Path, how: str, source: Path) -> None:
    raw = source.read_bytes()
    tensors, config = load_checkpoint(source)
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "header only":
        path.write_bytes(raw[:8])
    elif how == "garbage":
        path.write_bytes(b"\x00\x01not a checkpoint" * 10)
    elif how == "foreign":
        save_file({"w": torch.zeros(3)}, path)
    elif how.startswith("config "):
        value = {
            "config list": [1, 2],
            "config number": 3,
            "config string": "x",
            "config empty": {},
            "config no network": {k: v for k, v in config.items() if k != "network"},
            "config bad sde": {**config, "sde": {"name": "nope"}},
            "config bad width": {**config, "network": {**config["network"], "width": -3}},
            "config nan norm": {**config, "data": {**config.get("data", {}), "mean": [math.nan]}},
        }[how]
        save_checkpoint(path, tensors, value)
    elif how == "metadata not json":
        save_file(tensors, path, metadata={"format": "sde-diffusion/1", "config": "{oops"})
    elif how == "wrong tensor shapes":
        save_checkpoint(path, {k: v.flatten()[:1] for k, v in tensors.items()}, config)
    elif how == "missing tensors":
        save_checkpoint(path, dict(list(tensors.items())[:1]), config)
    elif how == "nan weights":
        save_checkpoint(
            path,
            {k: v * math.nan if v.is_floating_point() else v for k, v in tensors.items()},
            config,
        )
    else:
        raise AssertionError(how)


TAMPERS = [
    "empty", "truncated", "header only", "garbage", "foreign", "config list", "config number",
    "config string", "config empty", "config no network", "config bad sde", "config bad width",
    "config nan norm", "metadata not json", "wrong tensor shapes", "missing tensors", "nan weights",
]  # fmt: skip
USES = {
    "sample": "sample --model {} -n 4 --steps 2 --out s.npz",
    "info": "info {}",
    "likelihood": "likelihood --model {} -n 4 --steps 2 --solver euler",
    "resume": "train --resume {} --steps 3",
    "tune": "tune --model {} --solver euler --nfe 3 --samples 4 --max-evaluations 3",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real two-step training checkpoint to damage."""
    where = tmp_path_factory.mktemp("trained")
    result = run_in(where, ["train", *BASE["train"].split()])
    assert result.exit_code == 0, result.output
    return where / "m.safetensors"


@examples(70)
@given(how=st.sampled_from(TAMPERS), use=st.sampled_from(sorted(USES)))
def test_damaged_or_tampered_checkpoints_are_clean_errors(folder, trained, how, use):
    here = fresh(folder)
    tampered_checkpoint(here / "x.safetensors", how, trained)
    args = USES[use].format("x.safetensors").split()
    with case(f"{how} checkpoint: sdediff {' '.join(args)}"):
        result = run_in(here, args)
        assert_clean(result, args, here)
        assert result.exit_code != 0 or how in ("config nan norm",), result.output


# -- data files: wrong shapes, non-finite values, strings, non-images --------------------


def bad_data(folder: Path, how: str) -> str:
    """Write data of kind ``how`` into ``folder``; the ``--data`` value naming it."""
    arrays = {
        "zero rows": np.zeros((0, 2), np.float32),
        "one dim": np.zeros(5, np.float32),
        "five dims": np.zeros((2, 1, 1, 2, 2), np.float32),
        "nan": np.full((16, 2), np.nan, np.float32),
        "inf": np.full((16, 2), np.inf, np.float32),
        "huge": np.full((16, 2), 1e30, np.float32),
        "strings": np.array([["a", "b"]] * 16),
        "objects": np.array([{"a": 1}] * 16, dtype=object),
        "complex": np.zeros((16, 2), np.complex64),
        "constant": np.ones((16, 2), np.float32),
        "scalar": np.float32(3.0),
        "wide images": np.zeros((16, 3, 5, 7, 2), np.float32),
    }
    if how in arrays:
        path = folder / "d.npy"
        np.save(path, arrays[how], allow_pickle=how == "objects")
        return path.name
    if how == "npz without x":
        np.savez(folder / "d.npz", y=np.zeros(3))
        return "d.npz"
    if how == "npz two arrays":
        np.savez(folder / "d.npz", a=np.zeros((4, 2)), b=np.zeros((4, 3)))
        return "d.npz"
    if how == "truncated npy":
        np.save(folder / "d.npy", np.zeros((100, 2), np.float32))
        raw = (folder / "d.npy").read_bytes()
        (folder / "d.npy").write_bytes(raw[:200])
        return "d.npy"
    if how == "text as npy":
        (folder / "d.npy").write_text("not numpy")
        return "d.npy"
    images = folder / "imgs"
    images.mkdir()
    if how == "empty folder":
        return "imgs"
    if how == "non-images":
        for i in range(3):
            (images / f"{i}.png").write_text("not a picture")
        return "imgs"
    if how == "mixed sizes":
        from PIL import Image

        for i, size in enumerate([(8, 8), (9, 7), (8, 8)]):
            Image.new("L", size).save(images / f"{i}.png")
        return "imgs"
    raise AssertionError(how)


DATA = [
    "zero rows", "one dim", "five dims", "nan", "inf", "huge", "strings", "objects", "complex",
    "constant", "scalar", "wide images", "npz without x", "npz two arrays", "truncated npy",
    "text as npy", "empty folder", "non-images", "mixed sizes",
]  # fmt: skip


@examples(50)
@given(how=st.sampled_from(DATA), use=st.sampled_from(["train", "likelihood"]))
def test_bad_data_files_are_clean_errors(folder, how, use):
    here = fresh(folder)
    name = bad_data(here, how)
    if use == "train":
        args = with_value(BASE["train"].split(), "--data", name)
    else:
        args = ["--model", "gmm8", "--data", name, "-n", "4", "--solver", "euler", "--steps", "2"]
    args = [use, *args]
    with case(f"{how} data: sdediff {' '.join(args)}"):
        result = run_in(here, args)
        assert_clean(result, args, here)
        # data of huge magnitude has a finite (tiny) likelihood; constant data trains
        assert result.exit_code != 0 or how in ("constant", "huge" * (use == "likelihood"))


# -- TOML configs: bad types and unknown keys ---------------------------------------------

TOML_VALUES = ['"moons"', '""', "10.5", "true", "-1", "0", "nan", "inf", "[1, 2]", "{a = 1}"]
TOML_VALUES += [str(2**64), "1e400", '"2000"', "1979-05-27", '"vp"', "3"]
toml_values = st.sampled_from(TOML_VALUES)
TOML_KEYS = ["data", "sde", "network", "width", "steps", "batch_size", "lr", "ema", "seed"]
TOML_KEYS += ["checkpoint_every", "parametrization", "cond_drop", "unknown_key", "train"]


@examples(40)
@given(key=st.sampled_from(TOML_KEYS), value=toml_values)
def test_bad_toml_configs_are_clean_errors(folder, key, value):
    here = fresh(folder)
    (here / "c.toml").write_text(f"{key} = {value}\n")
    flags = {"--steps": "2", "--batch-size": "8", "--width": "8", "--out": "m.safetensors"}
    flags.pop(f"--{key.replace('_', '-')}", None)  # the file's value is the one used
    args = ["train", "--config", "c.toml", *(x for kv in flags.items() for x in kv)]
    with case(f"config {key} = {value}"):
        assert_clean(run_in(here, args), args, here)


# -- real subprocesses ----------------------------------------------------------------------


@examples(8)
@given(data=st.data())
def test_hostile_sample_options_in_a_real_process_end_in_one_line(folder, data):
    option = data.draw(st.sampled_from(OPTIONS["sample"]), label="option")
    flag = max(option.opts, key=len)
    typed = [v for v in NUMBERS + TEXT if "\0" not in v]  # a process argument cannot hold NUL
    value = data.draw(st.sampled_from(typed), label="value")
    base = BASE["sample"].split()
    args = ["sample", *([*base, flag] if option.is_flag else with_value(base, flag, value))]
    here = fresh(folder)
    with case("subprocess sdediff " + " ".join(args)):
        proc = subprocess.run(
            [sys.executable, "-m", "sde_diffusion", *args],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=CASE_LIMIT_S,
            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        )
        shown = f"{args} -> {proc.returncode}\n{proc.stderr}"
        assert proc.returncode in (0, 1, 2) and "Traceback" not in proc.stderr, shown
        if proc.returncode:
            assert [line for line in proc.stderr.splitlines() if line.startswith("Error")], shown
        else:
            check_outputs(here)


# -- the public API ---------------------------------------------------------------------------

API_ERRORS = (ValueError, TypeError)  # sd.NonFiniteError is a FloatingPointError: also clean
odd_numbers = st.one_of(
    st.sampled_from([0, -1, 1, 2, 2.5, 10**9, 2**64, -(2**64), math.nan, math.inf, -math.inf]),
    st.sampled_from(["", "3", None, True, [3], (2,), torch.tensor(3.0)]),
)


def api_case(description: str, call) -> object | None:
    """Run ``call()``; a clean ending is a result or a ValueError/TypeError with a sentence."""
    with case(description):
        try:
            return call()
        except (*API_ERRORS, sd.NonFiniteError) as err:
            assert len(str(err)) > 15 and " " in str(err), f"{description}: {err!r}"
            return None


@examples(60)
@given(
    steps=odd_numbers,
    schedule=st.one_of(st.sampled_from(sd.SCHEDULES), st.text(max_size=5), odd_numbers),
    shape=st.one_of(
        st.sampled_from([(4, 2), (0, 2), (4, 3), (4,), (), (-1, 2), (4, 2, 1), (2**40, 2)]),
        st.sampled_from([None, "4,2", (4.5, 2), [4, 2]]),
    ),
    solver=st.one_of(
        st.sampled_from(["heun", "euler_maruyama", "rk45", "pc"]), st.text(max_size=5)
    ),
    seed=odd_numbers,
)
def test_sample_with_hostile_arguments_is_a_clean_error_or_finite(
    steps, schedule, shape, solver, seed
):
    sde, gmm = sd.EDMSDE(), sd.eight_gaussians()
    res = api_case(
        f"sd.sample(shape={shape!r}, solver={solver!r}, steps={steps!r}, schedule={schedule!r}, "
        f"seed={seed!r})",
        lambda: sd.sample(gmm.score_fn(sde), sde, shape, solver, steps, schedule, seed=seed),
    )
    if res is not None:
        assert res.x.shape == tuple(shape) and torch.isfinite(res.x).all()


def score_returning(kind: str):
    def score(x, t):
        t = torch.as_tensor(t, dtype=x.dtype)
        t = t.reshape(-1, *[1] * (x.ndim - 1)) if t.ndim else t
        out = -x / (1 + t**2)
        return {
            "wrong shape": out[:, :1],
            "nan": out * math.nan,
            "inf": out + math.inf,
            "int": out.long(),
            "list": out.tolist(),
            "none": None,
            "scalar": out.sum(),
            "extra dim": out[..., None],
            "nan sometimes": torch.where(t < 1.0, out * math.nan, out),
        }[kind]

    return score


SCORES = ["wrong shape", "nan", "inf", "int", "list", "none", "scalar", "extra dim"]
SCORES += ["nan sometimes"]


@examples(50)
@given(
    kind=st.sampled_from(SCORES),
    solver=st.sampled_from(["euler", "heun", "dpmpp_2m", "euler_maruyama", "pc", "srk", "rk45"]),
)
def test_score_functions_that_misbehave_are_clean_errors(kind, solver):
    sde = sd.EDMSDE()
    api_case(
        f"sd.sample(score returning {kind}, {solver!r})",
        lambda: (
            pytest.fail("a misbehaving score sampled without error")
            if sd.sample(score_returning(kind), sde, (4, 2), solver, 4, seed=0) is not None
            else None
        ),
    )


grids = st.sampled_from(
    [
        [80.0, 10.0, 10.0, 1.0],
        [80.0, 1.0, 10.0, 0.01],
        [1.0, 80.0],
        [80.0, math.nan, 1.0],
        [80.0, -1.0],
        [80.0],
        [],
        [[80.0, 1.0]],
        [80.0, math.inf],
        "80,1",
        [80.0, 1e-30],
    ]
)


@examples(30)
@given(grid=grids, x_kind=st.sampled_from(["ok", "int", "1-d", "nan", "list", "half-batch-cond"]))
def test_solve_with_bad_grids_and_states_is_a_clean_error(grid, x_kind):
    sde, gmm = sd.EDMSDE(), sd.eight_gaussians()
    x_T = {
        "ok": torch.randn(4, 2) * 80,
        "int": torch.zeros(4, 2, dtype=torch.long),
        "1-d": torch.randn(4),
        "nan": torch.full((4, 2), math.nan),
        "list": [[0.0, 0.0]],
        "half-batch-cond": torch.randn(4, 2) * 80,
    }[x_kind]
    cond = torch.arange(2) if x_kind == "half-batch-cond" else None
    res = api_case(
        f"sd.solve(x_T {x_kind}, grid {grid!r})",
        lambda: sd.solve(gmm.score_fn(sde), sde, x_T, torch.as_tensor(grid), "heun", cond=cond),
    )
    if res is not None:
        assert torch.isfinite(res.x).all()


matrices = st.sampled_from(
    [
        [[1.0, 0.0], [0.0, 1.0]],
        [[1.0, 2.0], [2.0, 1.0]],  # symmetric, not positive definite
        [[1.0, 0.5], [0.0, 1.0]],  # not symmetric
        [[math.nan, 0.0], [0.0, 1.0]],
        [[math.inf, 0.0], [0.0, 1.0]],
        [[0.0, 0.0], [0.0, 0.0]],
        [[-1.0, 0.0], [0.0, -1.0]],
        [[1.0]],
    ]
)


@examples(60)
@given(
    mean=st.sampled_from([[0.0, 0.0], [math.nan, 0.0], [math.inf, 1.0], [0.0], [1e300, 0.0]]),
    cov=matrices,
    weights=st.sampled_from(
        [None, [0.5, 0.5], [2.0, 3.0], [1.0, -1.0], [0.0, 0.0], [math.nan, 1.0]]
    )
    | st.sampled_from([[math.inf, 1.0], [1.0], [0.2, 0.2, 0.6]]),
)
def test_mixtures_with_bad_parameters_are_clean_errors_or_exact(mean, cov, weights):
    def build():
        means = torch.tensor([mean, [1.0] * len(mean)])
        covs = torch.tensor([cov, cov])
        return sd.GaussianMixture(means, covs, weights)

    gmm = api_case(f"GaussianMixture({mean}, {cov}, {weights})", build)
    if gmm is not None:
        sde = sd.EDMSDE()
        score = gmm.score_fn(sde)(torch.zeros(3, len(mean), dtype=torch.float64), 1.0)
        assert torch.isfinite(score).all() and math.isclose(float(gmm.weights.sum()), 1.0)


@examples(30)
@given(
    name=st.sampled_from(["VPSDE", "SubVPSDE", "VESDE", "EDMSDE", "RectifiedFlow"]),
    a=st.sampled_from([math.nan, -1.0, 0.0, 1e-300, 1e300, math.inf, 0.1, 20.0]),
)
def test_sde_constructors_refuse_bad_parameters(name, a):
    params = {
        "VPSDE": "beta_min",
        "SubVPSDE": "beta_max",
        "VESDE": "sigma_min",
        "EDMSDE": "sigma_max",
        "RectifiedFlow": "t_min",
    }
    sde = api_case(f"sd.{name}({params[name]}={a})", lambda: getattr(sd, name)(**{params[name]: a}))
    if sde is not None:
        t = torch.tensor([sde.T, 0.5 * sde.T], dtype=torch.float64)
        assert torch.isfinite(sde.alpha(t)).all() and torch.isfinite(sde.sigma(t)).all()


@examples(20)
@given(kind=st.sampled_from(["nan", "inf", "wrong shape", "nan sometimes"]))
def test_log_likelihood_with_a_bad_score_is_an_error_not_nan(kind):
    sde = sd.EDMSDE()
    x = torch.randn(4, 2, dtype=torch.float64)
    res = api_case(
        f"sd.log_likelihood(score returning {kind})",
        lambda: sd.log_likelihood(score_returning(kind), sde, x, solver="euler", steps=4),
    )
    assert res is None, f"log_likelihood returned {res!r} for a score returning {kind}"


def denoiser(kind: str):
    def run(x, sigma, **extra):
        return {"ok": x / (1 + sigma.reshape(-1, 1) ** 2), "wrong shape": x[:, :1]}[kind]

    return {"not callable": "D", "ok": run, "wrong shape": run}[kind]


@examples(30)
@given(
    kind=st.sampled_from(["not callable", "ok", "wrong shape"]),
    sigmas=st.sampled_from([(None, None), (0.002, 80.0), (80.0, 0.002), (-1.0, 1.0), (0.0, 1.0)])
    | st.sampled_from([(math.nan, 1.0), (0.1, math.inf)]),
)
def test_kdiffusion_adapter_with_hostile_denoisers_and_ranges(kind, sigmas):
    def run():
        model, sde = sd.adapters.from_kdiffusion(denoiser(kind), *sigmas)
        return sd.sample(model, sde, (4, 2), "heun", 3, seed=0)

    res = api_case(f"from_kdiffusion({kind}, sigmas={sigmas})", run)
    if res is not None:
        assert torch.isfinite(res.x).all()


# -- the surfaces added since: registries, controllers, guidance, grids, streaming ----------

HOSTILE_VALUES = [
    0, -1, 1, 3, 2.5, 0.5, 1e-300, 1e300, 10**9, 2**64, math.nan, math.inf, -math.inf,
    True, False, None, "", "abc", "3", [1], (0.1, 1.0), {}, torch.tensor(1.0),
]  # fmt: skip
SOLVER_OPTIONS = sorted(
    (name, option) for name in sd.solver_names() for option in solver_options(solver_class(name))
)


@examples(200)
@given(which=st.sampled_from(SOLVER_OPTIONS), value=st.sampled_from(HOSTILE_VALUES))
def test_every_solver_option_refuses_hostile_values_when_built(which, value):
    """A bad option fails when the solver is built, never later inside a solve; a solver
    that builds samples finitely."""
    name, option = which
    solver = api_case(
        f"get_solver({name!r}, {option}={value!r})", lambda: sd.get_solver(name, **{option: value})
    )
    if solver is not None:
        sde, gmm = sd.EDMSDE(), sd.eight_gaussians()
        steps = 1 if solver.adaptive else 4
        res = api_case(
            f"sd.sample with {name} {option}={value!r}",
            lambda: sd.sample(gmm.score_fn(sde), sde, (4, 2), solver, steps, seed=0),
        )
        assert res is None or torch.isfinite(res.x).all()


@examples(60)
@given(
    name=st.sampled_from(sd.sdes.sde_names()) | st.sampled_from(["", "VP", "nope", 3, None]),
    option=st.sampled_from(["beta_min", "beta_max", "sigma_min", "sigma_max", "t_min", "T", "x"]),
    value=st.sampled_from(HOSTILE_VALUES),
)
def test_the_sde_registry_builds_or_refuses_cleanly(name, option, value):
    sde = api_case(
        f"build_sde({name!r}, {option}={value!r})",
        lambda: sd.sdes.build_sde(name, **{option: value}),
    )
    if sde is not None:
        t = torch.tensor([sde.T, 0.5 * sde.T, sde.t_min], dtype=torch.float64)
        assert torch.isfinite(sde.alpha(t)).all() and torch.isfinite(sde.sigma(t)).all()
        again = sd.sdes.sde_from_config(sd.sdes.sde_config(sde))
        assert repr(again) == repr(sde)


@examples(30)
@given(
    config=st.sampled_from(
        [
            {},
            {"type": "vp", "beta_min": "x"},
            {"type": 3},
            {"type": "ve", "sigma_max": -1},
            {"type": "discrete_vp", "alphas_cumprod": [0.5, 2.0]},
            {"type": "discrete_vp", "alphas_cumprod": []},
            {"type": "edm", "sigma_min": math.nan},
            {"type": "rectified_flow", "T": 2.0},
        ]
    )
)
def test_saved_sde_configs_that_were_tampered_with_are_clean_errors(config):
    sde = api_case(f"sde_from_config({config!r})", lambda: sd.sdes.sde_from_config(config))
    if sde is not None:
        assert torch.isfinite(sde.sigma(torch.tensor([sde.T], dtype=torch.float64))).all()


CONTROLLER_FIELDS = ["rtol", "atol", "pcoeff", "icoeff", "dcoeff", "accept_safety", "max_nfe"]


@examples(60)
@given(field=st.sampled_from(CONTROLLER_FIELDS), value=st.sampled_from(HOSTILE_VALUES))
def test_step_size_controllers_refuse_hostile_settings(field, value):
    from sde_diffusion.controllers import PIDController

    base = {"rtol": 1e-3, "atol": 1e-3}
    controller = api_case(
        f"PIDController({field}={value!r})", lambda: PIDController(**{**base, field: value})
    )
    if controller is not None:
        assert controller.rtol > 0 and controller.atol > 0


@examples(60)
@given(
    scale=st.sampled_from([1.0, 2.0, 0.0, -1.0, math.nan, math.inf, "2", None, 1e300]),
    interval=st.sampled_from([None, (0.1, 5.0), (5.0, 0.1), (-1.0, 1.0), (math.nan, 1.0), (0.0,)]),
    labels=st.sampled_from(["ok", "null", "negative", "too large", "float", "short"]),
)
def test_guidance_with_hostile_scales_intervals_and_labels(scale, interval, labels):
    sde, gmm = sd.EDMSDE(), sd.eight_gaussians()
    cond = {
        "ok": torch.arange(4),
        "null": torch.full((4,), 8),
        "negative": torch.tensor([0, -1, 2, 3]),
        "too large": torch.tensor([0, 1, 2, 57]),
        "float": torch.rand(4),
        "short": torch.arange(2),
    }[labels]

    def run():
        guided = sd.ClassifierFreeGuidance(gmm.score_fn(sde), scale, 8, interval=interval, sde=sde)
        return sd.sample(guided, sde, (4, 2), "heun", 3, cond=cond, seed=0)

    res = api_case(f"CFG(scale={scale!r}, interval={interval!r}, labels {labels})", run)
    assert res is None or torch.isfinite(res.x).all()


GRID_FILES = {
    "ends early": {"times": [80.0, 10.0, 1.0]},
    "ends past zero": {"times": [80.0, 1.0, -1.0]},
    "starts wrong": {"times": [20.0, 1.0, 0.0]},
    "increasing": {"times": [0.0, 1.0, 80.0]},
    "one time": {"times": [80.0]},
    "strings": {"times": ["80", "0"]},
    "nan": {"times": [80.0, math.nan, 0.0]},
    "adaptive": {"solver": "rk45", "solver_options": {}},
    "unknown solver": {"solver": "nope"},
    "bad option": {"solver": "ddim", "solver_options": {"eta": "x"}},
    "unknown option": {"solver": "euler", "solver_options": {"order": 2}},
    "option nan": {"solver": "ddim", "solver_options": {"eta": math.nan}},
    "other sde": {"sde": "VPSDE(beta_min=0.1, beta_max=20.0, t_min=0.001)"},
    "version": {"version": 99},
    "not a grid": {"format": "something else"},
    "huge": {"times": [80.0, *np.linspace(79.9, 0.01, 200_001).tolist(), 0.0]},
    "eta kept": {"solver": "ddim", "solver_options": {"eta": 0.5}},
}


@examples(60)
@given(kind=st.sampled_from(sorted(GRID_FILES)), solver_flag=st.booleans())
def test_hostile_tuned_grid_files_are_usage_errors_or_honoured(folder, kind, solver_flag):
    sde = sd.EDMSDE()
    good = sd.TunedGrid(sd.timesteps(sde, 4, to_zero=True).tolist(), "heun", {}, 7, repr(sde))
    data = {"format": "sde-diffusion tuned grid", "version": 1, **good.__dict__}
    data.update(GRID_FILES[kind])
    here = fresh(folder)
    (here / "in").mkdir()  # the input is not an output to check
    (here / "in" / "g.json").write_text(json.dumps(data))
    args = ["sample", "--model", "gmm8", "-n", "4", "--grid", "in/g.json", "--out", "s.npz"]
    args += ["--solver", "euler"] if solver_flag else []
    with case(" ".join(args) + f" ({kind})"):
        result = run_in(here, args)
        assert_clean(result, args, here)
        if result.exit_code == 0:
            settings_ = json.loads(str(np.load(here / "s.npz")["settings"]))
            if kind == "eta kept" and not solver_flag:
                assert settings_["solver_options"] == {"eta": 0.5}  # the file's, not a default
        elif kind in ("ends early", "ends past zero", "starts wrong", "adaptive", "huge"):
            assert result.exit_code == 2, result.output


@examples(50)
@given(
    batch_size=st.sampled_from([None, 1, 3, 4, 0, -1, 2.5, math.nan, "2", 10**12]),
    n=st.sampled_from([1, 5, 0, -2]),
    sink=st.sampled_from([None, "list", "raises", "not callable"]),
)
def test_streamed_and_batched_sampling_with_hostile_arguments(batch_size, n, sink):
    sde, gmm = sd.EDMSDE(), sd.eight_gaussians()
    got = []

    def raising(start, stop, rows):
        raise ValueError("the sink refused this batch on purpose")

    sinks = {None: None, "list": lambda a, b, rows: got.append(rows), "raises": raising}
    sinks["not callable"] = 3

    def run():
        return sd.sample(
            gmm.score_fn(sde), sde, (n, 2), "euler", 3, batch_size=batch_size, sink=sinks[sink]
        )

    res = api_case(f"sd.sample(n={n}, batch_size={batch_size!r}, sink={sink})", run)
    if res is not None and sink == "list":
        assert sum(len(r) for r in got) == n and all(torch.isfinite(r).all() for r in got)


@examples(40)
@given(
    device=st.sampled_from(["cpu", "cuda", "cuda:7", "mps", "tpu", "", 3, None, "cpu:0"]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool, "float32", None]),
)
def test_devices_and_dtypes_are_checked_where_they_enter(device, dtype):
    sde, gmm = sd.EDMSDE(), sd.eight_gaussians()
    res = api_case(
        f"sd.sample(device={device!r}, dtype={dtype!r})",
        lambda: sd.sample(gmm.score_fn(sde), sde, (4, 2), "euler", 3, device=device, dtype=dtype),
    )
    assert res is None or torch.isfinite(res.x).all()


@examples(40)
@given(
    nfe=st.sampled_from([2, 3, 0, -1, 2.5, 10**7, math.nan, "5", True]),
    method=st.sampled_from(["search", "dp", "dp+search", "gradient", "nope"]),
    solver=st.sampled_from(["euler", "deis", "rk45", "heun", 3]),
)
def test_tune_timesteps_with_hostile_requests(nfe, method, solver):
    sde, gmm = sd.VESDE(), sd.eight_gaussians()
    grid = api_case(
        f"tune_timesteps(nfe={nfe!r}, method={method!r}, solver={solver!r}) on VE",
        lambda: sd.tune_timesteps(
            gmm.score_fn(sde), sde, nfe=nfe, solver=solver, shape=(2,), samples=4,
            method=method, max_evaluations=3,
        ),
    )  # fmt: skip
    if grid is not None:
        assert grid.times[0] == sde.T and grid.times[-1] == sde.t_min and grid.nfe <= nfe


@examples(40)
@given(
    call=st.sampled_from(
        ["step first", "steps 0", "steps -1", "steps nan", "steps str", "timesteps up",
         "sigmas nan", "mu", "step after the end", "generator list short"]
    )
)  # fmt: skip
def test_the_diffusers_scheduler_refuses_hostile_calls(call):
    diffusers = pytest.importorskip("diffusers", reason="the peers extra is not installed")
    from sde_diffusion.diffusers_scheduler import DiffusersScheduler

    def run():
        ours = DiffusersScheduler.from_config(diffusers.DDPMScheduler().config)
        x = torch.randn(2, 3)
        if call != "step first":
            steps = {"steps 0": 0, "steps -1": -1, "steps nan": math.nan, "steps str": "5"}
            if call == "timesteps up":
                ours.set_timesteps(timesteps=[1, 500, 999])
            elif call == "sigmas nan":
                ours.set_timesteps(sigmas=[10.0, math.nan, 0.1])
            elif call == "mu":
                ours.set_timesteps(5, mu=0.5)
            else:
                ours.set_timesteps(steps.get(call, 2))
        generator = [torch.Generator()] if call == "generator list short" else None
        for t in [*ours.timesteps, 0] if call == "step after the end" else [999]:
            x = ours.step(torch.zeros_like(x), t, x, generator=generator).prev_sample
        return x

    x = api_case(f"DiffusersScheduler: {call}", run)
    assert x is None or torch.isfinite(x).all()


@examples(20)
@given(
    module=st.sampled_from(["linear", "none", "string", "function"]),
    scheduler=st.sampled_from(["ddpm", "none", "dict"]),
)
def test_from_diffusers_refuses_what_is_not_a_diffusers_denoiser(module, scheduler):
    diffusers = pytest.importorskip("diffusers", reason="the peers extra is not installed")
    unet = {"linear": torch.nn.Linear(2, 2), "none": None, "string": "unet", "function": abs}
    schedulers = {"ddpm": diffusers.DDPMScheduler(), "none": None, "dict": {"a": 1}}
    out = api_case(
        f"from_diffusers({module}, {scheduler})",
        lambda: sd.adapters.from_diffusers(unet[module], schedulers[scheduler]),
    )
    assert out is None, "a module that is not a diffusers denoiser was accepted"
