"""A run directory that is busy, damaged or moved: refused in one line, repaired from the
record, or continued from its own files, never silently mixed up.

Every test works on a copy of one small trained run (2 rounds), so none of them pays
for training it again and none can disturb another.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from insight import stages
from insight.policy import grpo
from insight.policy import model as policy_model
from insight.config import config_from_dict
from insight.record.run import load_run, open_or_create_run
from insight.record.runlock import training_lock
from insight.record.layout import round_dir
from insight.record.store import RunDamagedError, RunStore
from tests.test_e2e import tiny_config

pytestmark = pytest.mark.e2e

ROUNDS = 2


def integrity_config(policy_dir, **over) -> dict:
    base = {"rounds": ROUNDS, "tracking": {"enabled": False},
            "eval": {"every": ROUNDS, "n_samples": 1}}
    return tiny_config(policy_dir, **{**base, **over})


@pytest.fixture(scope="module")
def trained_run(prefect_api, tiny_policy_dir, tmp_path_factory) -> Path:
    from flows.train import train_flow
    cfg = config_from_dict(integrity_config(tiny_policy_dir))
    run = open_or_create_run(tmp_path_factory.mktemp("trained") / "run", cfg)
    train_flow(str(run.run_dir), progress=False)
    return run.run_dir


@pytest.fixture
def run_dir(trained_run, tmp_path) -> Path:
    """A private copy of the trained run."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def snapshot(run_dir: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file in the run directory and a hash of its bytes."""
    return {p.relative_to(run_dir).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name not in skip}


def cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def stored_k(run_dir: Path) -> int:
    return load_run(run_dir).config.rollout.k


# --- lock order --------------------------------------------------------------------
def test_a_second_train_on_a_training_run_is_refused_before_it_touches_anything(
        run_dir, tiny_policy_dir, tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(integrity_config(tiny_policy_dir)))
    with training_lock(run_dir):  # this test process is the trainer
        before = snapshot(run_dir)
        out = cli("train", "--config", str(cfg_path), "--run-dir", str(run_dir),
                  "--allow-changed", "--set", "rollout.k=2")
        after = snapshot(run_dir)
    assert out.returncode == 3, out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "being trained by another process" in out.stderr
    assert after == before  # byte for byte: config, DuckDB, Parquet, checkpoints, lock
    assert stored_k(run_dir) == 4


# --- corrupt files -----------------------------------------------------------------
def _round_rows(run_dir: Path, table: str, round_: int):
    with RunStore(run_dir) as db:
        return db.sql(f"SELECT * FROM {table} WHERE round = ?", [round_])


def test_a_truncated_or_altered_parquet_file_is_republished_from_duckdb_on_resume(
        run_dir, caplog):
    from flows.train import train_flow
    rollouts = round_dir(run_dir, 1) / "rollouts.parquet"
    posteriors = round_dir(run_dir, 2) / "posteriors.parquet"
    size = rollouts.stat().st_size
    os.truncate(rollouts, size // 2)
    data = bytearray(posteriors.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    posteriors.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="insight.stages"):
        train_flow(str(run_dir), progress=False)
    assert rollouts.stat().st_size == size
    assert pq.read_table(rollouts).equals(_round_rows(run_dir, "rollouts", 1))
    assert pq.read_table(posteriors).equals(_round_rows(run_dir, "posteriors", 2))
    (line,) = [r.getMessage() for r in caplog.records if r.name == "insight.stages"]
    assert "round_00001/rollouts.parquet (truncated" in line
    assert "round_00002/posteriors.parquet (altered" in line


def test_a_missing_round_folder_or_run_table_is_republished(run_dir):
    shutil.rmtree(round_dir(run_dir, 1))
    (run_dir / "parquet" / "prompts.parquet").unlink()
    run = load_run(run_dir)
    assert stages.ensure_published(run) == [-1, 1]
    assert stages.ensure_published(run) == []  # and then all is well
    with RunStore(run_dir) as db:
        prompts = db.sql("SELECT * FROM prompts")
    assert pq.read_table(run_dir / "parquet" / "prompts.parquet").equals(prompts)


def test_rounds_published_before_checksums_were_recorded_are_republished_once(run_dir):
    with RunStore(run_dir) as db:
        db.execute("DELETE FROM published")
    run = load_run(run_dir)
    assert stages.ensure_published(run) == [-1, 0, 1, 2]
    assert stages.ensure_published(run) == []


def test_a_truncated_database_is_refused_in_one_line_and_nothing_is_written(run_dir):
    db_file = run_dir / "insight.duckdb"
    os.truncate(db_file, db_file.stat().st_size // 2)
    before = snapshot(run_dir, skip=(".train.lock",))
    for command in (["resume", "--run-dir", str(run_dir)],
                    ["train", "--run-dir", str(run_dir), "--rounds", str(ROUNDS + 1)]):
        out = cli(*command)
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().splitlines() == [out.stderr.strip()]
        assert out.stderr.startswith(f"error: cannot read the run database {db_file}")
        assert snapshot(run_dir, skip=(".train.lock",)) == before


def test_a_truncated_database_shows_the_traceback_with_insight_debug(run_dir):
    db_file = run_dir / "insight.duckdb"
    os.truncate(db_file, db_file.stat().st_size // 2)
    out = cli("resume", "--run-dir", str(run_dir), env={**os.environ, "INSIGHT_DEBUG": "1"})
    assert out.returncode != 0 and "Traceback" in out.stderr
    assert "RunDamagedError" in out.stderr


def test_a_missing_checkpoint_is_refused_in_one_line_and_nothing_is_written(run_dir):
    shutil.rmtree(run_dir / "checkpoints" / "round_00002")
    before = snapshot(run_dir, skip=(".train.lock",))
    out = cli("resume", "--run-dir", str(run_dir), "--rounds", str(ROUNDS + 1))
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "policy checkpoint of round 2" in out.stderr and "missing" in out.stderr
    assert snapshot(run_dir, skip=(".train.lock",)) == before


def test_the_flow_itself_refuses_a_run_whose_checkpoint_is_missing(run_dir):
    from flows.train import train_flow
    shutil.rmtree(run_dir / "checkpoints" / "round_00002")
    state = train_flow(str(run_dir), rounds=ROUNDS + 1, progress=False, return_state=True)
    with pytest.raises(RunDamagedError, match="round 2"):
        state.result()
    with RunStore(run_dir) as db:
        assert db.round_row(load_run(run_dir).run_id, ROUNDS + 1) is None


# --- portable runs -----------------------------------------------------------------
def test_checkpoints_are_recorded_relative_to_the_run_directory(run_dir, tiny_policy_dir):
    with RunStore(run_dir) as db:
        stored = dict(db.con.execute("SELECT round, checkpoint FROM rounds").fetchall())
    assert stored[1] == "checkpoints/round_00001" and stored[2] == "checkpoints/round_00002"
    assert stored[0] == str(Path(tiny_policy_dir).resolve())  # the configured start


def test_a_copied_run_whose_original_moved_away_trains_on_its_own_checkpoints(
        run_dir, tiny_policy_dir, tmp_path, monkeypatch):
    from flows.train import train_flow
    copy = Path(shutil.copytree(run_dir, tmp_path / "copy"))
    run_dir.rename(tmp_path / "moved-away")
    loaded = []
    for module, name in ((policy_model, "load_policy"), (grpo, "load_trainer_state")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda path, *a, _real=real, **kw: loaded.append(Path(path))
                            or _real(path, *a, **kw))
    stages._POLICY_CACHE.clear()
    train_flow(str(copy), rounds=ROUNDS + 1, progress=False)
    with RunStore(copy) as db:
        assert db.committed_rounds(load_run(copy).run_id) == [0, 1, 2, 3]
    assert loaded and all(p.is_relative_to(copy) or p == Path(tiny_policy_dir).resolve()
                          for p in loaded), loaded
    assert copy / "checkpoints" / "round_00002" in loaded


def test_an_absolute_checkpoint_recorded_by_an_older_version_is_still_read(run_dir):
    run = load_run(run_dir)
    elsewhere = run_dir.parent / "kept-elsewhere"
    shutil.copytree(run_dir / "checkpoints" / "round_00002", elsewhere)
    with RunStore(run_dir) as db:
        db.execute("UPDATE rounds SET checkpoint = ? WHERE round = 2", [str(elsewhere)])
    assert stages.policy_checkpoint(run, 2) == str(elsewhere)
    assert stages.policy_checkpoint(run, 1) == str(run_dir / "checkpoints" / "round_00001")
