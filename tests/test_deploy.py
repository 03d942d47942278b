"""Scheduled training: `insight deploy` serves the flow; each run of the deployment
continues the same training by a few rounds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from insight.record.store import RunStore
from tests.test_e2e import tiny_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _wait_for_deployment(name: str, proc, timeout: float = 180):
    from prefect.client.orchestration import get_client
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            try:
                return client.read_deployment_by_name(name)
            except Exception:  # noqa: BLE001 - not registered yet
                time.sleep(0.5)
    raise AssertionError(f"deployment {name} never appeared")


def test_two_runs_of_the_deployment_continue_one_training(prefect_api, tiny_policy_dir, tmp_path):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tiny_policy_dir, rounds=4,
                                              tracking={"enabled": False})))
    run_dir = tmp_path / "run"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "deploy", "--run-dir",
                             str(run_dir), "--config", str(cfg), "--interval", "86400",
                             "--rounds-per-run", "2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        from insight.record.run import load_run
        deadline = time.monotonic() + 120
        while not (run_dir / "insight.duckdb").exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.5)
        run = load_run(run_dir)
        dep = _wait_for_deployment(f"insight-train/insight-{run.run_id}", proc)
        assert dep.parameters["max_new_rounds"] == 2
        for expected in ([0, 1, 2], [0, 1, 2, 3, 4]):
            fr = run_deployment(dep.id, timeout=300, poll_interval=1)
            assert fr.state.is_completed(), fr.state
            with RunStore(run_dir) as db:
                assert db.committed_rounds(run.run_id) == expected
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
