"""One training process per run directory."""

import subprocess
import sys
from contextlib import contextmanager

import pytest

from insight.record.runlock import RunLockedError, training_lock


@contextmanager
def lock_held_by_another_process(run_dir):
    """A real second process that holds the run's lock until the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from insight.record.runlock import training_lock\n"
        f"with training_lock({str(run_dir)!r}):\n"
        "    print('locked', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_second_holder_is_refused_while_the_first_trains(tmp_path):
    with lock_held_by_another_process(tmp_path) as pid:
        with pytest.raises(RunLockedError, match=f"another process \\(pid {pid}\\)"):
            with training_lock(tmp_path):
                pass
    # A killed holder leaves no stale lock behind.
    with training_lock(tmp_path):
        pass


def test_the_lock_is_released_on_exit(tmp_path):
    with training_lock(tmp_path):
        pass
    with training_lock(tmp_path):
        pass


def _refused_elsewhere(run_dir) -> bool:
    out = subprocess.run([sys.executable, "-c", (
        "from insight.record.runlock import RunLockedError, training_lock\n"
        "try:\n"
        f"    with training_lock({str(run_dir)!r}): print('free')\n"
        "except RunLockedError: print('refused')")], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "refused"


def test_the_holder_may_take_its_lock_again_and_keeps_it_until_the_outer_block_ends(tmp_path):
    """What lets the CLI lock a run before touching it and then start the flow that
    locks it again (under any spelling of the directory)."""
    run_dir, alias = tmp_path / "run", tmp_path / "alias"
    run_dir.mkdir()
    alias.symlink_to(run_dir)
    with training_lock(run_dir):
        with training_lock(alias):
            pass
        assert _refused_elsewhere(run_dir)
    assert not _refused_elsewhere(run_dir)


def test_without_create_a_missing_run_directory_is_refused_not_created(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run directory"):
        with training_lock(tmp_path / "nope", create=False):
            pass
    assert not (tmp_path / "nope").exists()
