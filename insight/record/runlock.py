"""One training process per run directory.

Two flows advancing the same run would interleave rounds and corrupt the record, e.g.
a scheduled run firing while the previous one is still training. An advisory `flock`
on `run_dir/.train.lock` refuses the second one; the kernel releases it when the
holder exits, even on kill -9, so a crashed run never leaves a stale lock behind.

The lock must be taken before anything of the run is read or written: a second
`insight train --allow-changed --set ...` that stored its config first and was refused
only when its flow started would switch the running trainer to that config. So the CLI
takes the lock first and keeps it while the flow it starts takes it again; the lock is
re-entrant within one process for that reason (a second process is always refused).
"""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".train.lock"

# Locks this process holds: lock file path -> [fd, depth]. flock conflicts between two
# file descriptors even in one process, so a nested take must reuse the first one.
_held: dict[str, list[int]] = {}
_held_guard = threading.Lock()


class RunLockedError(RuntimeError):
    """Another process is training this run right now."""


@contextmanager
def training_lock(run_dir: str | Path, *, create: bool = True) -> Iterator[None]:
    """Hold the run's lock for the block. `create=False` refuses a directory that does
    not exist instead of creating it (resuming a run that is not there)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"not a run directory (it is a file): {run_dir}")
    if not run_dir.is_dir():
        if not create:
            raise FileNotFoundError(f"no run directory at {run_dir}")
        run_dir.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(run_dir / LOCK_NAME)
    with _held_guard:
        if key in _held:
            _held[key][1] += 1
        else:
            _held[key] = [_acquire(key, run_dir), 1]
    try:
        yield
    finally:
        with _held_guard:
            _held[key][1] -= 1
            if _held[key][1] == 0:
                os.close(_held.pop(key)[0])


def _acquire(path: str, run_dir: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        raise RunLockedError(f"run {run_dir} is being trained by another process "
                             f"(pid {holder or '?'}); refusing to run it twice") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
