"""A user's mistake costs one line: each command below exits non-zero with exactly one
line on stderr, no traceback, and leaves the disk as it found it (no directory, no
`insight.duckdb`, no file created or overwritten). Real processes, as a user runs them.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from insight.selection.validate import MAX_K, validate_k
from insight.config import config_from_dict
from insight.record.run import open_or_create_run
from tests.test_audit import build_run
from tests.test_e2e import tiny_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED_POLICY = REPO / "checkpoints" / "tiny-arith"


def insight(*argv, cwd=None, env=None, timeout=120) -> subprocess.CompletedProcess:
    env = {**(env or os.environ), "PYTHONPATH": str(REPO)}
    env.pop("INSIGHT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "flows.cli", *map(str, argv)], cwd=cwd or REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and folder under `roots`, with a hash of each file's bytes."""
    out = {}
    for root in roots:
        for path in [root, *root.rglob("*")] if root.exists() else []:
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() \
                if path.is_file() else "dir"
    return out


def assert_one_line_error(out: subprocess.CompletedProcess, *phrases: str) -> str:
    assert out.returncode != 0, out.stdout
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(("error: ", "insight audit: error: ")), lines[0]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A created (not trained) run with the shipped policy: enough for sync-mlflow."""
    cfg = config_from_dict(tiny_config(SHIPPED_POLICY))
    return open_or_create_run(tmp_path / "run", cfg).run_dir


# --- a path that is not a run ------------------------------------------------------------
@pytest.mark.parametrize("command", ["resume", "train"])
def test_a_file_given_as_run_directory_is_refused_and_untouched(command, tmp_path):
    a_file = tmp_path / "hostname"
    a_file.write_text("host\n")
    before = snapshot(tmp_path)
    out = insight(command, "--run-dir", a_file)
    assert_one_line_error(out, "not a run directory", str(a_file))
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["resume", "sync-mlflow"])
def test_reading_a_missing_run_creates_nothing(command, tmp_path):
    missing = tmp_path / "no-such-run"
    out = insight(command, "--run-dir", missing)
    assert_one_line_error(out, "no run in", str(missing))
    assert not missing.exists()
    assert list(tmp_path.iterdir()) == []


# --- audit of a damaged run --------------------------------------------------------------
def test_audit_of_a_corrupt_parquet_file_names_it_in_one_line(tmp_path):
    build_run(tmp_path)
    bad = tmp_path / "parquet" / "round_00002" / "selections.parquet"
    bad.write_bytes(bad.read_bytes()[:100])          # truncated mid-file
    before = snapshot(tmp_path)
    out = insight("audit", "--run-dir", tmp_path, "--round", "2")
    assert_one_line_error(out, str(bad))
    assert out.returncode == 2 and out.stdout == ""
    assert snapshot(tmp_path) == before


# --- MLflow that cannot take the sync ----------------------------------------------------
def test_sync_to_an_unreachable_mlflow_is_one_line_and_fast(run_dir):
    before = snapshot(run_dir)
    t0 = time.monotonic()
    out = insight("sync-mlflow", "--run-dir", run_dir, "--tracking-uri", "http://127.0.0.1:9")
    assert time.monotonic() - t0 < 60                 # no minutes of HTTP retries
    assert_one_line_error(out, "http://127.0.0.1:9", "Connection refused", "sync-mlflow")
    assert snapshot(run_dir) == before


def test_sync_to_a_file_store_says_mlflow_refuses_it_and_what_to_use(run_dir, tmp_path):
    store = tmp_path / "mlruns"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ALLOW_FILE_STORE"}
    before = snapshot(run_dir)
    out = insight("sync-mlflow", "--run-dir", run_dir, "--tracking-uri", store.as_uri(), env=env)
    assert_one_line_error(out, "file stores", store.as_uri(), "sqlite:///")
    assert not store.exists()
    assert snapshot(run_dir) == before


# --- insight score ------------------------------------------------------------------------
@pytest.mark.parametrize("output", ["in.csv", "./in.csv", "../work/in.csv"])
def test_score_refuses_to_write_over_its_input(output, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "in.csv").write_text("prompt_id,alpha,beta\na,1,2\nb,3,4\n")
    before = snapshot(tmp_path)
    out = insight("score", "in.csv", output, cwd=work)
    assert_one_line_error(out, "is the input file")
    assert snapshot(tmp_path) == before


def test_score_with_an_absurd_k_stops_at_once_naming_the_limit(tmp_path):
    (tmp_path / "in.csv").write_text("prompt_id,alpha,beta\na,1,2\n")
    t0 = time.monotonic()
    out = insight("score", "in.csv", "out.parquet", "--k", "100000000", cwd=tmp_path)
    assert time.monotonic() - t0 < 60
    assert_one_line_error(out, "100000000", str(MAX_K))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_validate_k_bounds_scalars_and_per_prompt_columns():
    assert validate_k(MAX_K) == MAX_K
    with pytest.raises(ValueError, match=f"limit of {MAX_K}"):
        validate_k(MAX_K + 1)
    with pytest.raises(ValueError, match=r"prompt ids \['b'\]"):
        validate_k(np.array([4, MAX_K + 1]), 2, ["a", "b"])


# --- a config that cannot be run -----------------------------------------------------------
def test_batch_size_larger_than_the_pool_is_refused_at_creation(tmp_path):
    cfg = tiny_config(SHIPPED_POLICY, rollout={"batch_size": 30})     # pool: 24 prompts
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = insight("train", "--config", tmp_path / "cfg.yaml", "--run-dir", tmp_path / "run")
    assert_one_line_error(out, "rollout.batch_size 30", "24")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]


# --- a failure inside a run --------------------------------------------------------------
@pytest.mark.slow
def test_a_failure_inside_the_flow_is_one_line_with_the_traceback_in_the_run_log(
        prefect_env, tmp_path):
    policy = tmp_path / "policy"
    policy.mkdir()
    for f in SHIPPED_POLICY.iterdir():
        (policy / f.name).write_bytes(f.read_bytes())
    (policy / "model.safetensors").write_bytes(b"not a safetensors file")  # fails when loaded
    cfg = tiny_config(policy, rounds=1, tracking={"enabled": False})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    out = insight("train", "--config", tmp_path / "cfg.yaml", "--run-dir", run,
                  env=prefect_env, timeout=600)
    line = assert_one_line_error(out, "training failed", "SafetensorError",
                                 str(run / "insight.log"))
    assert out.returncode == 1, line
    log = (run / "insight.log").read_text()
    assert "Traceback (most recent call last)" in log and "SafetensorError" in log


@pytest.mark.parametrize("argv, message", [
    (["--image", "insight-rlvr:gpu"], "--image and --job-variable go with --work-pool"),
    (["--work-pool", "p", "--job-variable", "volumes"], "--job-variable expects KEY=VALUE"),
])
def test_deploy_options_misused_are_one_line_before_a_run_exists(argv, message, tmp_path):
    out = insight("deploy", "--run-dir", tmp_path / "run", *argv)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr
    assert not (tmp_path / "run").exists()
