"""One training process per run directory.

Two flows advancing the same run would interleave rounds and corrupt the record, e.g.
a scheduled run firing while the previous one is still training. An advisory `flock`
on `run_dir/.train.lock` refuses the second one; the kernel releases it when the
holder exits, even on kill -9, so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class RunLockedError(RuntimeError):
    """Another process is training this run right now."""


@contextmanager
def training_lock(run_dir: str | Path) -> Iterator[None]:
    path = Path(run_dir) / ".train.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            raise RunLockedError(f"run {run_dir} is being trained by another process "
                                 f"(pid {holder or '?'}); refusing to run it twice") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
