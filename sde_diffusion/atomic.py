"""Files on disk: written atomically, small text files read safely.

Writes go to a temporary file in the target folder, renamed into place.

A crash, Ctrl-C or a full disk mid-write leaves the old file (or no file), never
a half-written one.  The temporary file is named after the writing process
(``.NAME.PID-XXXX.tmp``); one left by a process that was killed outright
(SIGKILL, power loss) is removed by the next write to the same path.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

__all__ = ["atomic_path", "read_small_text", "stale_temporaries"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_temporaries(path: str | Path) -> list[Path]:
    """Temporary files of writes to ``path`` whose writing process no longer runs."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)-[^.]+\.tmp")
    if not path.parent.is_dir():
        return []
    found = (pattern.fullmatch(p.name) for p in path.parent.iterdir())
    return [path.parent / m.group(0) for m in found if m and not _alive(int(m.group(1)))]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is flushed to disk and replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temporaries(path):
        with suppress(FileNotFoundError):  # another writer may clean it first
            stale.unlink()
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent
    )
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; give it the usual mode
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_small_text(path: str | Path, what: str, limit: int = 16 * 2**20) -> str:
    """The text of a regular file of at most ``limit`` bytes; anything else (a folder, a
    FIFO, a device such as /dev/zero, a huge or undecodable file) is an ``OSError``
    or ``UnicodeDecodeError`` naming ``what`` was expected, never a hang."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(f"{path} is not a regular file ({what} is read from one)")
    if info.st_size > limit:
        raise OSError(f"{path} holds {info.st_size:,} bytes; {what} is at most {limit:,}")
    with open(path, "rb") as file:
        return file.read(limit + 1)[:limit].decode()
