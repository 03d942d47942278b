"""The deployment's servers, for real: `prefect server start` and `mlflow server` run as
processes on free loopback ports (each with its own home and SQLite database), started
the way docker/compose.yaml starts them (Prefect with an API auth string, MLflow with its
basic-auth app). The embedded default trains 2 rounds against them, and their APIs show
the record: a COMPLETED flow run with its stage task runs, the MLflow run FINISHED with
its metrics, artifacts, dataset inputs and logged policy. Then a process work pool's
worker runs the deployment `insight deploy --work-pool` registered, one more round, under a
concurrency limit of 1 on the `gpu` tag.

Nobody gets in without credentials: both servers refuse an anonymous request."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from insight.record.store import RunStore

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BIN = Path(sys.executable).parent      # the prefect and mlflow commands of this environment
STAGES = {"select", "rollout", "posterior", "train", "eval", "commit"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(cmd: list[str], env: dict, health: str, log: Path, auth=None, timeout=180):
    """Start `cmd` in its own process group, wait until `health` answers 200, stop the
    whole group at the end."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"{cmd[0]} exited: {log.read_text()[-3000:]}"
            try:
                if httpx.get(health, auth=auth, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{cmd[0]} never answered: {log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A Prefect server and an MLflow tracking server, both requiring credentials."""
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs Flask-WTF "
                                            "(the test extra installs it)")
    root = tmp_path_factory.mktemp("servers")
    prefect_port, mlflow_port = free_port(), free_port()
    prefect_auth = f"insight:{secrets.token_hex(8)}"
    mlflow_user, mlflow_password = "admin", secrets.token_hex(8)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    prefect_env = {**base, "PREFECT_HOME": str(root / "prefect"),
                   "PREFECT_API_DATABASE_CONNECTION_URL":
                       f"sqlite+aiosqlite:///{root / 'prefect.db'}",
                   "PREFECT_SERVER_API_AUTH_STRING": prefect_auth,
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                   "PREFECT_SERVER_UI_ENABLED": "false"}
    (root / "auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'mlflow-auth.db'}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    mlflow_env = {**base, "MLFLOW_AUTH_CONFIG_PATH": str(root / "auth.ini"),
                  "MLFLOW_AUTH_ADMIN_USERNAME": mlflow_user,
                  "MLFLOW_AUTH_ADMIN_PASSWORD": mlflow_password,
                  "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    prefect_url = f"http://127.0.0.1:{prefect_port}/api"
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    with server([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                 "--port", str(prefect_port), "--no-ui"], prefect_env,
                f"{prefect_url}/health", root / "prefect.log",
                auth=tuple(prefect_auth.split(":", 1))), \
         server([str(BIN / "mlflow"), "server", "--host", "127.0.0.1",
                 "--port", str(mlflow_port), "--workers", "1", "--app-name", "basic-auth",
                 "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                 "--artifacts-destination", str(root / "artifacts")], mlflow_env,
                f"{mlflow_url}/health", root / "mlflow.log"):
        # The basic-auth app answers its first requests slowly (it sets up its user
        # store); a request made here keeps that out of the training's 10 s timeout.
        warm = httpx.post(f"{mlflow_url}/api/2.0/mlflow/experiments/search",
                          json={"max_results": 1}, auth=(mlflow_user, mlflow_password),
                          timeout=120)
        assert warm.status_code == 200, warm.text
        client_env = {**base, "PREFECT_API_URL": prefect_url,
                      "PREFECT_API_AUTH_STRING": prefect_auth,
                      "PREFECT_HOME": str(root / "client-prefect"),
                      "MLFLOW_TRACKING_USERNAME": mlflow_user,
                      "MLFLOW_TRACKING_PASSWORD": mlflow_password,
                      # a loaded test machine is slower than a server's users expect
                      "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
        yield {"prefect_url": prefect_url, "mlflow_url": mlflow_url, "env": client_env,
               "root": root}


def test_nobody_gets_in_without_credentials(servers):
    anonymous = httpx.post(f"{servers['prefect_url']}/flow_runs/filter", json={}, timeout=10)
    assert anonymous.status_code == 401
    search = f"{servers['mlflow_url']}/api/2.0/mlflow/experiments/search"
    assert httpx.post(search, json={"max_results": 1}, timeout=10).status_code == 401
    wrong = httpx.post(search, json={"max_results": 1}, auth=("admin", "password1234"),
                       timeout=10)
    assert wrong.status_code == 401


@pytest.fixture(scope="module")
def trained(servers):
    """2 rounds of the embedded default (configs/tiny.yaml), through the command line,
    reporting to both servers. A smaller held-out evaluation (64 prompts, one sample): the
    default's 400 x (4 + greedy) generations at rounds 0, 2 and 3 were most of the test's
    time, and nothing here is about the accuracy."""
    run_dir = servers["root"] / "run"
    out = subprocess.run([sys.executable, "-m", "flows.cli", "train", "--run-dir", str(run_dir),
                          "--set", "rounds=2", "--set", "data.n_eval=64",
                          "--set", "eval.n_samples=1", "--set",
                          f"tracking.tracking_uri={servers['mlflow_url']}"],
                         env=servers["env"], capture_output=True, text=True, timeout=600,
                         cwd=servers["root"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "warning" not in out.stdout, out.stdout
    # artifacts went to the server, not into a folder named after its URI
    assert not any(p.name.startswith("mlflow-artifacts") for p in servers["root"].iterdir())
    return run_dir, json.loads(out.stdout.strip().splitlines()[-1])


@contextmanager
def prefect_client(servers):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
    with temporary_settings({PREFECT_API_URL: servers["prefect_url"],
                             PREFECT_API_AUTH_STRING: servers["env"]["PREFECT_API_AUTH_STRING"]}):
        with get_client(sync_client=True) as client:
            yield client


def test_prefect_shows_a_completed_flow_run_with_its_stage_task_runs(servers, trained):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    run_dir, summary = trained
    assert summary["rounds"] == 2
    with RunStore(run_dir) as db:
        (flow_run_id,) = {db.round_row(summary["run_id"], r)["flow_run_id"] for r in (1, 2)}
    with prefect_client(servers) as client:
        flow_run = client.read_flow_run(flow_run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run.id])))
    assert flow_run.state.is_completed() and flow_run.parameters["run_dir"] == str(run_dir)
    by_name = {t.name: t for t in tasks}
    for r in (1, 2):
        for stage in STAGES:
            task = by_name[f"{stage}-r{r}"]
            assert task.state.is_completed(), (task.name, task.state)
            assert "insight" in task.tags
    assert {"gpu"} <= set(by_name["rollout-r1"].tags) and "cpu" in by_name["select-r1"].tags


def test_mlflow_shows_the_finished_run_with_metrics_artifacts_data_and_model(servers, trained):
    from mlflow.tracking import MlflowClient
    run_dir, summary = trained
    os.environ.update({k: servers["env"][k]
                       for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")})
    try:
        client = MlflowClient(tracking_uri=servers["mlflow_url"])
        exp = client.get_experiment_by_name("insight")
        (mr,) = client.search_runs([exp.experiment_id])
        assert mr.info.status == "FINISHED" and mr.info.run_name == summary["run_id"]
        steps = [m.step for m in client.get_metric_history(mr.info.run_id, "reward_mean")]
        assert sorted(steps) == [1, 2]
        rounds = {a.path for a in client.list_artifacts(mr.info.run_id, "rounds/round_00002")}
        assert "rounds/round_00002/selections.parquet" in rounds
        tables = {a.path for a in client.list_artifacts(mr.info.run_id, "tables")}
        assert {f"tables/selections_round_0000{r}.json" for r in (1, 2)} <= tables
        plots = [a.path for a in client.list_artifacts(mr.info.run_id, "plots/round_00002")]
        assert any(p.endswith(".png") for p in plots)
        contexts = {i.tags[0].value for i in mr.inputs.dataset_inputs}
        assert contexts == {"training", "evaluation"}
        (model,) = client.search_logged_models([exp.experiment_id])
        assert model.source_run_id == mr.info.run_id and str(model.status) == "READY"
        files = {a.path for a in client.list_logged_model_artifacts(model.model_id)}
        assert "model.safetensors" in files and "optimizer.pt" not in files
    finally:
        for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(k, None)


def test_a_process_work_pool_worker_runs_the_deployment_insight_deploy_registered(
        servers, trained):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    run_dir, summary = trained
    env = servers["env"]
    prefect = str(BIN / "prefect")
    subprocess.run([prefect, "work-pool", "create", "insight-process", "--type", "process"],
                   env=env, check=True, capture_output=True, timeout=120)
    # a tag limit on the GPU stages, as docs/deploy.md suggests: they take and free its slot
    subprocess.run([prefect, "concurrency-limit", "create", "gpu", "1"],
                   env=env, check=True, capture_output=True, timeout=120)
    out = subprocess.run([sys.executable, "-m", "flows.cli", "deploy", "--run-dir", str(run_dir),
                          "--work-pool", "insight-process", "--rounds", "3",
                          "--rounds-per-run", "1"],
                         env=env, capture_output=True, text=True, timeout=300,
                         cwd=servers["root"])
    assert out.returncode == 0, out.stderr[-3000:]
    deployment_id = json.loads(out.stdout.strip().splitlines()[-1])["deployment_id"]
    with prefect_client(servers) as client:
        deployment = client.read_deployment(deployment_id)
        assert deployment.entrypoint == "flows.train.train_flow"
        assert deployment.work_pool_name == "insight-process"
        assert deployment.parameters["max_new_rounds"] == 1
        flow_run = client.create_flow_run_from_deployment(deployment.id)
    worker = subprocess.run([prefect, "worker", "start", "--pool", "insight-process",
                             "--run-once"], env=env, capture_output=True, text=True,
                            timeout=420, cwd=servers["root"])
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    with prefect_client(servers) as client:
        deadline = time.monotonic() + 120
        while not (state := client.read_flow_run(flow_run.id).state).is_final():
            assert time.monotonic() < deadline, state
            time.sleep(1)
        assert state.is_completed(), state
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run.id])))
    assert {t.name for t in tasks} >= {f"{stage}-r3" for stage in STAGES}
    with prefect_client(servers) as client:
        limit = client.read_concurrency_limit_by_tag("gpu")
    assert limit.concurrency_limit == 1 and limit.active_slots == []   # all released
    with RunStore(run_dir) as db:
        assert db.committed_rounds(summary["run_id"]) == [0, 1, 2, 3]
        assert db.round_row(summary["run_id"], 3)["flow_run_id"] == str(flow_run.id)
