"""Data-parallel training and sharded sampling: the batch partition, and real `torchrun` runs.

The launcher tests start two CPU processes (gloo) through the command line, as a user
would, and compare them with one process given the same seed, global batch and threads.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import wait_until
from hypothesis import given
from hypothesis import strategies as st

import sde_diffusion as sd
from sde_diffusion.distributed import local_batches, map_batches
from sde_diffusion.training.checkpoint import load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun's default per process; alike for both
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def sdediff(*args, cwd, ranks=1, timeout=300):
    """``sdediff ARGS`` in one process, or under ``torchrun`` with ``ranks`` processes."""
    launcher = [sys.executable] if ranks == 1 else TORCHRUN
    return subprocess.run(
        [*launcher, "-m", "sde_diffusion", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(*args, cwd, ranks=1) -> subprocess.Popen:
    """``sdediff ARGS`` started in the background (text pipes), one process or ``torchrun``."""
    launcher = [sys.executable] if ranks == 1 else TORCHRUN
    return subprocess.Popen(
        [*launcher, "-m", "sde_diffusion", *args],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: ``stop`` ends the ranks too
    )


def stop(proc: subprocess.Popen) -> None:
    """Kill ``proc`` and every process it started (torchrun's ranks), if still running."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_files(folder: Path) -> set[str]:
    """What a run wrote (its curves picture aside, drawn once rows exist): no temporaries."""
    return {p.name for p in folder.iterdir()} - {"m.curves.png"}


def weights(path: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_checkpoint(path)
    return {k: v for k, v in tensors.items() if k.startswith(("model/", "ema/"))}


# -- the batch partition ------------------------------------------------------------


@given(st.integers(0, 200), st.integers(1, 40), st.integers(1, 5))
def test_ranks_share_the_global_batches_without_overlap(total, batch_size, world):
    """The union over ranks is the one-process partition, each batch on exactly one rank."""
    single = local_batches(total, batch_size, 0, 1)
    shards = [local_batches(total, batch_size, r, world) for r in range(world)]
    assert sorted(b for shard in shards for b in shard) == single
    assert [i for start, stop in single for i in range(start, stop)] == list(range(total))
    assert all(stop - start <= batch_size for start, stop in single)


def test_map_batches_in_one_process_concatenates_in_order():
    rows = map_batches(lambda start, stop: torch.arange(start, stop)[:, None] * 2, 23, 5)
    assert torch.equal(rows, torch.arange(23)[:, None] * 2)


def test_batched_sampling_keys_noise_and_condition_by_global_index():
    """Batch b of sample_batched equals sample() on that batch's rows, noise and labels."""
    sde = sd.EDMSDE()
    gmm = sd.eight_gaussians()
    model = gmm.score_fn(sde)
    labels = torch.arange(11) % 8
    res = sd.sample_batched(model, sde, (11, 2), "heun", 6, batch_size=4, cond=labels, seed=3)
    first, stop = 4, 8  # the second batch
    alone = sd.sample(
        model, sde, (4, 2), "heun", 6, cond=labels[first:stop], noise=sd.PerSampleNoise(3, first)
    )
    assert torch.equal(res.x[first:stop], alone.x)
    assert res.batches == 3 and res.nfe_per_batch == alone.nfe == 12  # 3 batches
    assert res.nfe == res.network_passes == 3 * 12  # totals
    assert res.x.shape == (11, 2) and torch.isfinite(res.x).all()


# -- SIGTERM ------------------------------------------------------------------------


SIGTERM_RUNS = {
    "train": ["--data", "moons", "--batch-size", "32", "--checkpoint-every", "5"],
    "train-autoencoder": ["--data", "digits", "--factor", "2", "--width", "4",
                          "--batch-size", "16", "--checkpoint-every", "3"],
}  # fmt: skip


@pytest.mark.parametrize("command", list(SIGTERM_RUNS))
def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path, command):
    """What SLURM and torchrun send: stop after the step in hand, save, exit 143 (a score
    model's run and an autoencoder's alike)."""
    args = [command, *SIGTERM_RUNS[command], "--steps", "100000"]
    proc = start(*args, "--out", "m.safetensors", cwd=tmp_path)
    try:
        wait_until(proc, (tmp_path / "m.safetensors").exists)  # the state: steps are done
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM at step" in err and "Traceback" not in err
    step = load_checkpoint(tmp_path / "m.safetensors")[1]["step"]
    assert 0 < step < 100000 and run_files(tmp_path) == {"m.safetensors", "m.metrics.jsonl"}
    resumed = sdediff(command, "--resume", "m.safetensors", "--steps", str(step + 3),
                      cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0 and f"at step {step}" in resumed.stdout


# -- torchrun, two CPU processes -----------------------------------------------------

TRAIN = ["train", "--data", "moons", "--batch-size", "64", "--checkpoint-every", "5"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """12 steps on 2 processes and on 1; then both resumed or continued to 16 on 1."""
    where = tmp_path_factory.mktemp("ddp")
    two = sdediff(*TRAIN, "--steps", "12", "--out", "two/m.safetensors", cwd=where, ranks=2)
    one = sdediff(*TRAIN, "--steps", "12", "--out", "one/m.safetensors", cwd=where)
    resumed = sdediff(
        "train", "--resume", "two/m.safetensors", "--steps", "16", "--out", "r.safetensors",
        cwd=where,
    )  # fmt: skip
    straight = sdediff(*TRAIN, "--steps", "16", "--out", "s.safetensors", cwd=where)
    for run in (two, one, resumed, straight):
        assert run.returncode == 0, run.stderr[-3000:]
    return where, two, resumed


@pytest.mark.slow
def test_two_processes_train_the_weights_of_one(runs):
    """Same global batch, same data order: the weights agree to float rounding."""
    where, _, _ = runs
    two, one = weights(where / "two/m.safetensors"), weights(where / "one/m.safetensors")
    assert two.keys() == one.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6, msg=name)
    assert load_checkpoint(where / "two/m.safetensors")[1]["step"] == 12


@pytest.mark.slow
def test_two_processes_distil_the_student_of_one(tmp_path):
    """Consistency distillation under torchrun: each rank solves the teacher's ODE steps of
    its slice of the global batch; the student equals the one-process student to rounding."""
    args = ["distill", "--teacher", "moons", "--method", "consistency", "--teacher-steps", "8",
            "--train-steps", "6", "--batch-size", "64", "--target-ema", "0.9"]  # fmt: skip
    two = sdediff(*args, "--out", "two/c.safetensors", cwd=tmp_path, ranks=2)
    one = sdediff(*args, "--out", "one/c.safetensors", cwd=tmp_path)
    for run in (two, one):
        assert run.returncode == 0, run.stderr[-3000:]
    kept = ("model/", "ema/", "objective/target/")  # the target network too
    a, b = (
        {k: v for k, v in load_checkpoint(tmp_path / f"{n}/c.safetensors")[0].items()
         if k.startswith(kept)}
        for n in ("two", "one")
    )  # fmt: skip
    assert a.keys() == b.keys() and any(k.startswith(kept[2]) for k in a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_two_processes_train_the_autoencoder_of_one(tmp_path):
    """sdediff train-autoencoder under torchrun: each rank encodes its slice of the global
    batch with its posterior noise; the weights and the recorded latent statistics equal
    the one-process run's to rounding.  Adam moves a weight by about lr (1e-3) a step
    whatever its gradient's size, so the all-reduce's rounding of the tiny first gradients
    of some biases shows as up to 1-2 % of one step (measured 1.2e-5)."""
    args = ["train-autoencoder", "--data", "digits", "--factor", "2", "--channels", "2",
            "--width", "4", "--steps", "5", "--batch-size", "32"]  # fmt: skip
    two = sdediff(*args, "--out", "two/ae.safetensors", cwd=tmp_path, ranks=2)
    one = sdediff(*args, "--out", "one/ae.safetensors", cwd=tmp_path)
    for run in (two, one):
        assert run.returncode == 0, run.stderr[-3000:]
    a, b = (weights(tmp_path / f"{n}/ae.safetensors") for n in ("two", "one"))
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=3e-5, msg=name)
    scales = [load_checkpoint(tmp_path / f"{n}/ae.safetensors")[1]["network"]["latent_scale"]
              for n in ("two", "one")]  # fmt: skip
    assert scales[0] == pytest.approx(scales[1], rel=1e-5)


@pytest.mark.slow
def test_compiled_training_under_torchrun_follows_the_eager_run(runs, tmp_path):
    """``--compile`` on two processes (the DDP-wrapped network compiled): the weights of the
    one-process eager run, to the float rounding of Inductor's kernels."""
    where, _, _ = runs
    run = sdediff(*TRAIN, "--steps", "12", "--compile", "--out", "c.safetensors",
                  cwd=tmp_path, ranks=2)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "could not be compiled" not in run.stderr
    compiled, one = weights(tmp_path / "c.safetensors"), weights(where / "one/m.safetensors")
    assert compiled.keys() == one.keys()
    for name in one:
        torch.testing.assert_close(compiled[name], one[name], rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.slow
def test_only_rank_zero_reports_and_writes(runs):
    where, two, _ = runs
    assert two.stdout.count("training a ") == 1 and "on 2 processes" in two.stdout
    assert two.stdout.count("done") == 1
    assert len(re.findall(r"^train .*12/12", two.stdout, re.M)) == 1  # one progress bar
    written = sorted(p.name for p in (where / "two").iterdir())
    assert written == ["m.curves.png", "m.metrics.jsonl", "m.safetensors"]
    rows = [json.loads(line) for line in (where / "two/m.metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10]  # one writer: each row once


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_on_one_process(runs):
    """It continues at the saved step, and lands where an uninterrupted run does."""
    where, _, resumed = runs
    assert "resumed from two/m.safetensors at step 12" in resumed.stdout
    assert load_checkpoint(where / "r.safetensors")[1]["step"] == 16
    after, straight = weights(where / "r.safetensors"), weights(where / "s.safetensors")
    for name in straight:
        torch.testing.assert_close(after[name], straight[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["--model", "moons", "-n", "70", "--batch-size", "16", "--steps", "8"],
        [
            "--model",
            "digits-cond",
            "--class",
            "all",
            "-n",
            "10",
            "--batch-size",
            "8",
            "--steps",
            "4",
            "--guidance",
            "2",
        ],
    ],
    ids=["moons", "digits-cond-guided"],
)
def test_sharded_sampling_is_the_single_process_sampling_bit_for_bit(tmp_path, args):
    two = sdediff("sample", *args, "--out", "two.npz", cwd=tmp_path, ranks=2)
    one = sdediff("sample", *args, "--out", "one.npz", cwd=tmp_path)
    assert two.returncode == 0 and one.returncode == 0, two.stderr[-3000:]
    a, b = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
    assert np.array_equal(a["samples"], b["samples"]) and str(a["settings"]) == str(b["settings"])
    assert two.stdout.count("samples from") == 1


@pytest.mark.slow
def test_sharded_likelihood_equals_the_single_process_value(tmp_path):
    args = ["likelihood", "--model", "gmm8", "-n", "40", "--batch-size", "8", "--steps", "20"]
    args += ["--solver", "heun"]
    two = sdediff(*args, cwd=tmp_path, ranks=2)
    one = sdediff(*args, cwd=tmp_path)
    assert two.returncode == 0 and one.returncode == 0, two.stderr[-3000:] + one.stderr[-3000:]
    row = re.compile(r"PF-ODE\s*│\s*([-\d.]+ ± [\d.]+)\s*│\s*([-\d.]+ ± [\d.]+)\s*│\s*(\d+)")
    assert row.search(two.stdout).groups() == row.search(one.stdout).groups()
    assert two.stdout.count("PF-ODE") == 1


@pytest.mark.slow
def test_a_global_batch_that_does_not_split_is_refused(tmp_path):
    run = sdediff(*TRAIN[:3], "--batch-size", "63", "--steps", "2", cwd=tmp_path, ranks=2)
    assert run.returncode != 0 and "does not split evenly over 2 processes" in run.stderr
    assert not list(tmp_path.glob("**/*.safetensors"))


def _worker(launcher_pid: int, rank: int) -> int | None:
    """The pid of the ``torchrun`` child with environment ``RANK=rank``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher_pid and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_a_rank_that_dies_stops_the_others_with_a_message_and_a_checkpoint(tmp_path):
    """Kill rank 1: no hang; rank 0 says why it stopped and saves; the launcher names rank 1."""
    proc = start(*TRAIN, "--steps", "1000000", "--out", "m.safetensors", cwd=tmp_path, ranks=2)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "m.safetensors").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        victim = _worker(proc.pid, 1)
        assert victim is not None, "rank 1 not found"
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)  # a hang fails here
    finally:
        stop(proc)
    assert proc.returncode != 0
    text = " ".join(err.split())  # rich wraps long lines
    # the collective fails first (a peer is gone) or torchrun's SIGTERM arrives first
    stopped = re.search(r"rank 0: (?:training stopped|stopped by SIGTERM) at step (\d+)", text)
    assert stopped and "checkpoint saved to m.safetensors" in text, text
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)", err)  # torchrun's root cause
    step = load_checkpoint(tmp_path / "m.safetensors")[1]["step"]
    assert step == int(stopped.group(1)) >= 5  # saved as it stopped
    assert run_files(tmp_path) == {"m.safetensors", "m.metrics.jsonl"}


@pytest.mark.slow
def test_the_surviving_rank_names_the_rank_that_failed_and_why(tmp_path):
    """Rank 0 cannot write its checkpoint (its folder became a file): rank 1 says so."""
    out = tmp_path / "run"
    out.mkdir()
    proc = start(*TRAIN, "--steps", "1000000", "--out", "run/m.safetensors", cwd=tmp_path, ranks=2)
    try:
        deadline = time.monotonic() + 120
        while not (out / "m.safetensors").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        while out.is_dir() and time.monotonic() < deadline:  # a save may land mid-removal
            shutil.rmtree(out, ignore_errors=True)
        out.touch()  # the next save cannot create its file
        _, err = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode != 0
    text = " ".join(err.split())  # rich wraps long lines
    assert "rank 0: training failed:" in text
    assert re.search(r"rank 1: .*stopped .*rank 0 failed \(training failed:", text), text


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["sample", "--model", "gmm8", "--sde", "vp", "--grid", "mid.json", "--out", "s.npz"],
        ["likelihood", "--model", "gmm8", "--data", "missing.npz"],
        ["train", "--resume", "m.safetensors", "--steps", "2"],
        ["tune", "--model", "gmm8", "--solver", "rk45", "--samples", "4"],
    ],
    ids=["sample", "likelihood", "train", "tune"],
)
def test_under_torchrun_a_usage_error_ends_every_rank_with_one_line_naming_it(tmp_path, args):
    """Each rank that reaches the error prints it once, prefixed with its rank, and every
    rank ends. torchrun ends the other ranks as soon as one fails, so a rank still starting
    (importing torch) may be ended before it gets there: which ranks print depends on the
    machine's speed, so the test asks that one does and none prints twice."""
    grid = sd.timesteps(sd.VPSDE(), 4, to_zero=True).tolist()[:-2]  # stops short of the data
    sd.TunedGrid(grid, "euler", {}, 3, repr(sd.VPSDE())).save(tmp_path / "mid.json")
    assert sdediff(*TRAIN, "--steps", "2", "--out", "m.safetensors", cwd=tmp_path).returncode == 0
    run = sdediff(*args, cwd=tmp_path, ranks=2, timeout=600)
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    prefixes = [line[:15] for line in errors]
    assert errors and len(set(prefixes)) == len(prefixes), run.stderr[-3000:]
    assert set(prefixes) <= {"Error: rank 0: ", "Error: rank 1: "}, run.stderr[-3000:]
    assert not re.search(r'File ".*/(sde_diffusion|cli)/', run.stderr)  # the launcher's own only
