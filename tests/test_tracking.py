"""MLflow is a view of the store: when it is unreachable training goes on, and
`insight sync-mlflow` backfills every round later; the MLflow run ends FINISHED or FAILED
with the flow that trained it. The plots it shows are current at the end of a run however
many rounds it ran, and the run directory holds each file once."""

from __future__ import annotations

from pathlib import Path

import pytest

from insight.config import config_from_dict
from insight.record.run import Run, open_or_create_run
from insight.record.store import RunStore
from tasks.tracking import sync, untracked_rounds
from tests.test_audit import ROUNDS, RUN_ID, build_run
from tests.test_e2e import tiny_config

CURRENT = ("posterior_means.png", "selection_heatmap.png", "calibration.png")


@pytest.mark.e2e
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
    _assert_final_policy_logged(run, finished.run_id, round_=2)


def _assert_final_policy_logged(run, mlflow_run_id: str, round_: int) -> None:
    """Once the planned rounds are reached, the last checkpoint's policy (weights, config,
    tokenizer; not the optimizer state) is the run's logged model, READY."""
    from mlflow.tracking import MlflowClient
    from mlflow.utils.file_utils import local_file_uri_to_path
    client = MlflowClient(tracking_uri=f"sqlite:///{run.run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("insight")
    (model,) = client.search_logged_models([exp.experiment_id])
    assert (model.name, str(model.status), model.source_run_id) == \
        ("policy", "READY", mlflow_run_id)
    assert model.tags["insight.round"] == str(round_)
    files = {p.name for p in Path(local_file_uri_to_path(model.artifact_location)).rglob("*")
             if p.is_file()}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= files
    assert "optimizer.pt" not in files
    outputs = client.get_run(mlflow_run_id).outputs.model_outputs
    assert [(o.model_id, o.step) for o in outputs] == [(model.model_id, round_)]


def test_a_flow_refused_by_the_run_lock_leaves_the_mlflow_run_alone(
        prefect_api, tiny_policy_dir, tmp_path):
    from flows.train import train_flow
    from tests.test_runlock import lock_held_by_another_process
    cfg = config_from_dict(tiny_config(tiny_policy_dir, rounds=1,
                                       eval={"every": 1, "n_samples": 1}))
    run = open_or_create_run(tmp_path / "run", cfg)
    assert train_flow(str(run.run_dir), progress=False)["rounds"] == 1
    with lock_held_by_another_process(run.run_dir):
        assert train_flow(str(run.run_dir), progress=False, return_state=True).is_failed()
    assert _mlflow_run(run).status == "FINISHED"


def _synthetic_run(tmp_path, **config) -> Run:
    """The audit tests' synthetic run (rounds 0..ROUNDS committed and published) under a
    config with its own planned rounds and evaluation cadence: no training needed."""
    build_run(tmp_path)
    return Run(tmp_path, RUN_ID, config_from_dict(tiny_config(tmp_path / "policy", **config)))


@pytest.fixture(scope="module")
def resumed_past_the_plan(tmp_path_factory):
    """Planned for ROUNDS - 2 rounds, ran ROUNDS (a resume with a higher target), logged
    to its local MLflow store; evaluation every 4 rounds, snapshots every 10."""
    run = _synthetic_run(tmp_path_factory.mktemp("past-plan"), rounds=ROUNDS - 2,
                         eval={"every": 4})
    assert sync(run) == list(range(ROUNDS + 1))
    (store,) = (run.run_dir / "mlartifacts").glob("*/artifacts")
    return run, store


def test_cumulative_plots_are_current_after_a_run_resumed_past_its_planned_rounds(
        resumed_past_the_plan):
    run, store = resumed_past_the_plan
    plots = run.run_dir / "plots"
    for name in CURRENT:
        assert (plots / name).is_file()
        assert (store / "plots" / name).samefile(plots / name)    # MLflow shows them too
    assert not (plots / f"round_{ROUNDS:05d}" / f"calibration_round_{ROUNDS:05d}.png").exists()


def test_a_run_stopped_before_its_plan_refreshes_them_at_evaluation_rounds(tmp_path):
    from tasks.tracking import round_plots
    run = _synthetic_run(tmp_path, rounds=ROUNDS + 50, eval={"every": 4})
    assert not {p.name for p in round_plots(run, ROUNDS)} & set(CURRENT)   # 6: no eval
    assert not (tmp_path / "plots" / "calibration.png").exists()
    every_3 = Run(run.run_dir, run.run_id, config_from_dict(
        tiny_config(tmp_path / "policy", rounds=ROUNDS + 50, eval={"every": 3})))
    assert set(CURRENT) <= {p.name for p in round_plots(every_3, ROUNDS)}  # 6: eval round


def test_plots_and_tables_are_stored_once_in_the_run_directory(resumed_past_the_plan):
    run, store = resumed_past_the_plan
    # (the selection tables are MLflow's own JSON, B rows a round: tested below)
    logged = [p for p in store.rglob("*") if p.is_file() and "tables" not in p.parts]
    pngs = [p for p in logged if p.suffix == ".png"]
    # a score plot per round 1..ROUNDS, the prior at round 0, the three current ones
    assert len(pngs) == ROUNDS + 1 + len(CURRENT)
    assert sum(p.suffix == ".parquet" for p in logged) >= ROUNDS
    for p in logged:                            # each artifact is a run-directory file
        assert p.stat().st_nlink >= 2, p
    inodes = {}
    for p in run.run_dir.rglob("*.png"):
        inodes.setdefault(p.stat().st_ino, p.stat().st_size)
    plots_bytes = sum(p.stat().st_size for p in (run.run_dir / "plots").rglob("*.png"))
    assert sum(inodes.values()) == plots_bytes  # MLflow's names add no bytes


def test_mlflow_shows_the_prompt_sets_as_datasets_and_each_selection_as_a_table(
        resumed_past_the_plan, tmp_path):
    import json

    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient

    from tests.test_audit import K, REFILL_ROUND
    run, store = resumed_past_the_plan
    truth = build_run(tmp_path)                 # the same synthetic run again: its truth
    client = MlflowClient(tracking_uri=f"sqlite:///{run.run_dir / 'mlflow.db'}")
    inputs = client.get_run(_mlflow_run(run).run_id).inputs.dataset_inputs
    prompts = pq.read_table(run.run_dir / "parquet" / "prompts.parquet").to_pandas()
    by_context = {i.tags[0].value: i.dataset for i in inputs}
    assert set(by_context) == {"training", "evaluation"}
    for context, split in (("training", "train"), ("evaluation", "eval")):
        dataset = by_context[context]
        assert json.loads(dataset.profile)["num_rows"] == (prompts["split"] == split).sum()
        assert len(dataset.digest) >= 8
    assert by_context["training"].digest != by_context["evaluation"].digest

    table = json.loads((store / "tables" / f"selections_round_{REFILL_ROUND:05d}.json")
                       .read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [r["prompt_id"] for r in rows] == truth["selected"][REFILL_ROUND]
    assert {r["gen_batch"] for r in rows} == {0, 1}         # the refill's draws too
    assert [r["successes"] for r in rows] == \
        [truth["successes"][REFILL_ROUND][p] for p in truth["selected"][REFILL_ROUND]]
    assert {r["k"] for r in rows} == {K}
    text = dict(zip(prompts["prompt_id"], prompts["prompt"]))
    assert all(r["prompt"] == text[r["prompt_id"]] for r in rows)
    assert not (store / "tables" / "selections_round_00000.json").exists()  # no draw at 0


def test_to_a_remote_artifact_store_the_same_files_are_uploaded(tmp_path, monkeypatch):
    import tasks.tracking as tracking
    from mlflow.tracking import MlflowClient
    run = _synthetic_run(tmp_path / "run", rounds=ROUNDS - 2, eval={"every": 4})
    monkeypatch.setattr(tracking, "_local_artifact_dir", lambda client, run_id: None)
    uri = f"sqlite:///{tmp_path / 'remote.db'}"
    mlflow_run_id = tracking.ensure_mlflow_run(run, uri=uri)
    tracking.log_round(run, ROUNDS, mlflow_run_id, uri)
    client = MlflowClient(tracking_uri=uri)
    tag = f"round_{ROUNDS:05d}"
    listed = {a.path for a in client.list_artifacts(mlflow_run_id, "plots")}
    assert {f"plots/{name}" for name in CURRENT} <= listed and f"plots/{tag}" in listed
    assert [a.path for a in client.list_artifacts(mlflow_run_id, f"plots/{tag}")] == \
        [f"plots/{tag}/score_vs_mean_{tag}.png"]
    tables = {a.path for a in client.list_artifacts(mlflow_run_id, f"rounds/{tag}")}
    assert f"rounds/{tag}/selections.parquet" in tables


def test_only_file_uris_and_plain_paths_are_local_artifact_stores(tmp_path):
    from tasks.tracking_entities import local_artifact_path
    assert local_artifact_path(tmp_path.as_uri()) == tmp_path
    assert local_artifact_path(str(tmp_path)) == tmp_path
    # a tracking server's proxied store: a scheme without "//", files must be uploaded
    assert local_artifact_path("mlflow-artifacts:/1/abc/artifacts") is None
    assert local_artifact_path("s3://bucket/1/abc/artifacts") is None
