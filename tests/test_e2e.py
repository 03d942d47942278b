"""End to end: a very small run through Prefect, DuckDB, Parquet and MLflow.

These are the checks a user would make after `insight train`: the flow run completed,
every table holds the rows the storage contract promises, MLflow has the config and
the per-round metrics, and the command line prints its JSON summary last.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import yaml

from insight.config import config_from_dict
from insight.record.run import open_or_create_run

pytestmark = pytest.mark.e2e

N_TRAIN, N_EVAL, K, B, ROUNDS = 24, 8, 4, 4, 3


def tiny_config(policy_dir: Path, **over) -> dict:
    cfg = {
        "name": "e2e", "seed": 3, "rounds": ROUNDS,
        "policy": {"path": str(policy_dir), "device": "cpu", "threads": 1},
        "data": {"type": "arithmetic", "n_train": N_TRAIN, "n_eval": N_EVAL,
                 "min_digits": 1, "max_digits": 2, "seed": 5},
        "rollout": {"k": K, "batch_size": B, "max_new_tokens": 4},
        "selector": {"type": "insight"},
        "train": {"micro_batch_size": 8},
        "eval": {"every": 2, "n_samples": 2},
    }
    for key, val in over.items():
        cfg[key] = {**cfg.get(key, {}), **val} if isinstance(val, dict) else val
    return cfg


@pytest.fixture(scope="module")
def finished_run(prefect_api, tiny_policy_dir, tmp_path_factory):
    from flows.train import train_flow
    run_dir = tmp_path_factory.mktemp("run")
    cfg = config_from_dict(tiny_config(tiny_policy_dir))
    run = open_or_create_run(run_dir, cfg)
    state = train_flow(str(run.run_dir), return_state=True)
    return run, state


def q(run, sql):
    con = duckdb.connect(str(run.run_dir / "insight.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_the_prefect_flow_run_completes_and_is_recorded_by_the_api(finished_run):
    from prefect.client.orchestration import get_client
    run, state = finished_run
    assert state.is_completed(), state
    summary = state.result()
    assert summary["rounds"] == ROUNDS and summary["rollouts"] == ROUNDS * B * K
    with get_client(sync_client=True) as client:
        fr = client.read_flow_run(state.state_details.flow_run_id)
    assert fr.state.is_completed()
    tasks = {tr.name.split("-r")[0] for tr in client_task_runs(fr.id)}
    assert {"select", "rollout", "posterior", "train", "commit"} <= tasks


def client_task_runs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def test_every_round_is_committed_with_a_checkpoint(finished_run):
    run, _ = finished_run
    rows = q(run, "SELECT round, status, checkpoint FROM rounds ORDER BY round")
    assert [r[0] for r in rows] == [0, 1, 2, 3]
    assert all(r[1] == "committed" for r in rows)
    assert rows[-1][2] == "checkpoints/round_00003"  # relative: the run may be moved
    assert (run.run_dir / rows[-1][2] / "config.json").is_file()


def test_selections_hold_every_candidate_and_exactly_b_selected(finished_run):
    run, _ = finished_run
    rows = q(run, "SELECT round, count(*), sum(selected::INT), count(DISTINCT prompt_id) "
                  "FROM selections GROUP BY round ORDER BY round")
    assert [r[0] for r in rows] == [1, 2, 3]
    for _, n, n_sel, n_distinct in rows:
        assert n == n_distinct == N_TRAIN and n_sel == B
    ranks = q(run, "SELECT rank FROM selections WHERE round = 1 AND selected ORDER BY rank")
    assert [r[0] for r in ranks] == list(range(1, B + 1))


def test_rollouts_are_k_per_selected_prompt_and_stamped_with_the_policy_round(finished_run):
    run, _ = finished_run
    rows = q(run, "SELECT round, count(*), min(policy_round), max(policy_round), "
                  "count(DISTINCT prompt_id) FROM rollouts GROUP BY round ORDER BY round")
    assert rows == [(r, B * K, r - 1, r - 1, B) for r in (1, 2, 3)]
    picked = q(run, "SELECT count(*) FROM rollouts r LEFT JOIN selections s USING "
                    "(run_id, round, prompt_id) WHERE NOT coalesce(s.selected, false)")
    assert picked == [(0,)]


def test_posteriors_follow_the_conjugate_update_from_the_rollouts(finished_run):
    run, _ = finished_run
    assert q(run, "SELECT round, count(*) FROM posteriors GROUP BY round ORDER BY round") == \
        [(r, N_TRAIN) for r in range(ROUNDS + 1)]
    # lam = 1: alpha = a0 + all successes so far, beta = b0 + all failures so far.
    bad = q(run, """
        SELECT p.prompt_id FROM posteriors p LEFT JOIN (
            SELECT prompt_id, sum(success::INT) AS s, count(*) AS n FROM rollouts GROUP BY 1
        ) o USING (prompt_id)
        WHERE p.round = 3 AND (abs(p.alpha - 1 - coalesce(o.s, 0)) > 1e-9
                               OR abs(p.beta - 1 - coalesce(o.n - o.s, 0)) > 1e-9)""")
    assert bad == []


def test_held_out_accuracy_is_recorded_at_start_every_n_rounds_and_at_the_end(finished_run):
    run, _ = finished_run
    rounds = [r[0] for r in q(run, "SELECT round FROM evals ORDER BY round")]
    assert rounds == [0, 2, 3]


def test_each_committed_round_is_published_as_parquet(finished_run):
    run, _ = finished_run
    for r in range(1, ROUNDS + 1):
        folder = run.run_dir / "parquet" / f"round_{r:05d}"
        assert pq.read_table(folder / "rollouts.parquet").num_rows == B * K
        assert pq.read_table(folder / "selections.parquet").num_rows == N_TRAIN
    assert pq.read_table(run.run_dir / "parquet" / "prompts.parquet").num_rows == N_TRAIN + N_EVAL


def test_mlflow_run_has_the_config_the_flow_run_id_and_per_round_metrics(finished_run):
    from mlflow.tracking import MlflowClient
    run, state = finished_run
    client = MlflowClient(tracking_uri=f"sqlite:///{run.run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("insight")
    (mr,) = client.search_runs([exp.experiment_id])
    assert mr.data.params["rollout.k"] == str(K)
    assert mr.data.params["selector.type"] == "insight"
    assert mr.data.tags["prefect.flow_run_id"] == str(state.state_details.flow_run_id)
    steps = [m.step for m in client.get_metric_history(mr.info.run_id, "reward_mean")]
    assert sorted(steps) == [1, 2, 3]
    acc_steps = [m.step for m in client.get_metric_history(mr.info.run_id, "heldout_accuracy")]
    assert sorted(acc_steps) == [0, 2, 3]
    arts = [a.path for a in client.list_artifacts(mr.info.run_id, "rounds")]
    assert "rounds/round_00003" in arts


def test_training_an_already_finished_run_does_nothing_more(finished_run):
    from flows.train import train_flow
    run, _ = finished_run
    before = q(run, "SELECT count(*) FROM rollouts")
    summary = train_flow(str(run.run_dir), progress=False)
    assert summary["rounds"] == ROUNDS
    assert q(run, "SELECT count(*) FROM rollouts") == before


@pytest.mark.slow
def test_insight_train_command_prints_progress_and_a_json_summary_last(prefect_env,
                                                                       tiny_policy_dir,
                                                                       tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(tiny_policy_dir, rounds=2)))
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "flows.cli", "train", "--config", str(cfg_path),
                          "--run-dir", str(run_dir), "--selector", "uniform"],
                         capture_output=True, text=True, timeout=600, env=prefect_env)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert any(line.startswith("round   2/2") for line in lines), out.stdout
    summary = json.loads(lines[-1])
    for key in ("run_id", "run_dir", "rounds", "rollouts", "initial_accuracy", "final_accuracy"):
        assert key in summary
    assert summary["rounds"] == 2 and summary["selector"] == "uniform"
    assert Path(summary["run_dir"]) == run_dir.resolve()


def test_a_missing_model_path_fails_before_training_and_names_the_path(tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config(tmp_path / "no-such-model")))
    out = subprocess.run([sys.executable, "-m", "flows.cli", "train", "--config", str(cfg_path),
                          "--run-dir", str(tmp_path / "run")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2
    assert "no-such-model" in out.stderr and "policy.path" in out.stderr
    assert not (tmp_path / "run" / "insight.duckdb").exists()


def test_dynamic_sampling_refills_and_counts_every_generated_rollout(prefect_api,
                                                                     tiny_policy_dir, tmp_path):
    """DAPO: groups with s=0 or s=k are dropped and refilled from fresh prompts; the
    dropped generations are recorded (kept = false) and counted as consumed."""
    from flows.train import train_flow
    cfg = config_from_dict(tiny_config(tiny_policy_dir, rounds=1, tracking={"enabled": False},
                                       selector={"type": "dynamic-sampling",
                                                 "max_num_gen_batches": 3}))
    run = open_or_create_run(tmp_path / "run", cfg)
    summary = train_flow(str(run.run_dir), progress=False)
    rows = q(run, "SELECT gen_batch, count(*), sum(kept::INT) FROM rollouts GROUP BY 1 ORDER BY 1")
    # An untrained policy fails every prompt: nothing is kept, all 3 batches are generated.
    assert [r[0] for r in rows] == [0, 1, 2]
    assert sum(r[1] for r in rows) == summary["rollouts"] == 3 * B * K
    drawn = q(run, "SELECT count(DISTINCT prompt_id), count(*) FROM selections WHERE selected")
    assert drawn == [(3 * B, 3 * B)]     # refills never re-draw a prompt within the round
