"""Resumability: a run killed or failed at any point continues to exactly the result an
uninterrupted run reaches, with nothing lost, duplicated or orphaned.

The reference is an uninterrupted run with the same seed; every other run is compared to
it table by table (selections, rollouts, posteriors), row for row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import duckdb
import pytest
import yaml

from insight import stages
from insight.config import config_from_dict
from insight.record.run import open_or_create_run
from insight.record.runlock import RunLockedError
from insight.record.store import RunStore
from tests.test_e2e import tiny_config

pytestmark = pytest.mark.e2e

ROUNDS = 4

COMPARED = {
    "selections": "SELECT round, prompt_id, selected, rank, score, alpha, beta FROM selections",
    "rollouts": "SELECT round, prompt_id, sample_idx, completion, reward, success, "
                "policy_round FROM rollouts",
    "posteriors": "SELECT round, prompt_id, alpha, beta FROM posteriors",
    "rounds": "SELECT round, status, rollouts_consumed, selector_state FROM rounds",
}


def resume_config(policy_dir, **over):
    base = {"rounds": ROUNDS, "tracking": {"enabled": False},
            "eval": {"every": ROUNDS, "n_samples": 1}}
    return tiny_config(policy_dir, **{**base, **over})


def tables(run_dir) -> dict[str, list]:
    con = duckdb.connect(str(run_dir / "insight.duckdb"), read_only=True)
    try:
        return {name: sorted(con.execute(sql).fetchall(), key=repr)
                for name, sql in COMPARED.items()}
    finally:
        con.close()


def new_run(tmp_path, policy_dir, name="run", **over):
    cfg = config_from_dict(resume_config(policy_dir, **over))
    return open_or_create_run(tmp_path / name, cfg)


@pytest.fixture(scope="module")
def reference(prefect_api, tiny_policy_dir, tmp_path_factory):
    from flows.train import train_flow
    run = new_run(tmp_path_factory.mktemp("ref"), tiny_policy_dir)
    train_flow(str(run.run_dir), progress=False)
    return tables(run.run_dir)


def _committed(run_dir) -> int:
    return len(list((run_dir / "parquet").glob("round_0*[0-9]")))


@pytest.mark.slow
def test_kill_9_at_any_moment_then_resume_matches_an_uninterrupted_run(
        reference, tiny_policy_dir, tmp_path, prefect_env):
    from flows.train import train_flow
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(resume_config(tiny_policy_dir)))
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "flows.cli", "train", "--config", str(cfg_path),
           "--run-dir", str(run_dir)]
    # Three kills, each a different time after a round's commit: they land in different
    # stages (selection, rollout, update, commit), which is the point.
    for delay in (0.05, 0.6, 1.4):
        before = _committed(run_dir) if run_dir.exists() else 0
        proc = subprocess.Popen(cmd, env=prefect_env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 300
        while _committed(run_dir) <= before and proc.poll() is None:
            assert time.monotonic() < deadline, "no round committed in time"
            time.sleep(0.02)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _committed(run_dir) < ROUNDS + 1, "the run finished before it could be killed"
    train_flow(str(run_dir.resolve()), progress=False)
    assert tables(run_dir.resolve()) == reference


def _fail_once(monkeypatch, name, at_round, exc=RuntimeError):
    real = getattr(stages, name)
    calls = {"n": 0}

    def flaky(run, round_, *a, **kw):
        if round_ == at_round and calls["n"] == 0:
            calls["n"] += 1
            raise exc(f"injected failure in {name} at round {round_}")
        return real(run, round_, *a, **kw)

    monkeypatch.setattr(stages, name, flaky)
    return calls


@pytest.mark.parametrize("stage", ["select", "rollout", "update_posterior", "train",
                                   "evaluate", "commit"])
def test_a_stage_that_fails_marks_the_round_failed_and_a_rerun_completes_it(
        stage, reference, tiny_policy_dir, tmp_path, monkeypatch):
    from flows.train import train_flow
    run = new_run(tmp_path, tiny_policy_dir)
    with monkeypatch.context() as m:
        _fail_once(m, stage, at_round=2)
        state = train_flow(str(run.run_dir), progress=False, return_state=True)
    assert state.is_failed()
    with RunStore(run.run_dir) as db:
        row = db.round_row(run.run_id, 2)
        assert row["status"] == "failed" and "injected failure" in row["error"]
        assert db.committed_rounds(run.run_id) == [0, 1]
    train_flow(str(run.run_dir), progress=False)
    assert tables(run.run_dir) == reference


def test_a_crash_between_commit_and_parquet_export_is_finished_on_resume(
        reference, tiny_policy_dir, tmp_path, monkeypatch):
    from flows.train import train_flow
    from insight.record.layout import round_dir
    run = new_run(tmp_path, tiny_policy_dir)
    real = RunStore.export_round

    def crash(self, run_id, round_):
        if round_ == 3:
            raise OSError("disk went away")
        return real(self, run_id, round_)

    with monkeypatch.context() as m:
        m.setattr(RunStore, "export_round", crash)
        assert train_flow(str(run.run_dir), progress=False, return_state=True).is_failed()
    assert not round_dir(run.run_dir, 3).exists()
    train_flow(str(run.run_dir), progress=False)
    assert round_dir(run.run_dir, 3).is_dir()
    assert tables(run.run_dir) == reference


def test_a_transient_error_is_retried_by_prefect_and_the_run_goes_on(
        reference, tiny_policy_dir, tmp_path, monkeypatch):
    from flows.train import train_flow
    run = new_run(tmp_path, tiny_policy_dir)
    calls = _fail_once(monkeypatch, "rollout", at_round=2, exc=duckdb.IOException)
    state = train_flow(str(run.run_dir), progress=False, return_state=True)
    assert state.is_completed() and calls["n"] == 1
    assert tables(run.run_dir) == reference


def test_resume_with_a_changed_config_is_refused_and_says_what_changed(tiny_policy_dir, tmp_path):
    run = new_run(tmp_path, tiny_policy_dir)
    changed = config_from_dict(resume_config(tiny_policy_dir, rollout={"k": 2}))
    with pytest.raises(ValueError, match=r"rollout\.k: 4 -> 2"):
        open_or_create_run(run.run_dir, changed)
    again = open_or_create_run(run.run_dir, changed, allow_changed=True)
    assert again.run_id == run.run_id and again.config.rollout.k == 2


def test_resume_with_changed_data_is_refused(tiny_policy_dir, tmp_path):
    run = new_run(tmp_path, tiny_policy_dir)
    changed = config_from_dict(resume_config(tiny_policy_dir, data={"seed": 6}))
    with pytest.raises(ValueError, match="data.seed"):
        open_or_create_run(run.run_dir, changed)


def test_more_rounds_is_not_a_change(tiny_policy_dir, tmp_path):
    run = new_run(tmp_path, tiny_policy_dir)
    more = config_from_dict(resume_config(tiny_policy_dir, rounds=ROUNDS + 5))
    assert open_or_create_run(run.run_dir, more).run_id == run.run_id


def test_two_flows_on_one_run_at_once_are_refused(prefect_api, tiny_policy_dir, tmp_path):
    from flows.train import train_flow
    from tests.test_runlock import lock_held_by_another_process
    run = new_run(tmp_path, tiny_policy_dir)
    with lock_held_by_another_process(run.run_dir):
        state = train_flow(str(run.run_dir), progress=False, return_state=True)
    assert state.is_failed()
    with pytest.raises(RunLockedError):
        state.result()


def test_consecutive_scheduled_runs_continue_one_training(reference, tiny_policy_dir, tmp_path):
    """What each scheduled flow run does: at most N new rounds from where the last stopped."""
    from flows.train import train_flow
    run = new_run(tmp_path, tiny_policy_dir)
    assert train_flow(str(run.run_dir), max_new_rounds=2, progress=False)["rounds"] == 2
    assert train_flow(str(run.run_dir), max_new_rounds=2, progress=False)["rounds"] == 4
    assert train_flow(str(run.run_dir), max_new_rounds=2, progress=False)["rounds"] == ROUNDS
    assert tables(run.run_dir) == reference
