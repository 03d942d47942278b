"""The record has one owner: SQL over the storage-contract tables lives in three modules
(the DuckDB store, the published-Parquet reader, the audit), everything else calls their
named queries. A schema change is then made and reviewed in one place, and a query
written ad hoc elsewhere fails here with the file and line that holds it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from insight.record.schema import TABLES
from insight.record.store import RunStore
from tests.test_audit import ROUNDS, RUN_ID, build_run

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("insight", "tasks", "flows", "scripts")

SQL_OWNERS = {
    "insight/record/store.py",      # the DuckDB record: writes and the named queries
    "insight/record/published.py",  # reads of the published Parquet, the plots' data
    "insight/report/audit.py",      # the audit's queries
}
EXCEPTIONS: set[str] = set()

CONTRACT_SQL = re.compile(r"\b(FROM|INTO|UPDATE|JOIN)\s+(%s)\b" % "|".join(TABLES))


def sql_over_the_record(text: str) -> list[int]:
    """Line numbers of SQL that reads or writes a contract table."""
    return [text.count("\n", 0, m.start()) + 1 for m in CONTRACT_SQL.finditer(text)]


def source_files() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py"))


def test_the_pattern_finds_contract_sql_and_not_prose():
    assert sql_over_the_record("x = 1\ndb.sql('SELECT round FROM rounds WHERE run_id = ?')") == [2]
    assert sql_over_the_record('"""\n  SELECT s.mean\n  FROM selections s JOIN obs o"""') == [3]
    assert sql_over_the_record("INSERT INTO tracking VALUES (?)\nUPDATE runs SET x = 1") == [1, 2]
    assert sql_over_the_record("rows come from rounds that committed; SELECT 1 FROM obs") == []


def test_only_the_three_owners_hold_sql_over_the_record():
    stray = [f"{p.relative_to(REPO).as_posix()}:{line}"
             for p in source_files()
             if p.relative_to(REPO).as_posix() not in SQL_OWNERS | EXCEPTIONS
             for line in sql_over_the_record(p.read_text())]
    assert not stray, ("SQL over the record outside its owners (make it a named query "
                       f"in one of {sorted(SQL_OWNERS)}): {stray}")


@pytest.mark.parametrize("module", sorted(SQL_OWNERS | EXCEPTIONS))
def test_every_listed_module_exists_and_still_holds_such_sql(module):
    """A scan that matched nothing would pass vacuously; an exception whose SQL has moved
    out is stale and should be dropped from the list."""
    path = REPO / module
    assert path.is_file(), f"{module} is listed but does not exist"
    assert sql_over_the_record(path.read_text()), (
        f"{module} holds no SQL over the record: drop it from the list")


# --- a few named queries whose callers' tests do not pin them down -----------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("named-queries")
    build_run(path)           # rounds 0..ROUNDS committed, ROUNDS + 1 started, not committed
    return path


def test_a_round_logged_twice_to_one_tracking_uri_keeps_one_record(run_dir):
    with RunStore(run_dir) as db:
        db.record_tracked(RUN_ID, 1, "mlflow-a", "sqlite:///one.db")
        db.record_tracked(RUN_ID, 1, "mlflow-b", "sqlite:///one.db")
        db.record_tracked(RUN_ID, 1, "mlflow-c", "sqlite:///two.db")
        assert db.tracked_mlflow_run(RUN_ID, 1, "sqlite:///one.db") == "mlflow-b"
        assert db.tracked_mlflow_run(RUN_ID, 1, "sqlite:///two.db") == "mlflow-c"
        assert db.tracked_mlflow_run(RUN_ID, 2, "sqlite:///one.db") is None
        assert db.scalar("SELECT count(*) FROM tracking WHERE round = 1") == 2


def test_untracked_rounds_are_the_committed_ones_that_uri_has_not_seen(run_dir):
    with RunStore(run_dir) as db:
        db.record_tracked(RUN_ID, 0, "m", "sqlite:///seen.db")
        db.record_tracked(RUN_ID, 2, "m", "sqlite:///seen.db")
        assert db.untracked_rounds(RUN_ID, "sqlite:///seen.db") == \
            [r for r in range(ROUNDS + 1) if r not in (0, 2)]
        # the round in flight (ROUNDS + 1) is never among them
        assert db.untracked_rounds(RUN_ID, "sqlite:///new.db") == list(range(ROUNDS + 1))


def test_outcomes_by_difficulty_stop_at_the_round_asked_for(run_dir):
    with RunStore(run_dir, read_only=True) as db:
        every = db.group_outcomes_by_difficulty(RUN_ID)
        first = db.group_outcomes_by_difficulty(RUN_ID, 1)
        groups_in_round_1 = len(db.group_outcomes(RUN_ID, 1))
    assert sum(r["groups"] for r in first) == groups_in_round_1
    assert sum(r["groups"] for r in every) > groups_in_round_1
    assert [r["difficulty"] for r in every] == sorted(r["difficulty"] for r in every)
