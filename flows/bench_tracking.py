"""MLflow for `insight bench compare --tracking`: every training run of the benchmark is
nested under one parent MLflow run that holds the comparison's setup and, at the end,
its results (results.json, results.md, curves.png).

Nesting needs one tracking store, so the runs of a tracked benchmark log to
`<out>/mlflow.db` unless `--set tracking.tracking_uri=...` names another (a server).
The parent's id is kept in the benchmark's manifest, so running the command again
reopens the same parent. As everywhere, MLflow is a view: a failure here is a warning
and the benchmark goes on.
"""

from __future__ import annotations

import json
from pathlib import Path

PARENT_KEY = "mlflow_parent_run_id"   # in the manifest (compare.json)


def shared_tracking_uri(out: str | Path) -> str:
    return f"sqlite:///{(Path(out) / 'mlflow.db').resolve()}"


def start_parent(out: Path, manifest_path: Path, runs, setup: dict, say) -> str | None:
    """The parent MLflow run of this benchmark (reopened if the manifest names one), and
    each run's MLflow run nested under it. `runs` are the benchmark's `Run`s."""
    from tasks.tracking import ensure_mlflow_run, start_parent_run, tracking_uri

    if not runs:
        return None
    previous = None
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text()).get(PARENT_KEY)
    cfg = runs[0].config
    try:
        parent = start_parent_run(tracking_uri(runs[0]), cfg.tracking.experiment,
                                  f"bench-{out.name}", setup, previous)
        for run in runs:
            ensure_mlflow_run(run, parent_run_id=parent)
    except Exception as err:  # noqa: BLE001 - MLflow must never stop the benchmark
        say(f"  warning: MLflow parent run not set up ({type(err).__name__}: {err}); "
            "the runs are still tracked one by one")
        return None
    return parent


def end_parent(parent: str | None, uri: str, out: Path, failed: dict, say) -> None:
    """Attach the comparison's results to the parent and end it: FINISHED, or FAILED
    when a run failed."""
    if parent is None:
        return
    from mlflow.tracking import MlflowClient
    try:
        client = MlflowClient(tracking_uri=uri)
        for name in ("results.json", "results.md", "curves.png"):
            if (out / name).is_file():
                client.log_artifact(parent, str(out / name))
        client.set_terminated(parent, status="FAILED" if failed else "FINISHED")
    except Exception as err:  # noqa: BLE001 - the results are on disk either way
        say(f"  warning: MLflow parent run not ended ({type(err).__name__}: {err})")
