"""Faults while training and writing: SIGKILL, Ctrl-C at start-up, a full disk, a read-only folder.

Each test runs the real ``sdediff`` executable in a subprocess and checks what a user
finds afterwards: a checkpoint that loads, a ``--resume`` that continues from its
step, no temporary files, and one line on stderr.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import wait_until

from sde_diffusion.atomic import atomic_path, stale_temporaries
from sde_diffusion.training.checkpoint import load_checkpoint, save_checkpoint

SDEDIFF = str(Path(sys.executable).parent / "sdediff")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TRAIN = ["train", "--data", "moons", "--batch-size", "16", "--width", "32", "--steps", "1000000"]


def start(*args, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        [SDEDIFF, *args],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(proc: subprocess.Popen, marker: str) -> str:
    """Read stdout until a line holding ``marker``; that line."""
    for line in proc.stdout:
        if marker in line:
            return line
    raise AssertionError(f"{marker!r} never printed: {proc.stderr.read()}")


def leftovers(folder: Path) -> list[str]:
    """What a run left beside its checkpoint and its log."""
    kept = ("m.safetensors", "m.metrics.jsonl", "m.curves.png")
    return sorted(p.name for p in folder.iterdir() if p.name not in kept)


@pytest.mark.slow
def test_sigkill_at_random_moments_never_loses_a_checkpoint(tmp_path):
    """12 kills (-9) while saving every step; each time the checkpoint loads, the next
    ``--resume`` starts from its step, and the killed run's temporary file is gone."""
    rng = random.Random(17)
    ckpt, step, mid_save = tmp_path / "m.safetensors", 0, 0
    for kill in range(12):
        args = ["--resume" if ckpt.exists() else "--out", ckpt.name]
        proc = start(*TRAIN, "--checkpoint-every", "1", *args, cwd=tmp_path)
        try:
            if ckpt.exists():
                assert f"at step {step}" in wait_for(proc, "resumed from")
            wait_for(proc, "training a")
            time.sleep(rng.uniform(0.05, 0.8))
            proc.kill()
            proc.wait(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == -signal.SIGKILL
        mid_save += bool(leftovers(tmp_path))
        assert set(leftovers(tmp_path)) == {p.name for p in stale_temporaries(ckpt)}
        found = load_checkpoint(ckpt)[1]["step"]  # always loads
        assert found >= step, f"kill {kill}: the checkpoint went back from {step} to {found}"
        step = found
    done = subprocess.run(
        [SDEDIFF, "train", "--resume", ckpt.name, "--steps", str(step + 2)],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"at step {step}" in done.stdout and f"step {step + 2}" in done.stdout
    assert load_checkpoint(ckpt)[1]["step"] == step + 2
    assert leftovers(tmp_path) == []  # the first save of a run removes killed runs' files
    print(f"12 kills, {mid_save} of them left a temporary file; reached step {step}")


def started(*args, cwd) -> subprocess.Popen:
    """``sdediff`` started and past its entry module's first statement, where the Ctrl-C
    promise begins (before it Python itself is starting): the import-time report
    (``PYTHONPROFILEIMPORTTIME``) names the module once its import has run."""
    proc = subprocess.Popen(
        [SDEDIFF, *args],
        cwd=cwd,
        env={**ENV, "PYTHONPROFILEIMPORTTIME": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:
        if line.rstrip().endswith("sdediff_cli.entry"):
            return proc
    raise AssertionError(f"sdediff never loaded its entry module: {proc.communicate()}")


def own_lines(err: str) -> list[str]:
    """stderr without the import-time report."""
    return [line for line in err.strip().splitlines() if not line.startswith("import time:")]


@pytest.mark.slow
def test_ctrl_c_at_any_moment_of_start_up_exits_130_in_one_line(tmp_path):
    """SIGINT while Python imports torch, while click parses, while the data loads: at
    delays counted from the moment the promise begins, not from the launch."""
    for delay in [0.0, 0.01] + [0.1 * k for k in range(1, 15)] + [2.5]:
        proc = started(*TRAIN, "--out", "m.safetensors", cwd=tmp_path)
        try:
            time.sleep(delay)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        assert proc.returncode == 130, (delay, proc.returncode, err[-2000:])
        lines = own_lines(err)
        assert "Traceback" not in err and len(lines) == 1 and "interrupted" in lines[0], (
            delay,
            lines,
        )
        assert leftovers(tmp_path) == []


def test_sigterm_while_streaming_samples_leaves_nothing_behind(tmp_path):
    """SIGTERM once the streamed .npz holds some samples: exit 143 in one line, and
    neither the output nor its temporary file is left."""
    proc = start(
        "sample", "--model", "gmm64", "-n", "2000000", "--batch-size", "2000", "--steps",
        "50", "--out", "s.npz", cwd=tmp_path,
    )  # fmt: skip
    try:
        wait_for(proc, "sampling")
        wait_until(  # the state: the temporary file has grown
            proc, lambda: any(p.stat().st_size > 1_000_000 for p in tmp_path.glob(".s.npz.*.tmp"))
        )
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert own_lines(err) == ["terminated: sampling stopped; nothing half-written is left."]
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "m.safetensors"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    pid = int(dead.stdout)  # a process that has ended
    stale = tmp_path / f".m.safetensors.{pid}-abc123.tmp"
    live = tmp_path / f".m.safetensors.{os.getpid()}-def456.tmp"  # a writer still running
    other = tmp_path / f".other.safetensors.{pid}-abc123.tmp"  # another file's
    for p in (stale, live, other):
        p.write_bytes(b"half")
    assert stale_temporaries(target) == [stale]
    save_checkpoint(target, {"w": torch.ones(3)}, {"k": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [live.name, other.name, target.name]
    )


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(OSError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


# -- a full disk and a read-only folder, on a small tmpfs in a private mount namespace --

CAN_MOUNT = shutil.which("unshare") is not None and (
    subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "mount", "-t", "tmpfs", "none", "/mnt"],
        capture_output=True,
    ).returncode
    == 0
)
needs_mount = pytest.mark.skipif(not CAN_MOUNT, reason="cannot mount a tmpfs (unshare) here")


def in_namespace(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a shell ``script`` as (namespace) root with its own mounts; nothing leaks out."""
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", script],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
@needs_mount
def test_a_full_disk_at_save_time_keeps_the_previous_checkpoint(tmp_path):
    """The folder holds one checkpoint but not a second beside it: the second save fails
    with ENOSPC, the first stays as it was, the message says so, no temporary file."""
    size = subprocess.run(
        [SDEDIFF, *TRAIN, "--steps", "1", "--out", "probe.safetensors"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
    )
    assert size.returncode == 0
    room = (tmp_path / "probe.safetensors").stat().st_size * 3 // 2 // 4096 * 4096 + 4096
    script = (
        f"mkdir -p disk && mount -t tmpfs -o size={room} none disk && "
        f"{SDEDIFF} {' '.join(TRAIN[:-1])} 4 --checkpoint-every 2 --out disk/m.safetensors; "
        "echo rc=$?; ls -A disk; cp disk/m.safetensors kept.safetensors"
    )
    out = in_namespace(script, tmp_path)
    assert "rc=1" in out.stdout, out.stdout + out.stderr
    listed = out.stdout.split("rc=1")[1].split()
    assert listed == ["m.metrics.jsonl", "m.safetensors"]  # the log, no temporary file
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "No space left on device" in err[0] and "unchanged" in err[0], err
    assert load_checkpoint(tmp_path / "kept.safetensors")[1]["step"] == 2


@pytest.mark.slow
@needs_mount
def test_a_folder_made_read_only_during_training_keeps_the_checkpoint(tmp_path):
    """The folder turns read-only while training saves every step: the next save fails
    with a one-line error naming the cause; the checkpoint already there loads."""
    script = (
        "mkdir -p disk && mount -t tmpfs none disk || exit 9\n"
        f"{SDEDIFF} {' '.join(TRAIN)} --checkpoint-every 1 --out disk/m.safetensors "
        "> log.txt 2> err.txt &\n"
        "pid=$!\n"
        "until grep -q 'training a' log.txt; do sleep 0.1; done; sleep 1\n"
        "until mount -o remount,ro disk 2>/dev/null; do sleep 0.01; done\n"  # EBUSY mid-write
        "wait $pid; echo rc=$?; ls -A disk; cp disk/m.safetensors kept.safetensors\n"
    )
    out = in_namespace(script, tmp_path)
    assert "rc=1" in out.stdout, out.stdout + out.stderr
    listed = [n for n in out.stdout.split("rc=1")[1].split() if n != "m.curves.png"]
    assert listed == ["m.metrics.jsonl", "m.safetensors"]  # the log, no temporary file
    err = (tmp_path / "err.txt").read_text().strip().splitlines()
    # one line, after at most the log's one warning if its write came first
    assert err[:-1] in ([], [err[0]]) and all("training log stopped" in e for e in err[:-1])
    assert "Read-only file system" in err[-1] and "unchanged" in err[-1], err
    assert load_checkpoint(tmp_path / "kept.safetensors")[1]["step"] >= 1
