"""MLflow is a view of the store: when it is unreachable training goes on, and
`insight sync-mlflow` backfills every round later."""

from __future__ import annotations

import pytest

from insight.config import config_from_dict
from insight.run import open_or_create_run
from insight.store import RunStore
from tasks.tracking import sync, untracked_rounds
from tests.test_e2e import tiny_config

pytestmark = pytest.mark.e2e


def test_unreachable_mlflow_does_not_stop_training_and_sync_backfills(prefect_api,
                                                                      tiny_policy_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    from flows.train import train_flow
    cfg = config_from_dict(tiny_config(tiny_policy_dir, rounds=2, eval={"every": 2},
                                       tracking={"tracking_uri": "http://127.0.0.1:9"}))
    run = open_or_create_run(tmp_path / "run", cfg)
    summary = train_flow(str(run.run_dir), progress=False)
    assert summary["rounds"] == 2
    with RunStore(run.run_dir) as db:
        assert db.committed_rounds(run.run_id) == [0, 1, 2]
    assert untracked_rounds(run) == [0, 1, 2]

    uri = f"sqlite:///{tmp_path / 'later' / 'mlflow.db'}"
    (tmp_path / "later").mkdir()
    assert sync(run, uri=uri) == [0, 1, 2]
    assert sync(run, uri=uri) == []          # idempotent: nothing logged twice
    client = MlflowClient(tracking_uri=uri)
    (mr,) = client.search_runs([client.get_experiment_by_name("insight").experiment_id])
    assert sorted(m.step for m in client.get_metric_history(mr.info.run_id, "reward_mean")) == [1, 2]
    plots = [a.path for a in client.list_artifacts(mr.info.run_id, "plots/round_00002")]
    assert any(p.endswith(".png") for p in plots)
    assert (tmp_path / "later" / "mlartifacts").is_dir()
