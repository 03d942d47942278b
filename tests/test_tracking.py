"""MLflow is a view of the store: when it is unreachable training goes on, and
`insight sync-mlflow` backfills every round later; the MLflow run ends FINISHED or FAILED
with the flow that trained it."""

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


def _mlflow_run(run):
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=f"sqlite:///{run.run_dir / 'mlflow.db'}")
    (mr,) = client.search_runs([client.get_experiment_by_name("insight").experiment_id])
    return mr.info


def test_the_mlflow_run_ends_failed_with_the_flow_then_finished_after_a_resume(
        prefect_api, tiny_policy_dir, tmp_path, monkeypatch):
    import flows.train
    from flows.train import train_flow
    from insight import stages
    cfg = config_from_dict(tiny_config(tiny_policy_dir, rounds=2,
                                       eval={"every": 2, "n_samples": 1}))
    run = open_or_create_run(tmp_path / "run", cfg)

    real_rollout = stages.rollout

    def broken_at_round_2(run_, round_, *a, **kw):
        if round_ == 2:
            raise RuntimeError("injected failure at round 2")
        return real_rollout(run_, round_, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(stages, "rollout", broken_at_round_2)
        assert train_flow(str(run.run_dir), progress=False, return_state=True).is_failed()
    failed = _mlflow_run(run)
    assert failed.status == "FAILED" and failed.end_time is not None

    seen = []
    real_end = flows.train.try_end

    def end_watched(run_, status, flow_run_id=None):
        seen.append((_mlflow_run(run_).status, status))
        return real_end(run_, status, flow_run_id)

    monkeypatch.setattr(flows.train, "try_end", end_watched)
    assert train_flow(str(run.run_dir), progress=False)["rounds"] == 2
    assert seen == [("RUNNING", "FINISHED")]      # the resumed flow reopened the MLflow run
    finished = _mlflow_run(run)
    assert finished.run_id == failed.run_id
    assert finished.status == "FINISHED" and finished.end_time >= failed.end_time


def test_a_flow_refused_by_the_run_lock_leaves_the_mlflow_run_alone(
        prefect_api, tiny_policy_dir, tmp_path):
    from flows.train import train_flow
    from insight.runlock import training_lock
    cfg = config_from_dict(tiny_config(tiny_policy_dir, rounds=1,
                                       eval={"every": 1, "n_samples": 1}))
    run = open_or_create_run(tmp_path / "run", cfg)
    assert train_flow(str(run.run_dir), progress=False)["rounds"] == 1
    with training_lock(run.run_dir):
        assert train_flow(str(run.run_dir), progress=False, return_state=True).is_failed()
    assert _mlflow_run(run).status == "FINISHED"
