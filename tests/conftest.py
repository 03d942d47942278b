"""Shared fixtures: an isolated Prefect API for flow tests, a tiny policy on disk."""

from __future__ import annotations

import os
import tempfile

import pytest

# Everything a test run writes (Prefect's home, caches) stays out of the user's home.
_HOME = tempfile.mkdtemp(prefix="insight-tests-")
os.environ.setdefault("PREFECT_HOME", os.path.join(_HOME, "prefect"))
os.environ.setdefault("MPLBACKEND", "Agg")
from flows import env  # noqa: E402,F401  (same defaults as the CLI)


@pytest.fixture(scope="session")
def prefect_api():
    """A temporary Prefect server (SQLite) for the whole session: flows run against a
    real API, as they do in production, without touching the user's Prefect."""
    from prefect.testing.utilities import prefect_test_harness
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory):
    """A freshly initialised (untrained) tiny policy: enough to exercise the pipeline."""
    from insight.policy.model import build_tiny_policy, save_policy
    path = tmp_path_factory.mktemp("policy") / "tiny"
    model, tok = build_tiny_policy(seed=0)
    save_policy(model, tok, path)
    return path


@pytest.fixture
def prefect_env(prefect_api) -> dict:
    """Environment for a subprocess that should report to the session's Prefect API
    (instead of paying for an ephemeral server of its own)."""
    from prefect.settings import PREFECT_API_URL
    env = os.environ.copy()
    if PREFECT_API_URL.value():
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    return env
