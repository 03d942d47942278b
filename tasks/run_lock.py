"""One training process per run, across machines: the run lock as a Prefect global
concurrency limit when a Prefect server is shared between machines.

`insight.record.runlock` holds an advisory `flock` on the run directory: exact on one
machine (the kernel releases it when the holder dies, even on kill -9), but not across
the nodes of a cluster (flock over a network file system is not to be relied on). When
the flows report to a Prefect server that other machines may use too, the lock is also a
slot of the global concurrency limit `insight-run-<hash of the run directory>` (limit 1),
held for the whole training with a lease the holder renews. The flock is still taken
first: it is exact on this machine and makes a local second process fail at once.

A holder killed with kill -9 cannot release its slot; its lease expires after
`LEASE_SECONDS`, so the next taker waits up to that long for it (a live holder elsewhere
keeps renewing: the taker is then refused). A server on this machine (loopback) serves
one machine, where the flock is already exact, so the limit is used only for a remote
server unless INSIGHT_RUN_LOCK=prefect asks for it (INSIGHT_RUN_LOCK=file never uses it).
This module talks to Prefect, so it lives in tasks/, not in the framework-free library.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import threading
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from insight.record.runlock import RunLockedError, training_lock

LEASE_SECONDS = 60.0  # how long a dead holder's slot blocks the run (the server's minimum)
WAIT_SECONDS = LEASE_SECONDS + 5  # a taker outwaits a dead holder's lease, no longer
MODE_ENV = "INSIGHT_RUN_LOCK"  # auto (default) | prefect | file

_held: dict[str, list] = {}  # limit name -> [ExitStack, depth]: re-entrant in a process
_guard = threading.Lock()


def lock_backend(api_url: str | None, mode: str | None = None) -> str:
    """"prefect" when the run lock must also be a Prefect global concurrency limit, else
    "file": with no server configured, or a loopback one (one machine, where the
    flock is exact), unless `mode` (INSIGHT_RUN_LOCK) says prefect or file."""
    mode = (mode or "auto").strip().lower()
    if mode not in ("auto", "prefect", "file"):
        raise ValueError(f"{MODE_ENV} must be auto, prefect or file, got {mode!r}")
    if mode == "file":
        return "file"
    if not api_url:
        if mode == "prefect":
            raise ValueError(f"{MODE_ENV}=prefect needs a Prefect server (set PREFECT_API_URL)")
        return "file"
    return "prefect" if mode == "prefect" or not _is_loopback(api_url) else "file"


def _is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def limit_name(run_dir: str | Path) -> str:
    """The global concurrency limit of one run directory (its resolved path, hashed:
    limit names are short and may not hold every character a path may)."""
    real = os.path.realpath(run_dir)
    return "insight-run-" + hashlib.sha256(real.encode()).hexdigest()[:16]


def _api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL
    return PREFECT_API_URL.value() or None


@contextmanager
def run_lock(run_dir: str | Path, *, create: bool = True) -> Iterator[None]:
    """Hold the run's lock for the block: the flock, and the global concurrency limit
    when `lock_backend` says so. Re-entrant within a process, like the flock."""
    with training_lock(run_dir, create=create):
        if lock_backend(_api_url(), os.environ.get(MODE_ENV)) == "file":
            yield
            return
        name = limit_name(run_dir)
        _enter(name, run_dir)
        try:
            yield
        finally:
            _leave(name)


def _enter(name: str, run_dir) -> None:
    with _guard:
        if name in _held:
            _held[name][1] += 1
            return
        stack = ExitStack()
        try:
            stack.enter_context(_global_slot(name, run_dir))
        except BaseException:
            stack.close()
            raise
        _held[name] = [stack, 1]


def _leave(name: str) -> None:
    with _guard:
        _held[name][1] -= 1
        if _held[name][1] == 0:
            _held.pop(name)[0].close()


@contextmanager
def _global_slot(name: str, run_dir) -> Iterator[None]:
    """One slot of the limit `name` (created with limit 1 if missing), waiting at most
    one lease for a dead holder's slot to expire."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name,
                                                                                limit=1))
        except ObjectAlreadyExists:
            pass
    try:
        with concurrency(name, occupy=1, timeout_seconds=WAIT_SECONDS,
                         lease_duration=LEASE_SECONDS, strict=True,
                         raise_on_lease_renewal_failure=False):
            yield
    except TimeoutError:
        raise RunLockedError(f"run {run_dir} is being trained by another process (its "
                             f"Prefect concurrency limit {name} is taken); refusing to run "
                             "it twice") from None
