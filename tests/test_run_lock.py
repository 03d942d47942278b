"""The run lock across machines: a Prefect global concurrency limit when the flows report
to a Prefect server on another machine, the file lock alone otherwise."""

from __future__ import annotations

import pytest

from insight.record.runlock import RunLockedError
from tasks import run_lock


@pytest.mark.parametrize("url, mode, backend", [
    (None, None, "file"),                              # no server: one machine
    ("http://127.0.0.1:4200/api", None, "file"),       # a server on this machine
    ("http://localhost:4200/api", "auto", "file"),
    ("http://[::1]:4200/api", None, "file"),
    ("http://prefect-server:4200/api", None, "prefect"),  # shared: other nodes may train
    ("https://10.0.0.5/api", None, "prefect"),
    ("http://127.0.0.1:4200/api", "prefect", "prefect"),  # asked for explicitly
    ("http://prefect-server:4200/api", "file", "file"),
])
def test_the_global_limit_is_used_for_a_server_other_machines_share(url, mode, backend):
    assert run_lock.lock_backend(url, mode) == backend


def test_a_wrong_lock_mode_is_one_clear_line():
    with pytest.raises(ValueError, match="INSIGHT_RUN_LOCK must be auto, prefect or file"):
        run_lock.lock_backend(None, "redis")
    with pytest.raises(ValueError, match="needs a Prefect server"):
        run_lock.lock_backend(None, "prefect")


def test_a_run_directory_has_one_limit_whatever_path_names_it(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "run")
    name = run_lock.limit_name(tmp_path / "run")
    assert name == run_lock.limit_name(tmp_path / "link")
    assert name != run_lock.limit_name(tmp_path / "other")
    assert name.startswith("insight-run-") and len(name) <= 40


@pytest.mark.e2e
def test_a_second_holder_of_the_limit_is_refused_and_the_first_is_reentrant(
        prefect_api, tmp_path, monkeypatch):
    """Against the session's real Prefect server: the flow inside the CLI's lock takes it
    again (re-entrant); another holder (here: the slot taken directly, as another
    machine would) waits (one lease; here 2 s) and is refused in one line."""
    monkeypatch.setenv(run_lock.MODE_ENV, "prefect")
    monkeypatch.setattr(run_lock, "WAIT_SECONDS", 2.0)
    run_dir = tmp_path / "run"
    with run_lock.run_lock(run_dir):
        with run_lock.run_lock(run_dir, create=False):  # the flow inside the CLI
            pass
        with pytest.raises(RunLockedError, match="Prefect concurrency limit insight-run-"):
            with run_lock._global_slot(run_lock.limit_name(run_dir), run_dir):
                pass
    # released with the outermost block: the next training takes it at once
    with run_lock.run_lock(run_dir):
        pass
