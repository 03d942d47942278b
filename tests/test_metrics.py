"""The run summary says which round its final accuracy was measured in: evaluation runs
every `eval.every` rounds, so the last committed round often has no evaluation (a run
resumed past its planned rounds ends between two)."""

from __future__ import annotations

from types import SimpleNamespace

import pyarrow as pa
import pytest

from insight.record.metrics import summarize
from insight.record.store import RunStore
from tests.test_audit import ROUNDS, RUN_ID, build_run


def _run(run_dir):
    config = SimpleNamespace(selector=SimpleNamespace(type="insight"), seed=0)
    return SimpleNamespace(run_id=RUN_ID, run_dir=run_dir, config=config)


def _add_eval(run_dir, round_: int, accuracy: float) -> None:
    with RunStore(run_dir) as db:
        db.replace_round_rows("evals", RUN_ID, round_, pa.table({
            "run_id": [RUN_ID], "round": pa.array([round_], pa.int32()), "split": ["eval"],
            "accuracy": [accuracy]}))


@pytest.fixture
def run_dir(tmp_path):
    build_run(tmp_path)          # rounds 0..ROUNDS committed, evaluated at round 0 only
    return tmp_path


def test_final_accuracy_names_the_last_evaluated_round_not_the_last_round(run_dir):
    _add_eval(run_dir, 2, 0.4)
    summary = summarize(_run(run_dir))
    assert summary["rounds"] == ROUNDS and ROUNDS > 2
    assert summary["final_accuracy"] == pytest.approx(0.4)
    assert summary["final_accuracy_round"] == 2
    assert summary["initial_accuracy"] == pytest.approx(0.1)


def test_an_evaluation_of_an_uncommitted_round_is_not_the_final_one(run_dir):
    # round ROUNDS + 1 was started but never committed: its evaluation does not count
    _add_eval(run_dir, ROUNDS + 1, 0.9)
    summary = summarize(_run(run_dir))
    assert summary["final_accuracy_round"] == 0
    assert summary["final_accuracy"] == pytest.approx(0.1)
