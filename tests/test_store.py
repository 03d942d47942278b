"""The run store: idempotent stage writes, discard-on-redo, commit, Parquet publishing."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from insight.record.layout import round_dir
from insight.record.store import RunStore


def _rollouts(run_id, round_, n):
    return pa.table({"run_id": [run_id] * n, "round": pa.array([round_] * n, pa.int32()),
                     "prompt_id": [f"p{i}" for i in range(n)],
                     "sample_idx": pa.array([0] * n, pa.int32()),
                     "reward": [1.0] * n, "success": [True] * n, "kept": [True] * n})


def test_replacing_a_rounds_rows_twice_leaves_one_copy(tmp_path):
    with RunStore(tmp_path) as db:
        db.replace_round_rows("rollouts", "r", 1, _rollouts("r", 1, 3))
        db.replace_round_rows("rollouts", "r", 1, _rollouts("r", 1, 3))
        assert db.scalar("SELECT count(*) FROM rollouts") == 3


def test_starting_a_round_again_discards_its_partial_output(tmp_path):
    with RunStore(tmp_path) as db:
        db.start_round("r", 1, "flow-a")
        db.replace_round_rows("rollouts", "r", 1, _rollouts("r", 1, 4))
        db.start_round("r", 1, "flow-b")
        assert db.scalar("SELECT count(*) FROM rollouts") == 0
        assert db.round_row("r", 1)["flow_run_id"] == "flow-b"
        assert db.round_row("r", 1)["status"] == "running"


def test_a_committed_round_cannot_be_restarted(tmp_path):
    with RunStore(tmp_path) as db:
        db.start_round("r", 1, None)
        db.commit_round("r", 1, checkpoint="c", selector_state={"epoch": 2},
                        rollouts_consumed=8, metrics={"reward_mean": 0.5})
        with pytest.raises(ValueError, match="already committed"):
            db.start_round("r", 1, None)
        assert db.committed_rounds("r") == [1]
        assert db.last_committed_round("r") == 1


def test_commit_requires_a_running_round(tmp_path):
    with RunStore(tmp_path) as db:
        with pytest.raises(RuntimeError, match="not running"):
            db.commit_round("r", 3, checkpoint="c", selector_state={}, rollouts_consumed=0,
                            metrics={})


def test_failed_round_keeps_the_error_and_is_not_committed(tmp_path):
    with RunStore(tmp_path) as db:
        db.start_round("r", 2, None)
        db.fail_round("r", 2, "OOM: out of memory")
        row = db.round_row("r", 2)
        assert row["status"] == "failed" and "OOM" in row["error"]
        assert db.committed_rounds("r") == []


def test_transaction_rolls_back_on_error(tmp_path):
    with RunStore(tmp_path) as db:
        with pytest.raises(ZeroDivisionError):
            with db.transaction():
                db.insert("rollouts", _rollouts("r", 1, 2))
                1 / 0
        assert db.scalar("SELECT count(*) FROM rollouts") == 0


def test_export_round_publishes_every_round_table_as_parquet(tmp_path):
    with RunStore(tmp_path) as db:
        db.start_round("r", 1, None)
        db.replace_round_rows("rollouts", "r", 1, _rollouts("r", 1, 5))
        db.commit_round("r", 1, checkpoint="c", selector_state={}, rollouts_consumed=5,
                        metrics={})
        folder = db.export_round("r", 1)
    assert folder == round_dir(tmp_path, 1)
    assert pq.read_table(folder / "rollouts.parquet").num_rows == 5
    assert pq.read_table(folder / "rounds.parquet").column("status").to_pylist() == ["committed"]
    assert not folder.with_name(folder.name + ".tmp").exists()


def test_read_only_open_of_a_missing_run_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="insight.duckdb"):
        with RunStore(tmp_path / "nope", read_only=True):
            pass


def test_a_run_file_from_before_a_new_column_gains_it_on_open(tmp_path):
    import duckdb

    con = duckdb.connect(str(tmp_path / "insight.duckdb"))  # rollouts as an older version made it
    con.execute("CREATE TABLE rollouts (run_id VARCHAR, round INTEGER, prompt_id VARCHAR, "
                "completion VARCHAR)")
    con.execute("INSERT INTO rollouts VALUES ('r', 1, 'p0', 'old')")
    con.close()
    with RunStore(tmp_path) as db:
        db.insert("rollouts", pa.table({"run_id": ["r"], "round": pa.array([2], pa.int32()),
                                        "completion": ["new"], "completion_chars": [3]}))
        rows = db.sql("SELECT completion, completion_chars, kept FROM rollouts ORDER BY round")
    assert rows.to_pylist() == [
        {"completion": "old", "completion_chars": None, "kept": None},
        {"completion": "new", "completion_chars": 3, "kept": None},
    ]
