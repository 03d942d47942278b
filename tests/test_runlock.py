"""One training process per run directory."""

import subprocess
import sys
import time

import pytest

from insight.runlock import RunLockedError, training_lock


def test_a_second_holder_is_refused_while_the_first_trains(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from insight.runlock import training_lock\n"
        f"with training_lock({str(tmp_path)!r}):\n"
        "    print('locked', flush=True); time.sleep(30)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match="another process"):
            with training_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    # A killed holder leaves no stale lock behind.
    with training_lock(tmp_path):
        pass


def test_the_lock_is_released_on_exit(tmp_path):
    with training_lock(tmp_path):
        pass
    with training_lock(tmp_path):
        pass
