"""MLflow tracking, fed from the run store.

The store is the record; MLflow is a view of it. Every call here reads what a committed
round wrote to the store and logs it, so logging can fail (server down, network gone)
without losing anything: `insight sync-mlflow` replays the rounds MLflow missed. The
`tracking` table remembers which rounds reached MLflow and under which MLflow run.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from insight.record.run import Run
from insight.record.layout import plots_root, round_dir
from insight.record.store import RunStore
from tasks.tracking_entities import (local_artifact_path, log_final_policy, log_prompt_datasets,
                                     log_selection_table)

log = logging.getLogger("insight.tracking")

# An unreachable server must cost seconds, not MLflow's default minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

RUN_LEVEL = -1  # `tracking.round` of the row that records the MLflow run itself
PARENT_TAG = "mlflow.parentRunId"   # the tag MLflow's UI nests runs by


def tracking_uri(run: Run, override: str | None = None) -> str:
    return override or run.config.tracking.tracking_uri or \
        f"sqlite:///{run.run_dir / 'mlflow.db'}"


def _client(run: Run, uri: str | None = None):
    from mlflow.tracking import MlflowClient
    return MlflowClient(tracking_uri=tracking_uri(run, uri))


def _flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, val in d.items():
        if isinstance(val, dict):
            out.update(_flatten(val, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(val) if isinstance(val, (list, tuple)) else str(val)
    return out


def experiment_id(client, name: str, uri: str) -> str:
    """The id of experiment `name`, created if missing. A local SQLite store keeps its
    artifacts beside it (mlartifacts/), not in the current directory."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=location)


def ensure_mlflow_run(run: Run, flow_run_id: str | None = None, uri: str | None = None,
                      parent_run_id: str | None = None) -> str:
    """The MLflow run of this training run: created once per tracking URI (config as
    params, the prompt set as dataset inputs), reused on resume; the latest Prefect flow
    run id is kept as a tag, and `parent_run_id` (a benchmark's run) nests it."""
    client = _client(run, uri)
    with RunStore(run.run_dir) as db:
        mlflow_run_id = db.tracked_mlflow_run(run.run_id, RUN_LEVEL, tracking_uri(run, uri))
    if mlflow_run_id is None:
        exp_id = experiment_id(client, run.config.tracking.experiment, tracking_uri(run, uri))
        tags = {"insight.run_id": run.run_id, "insight.run_dir": str(run.run_dir),
                "insight.selector": run.config.selector.type}
        if parent_run_id:
            tags[PARENT_TAG] = parent_run_id
        mr = client.create_run(exp_id, run_name=run.run_id, tags=tags)
        mlflow_run_id = mr.info.run_id
        params = _flatten(run.config.model_dump(mode="json"))
        from mlflow.entities import Param
        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            client.log_batch(mlflow_run_id, params=items[i:i + 100])
        with RunStore(run.run_dir) as db:
            db.record_tracked(run.run_id, RUN_LEVEL, mlflow_run_id, tracking_uri(run, uri))
    elif parent_run_id:
        client.set_tag(mlflow_run_id, PARENT_TAG, parent_run_id)
    # Checked on every call, so inputs a failed first call missed are logged later.
    log_prompt_datasets(client, run, mlflow_run_id)
    if flow_run_id:
        client.set_tag(mlflow_run_id, "prefect.flow_run_id", flow_run_id)
        # A resumed training reopens the MLflow run an earlier flow run ended.
        if client.get_run(mlflow_run_id).info.status != "RUNNING":
            client.update_run(mlflow_run_id, status="RUNNING")
    return mlflow_run_id


def start_parent_run(uri: str, experiment: str, name: str, params: dict,
                     parent_run_id: str | None = None) -> str:
    """The MLflow run a benchmark's training runs are nested under: `parent_run_id`
    reopened when it still exists in this store, else a new run."""
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    if parent_run_id:
        try:
            client.update_run(parent_run_id, status="RUNNING")
            return parent_run_id
        except MlflowException:
            pass  # deleted, or from another store: start a new parent
    parent = client.create_run(experiment_id(client, experiment, uri), run_name=name,
                               tags={"insight.bench": name})
    client.log_batch(parent.info.run_id,
                     params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return parent.info.run_id


def log_round(run: Run, round_: int, mlflow_run_id: str, uri: str | None = None) -> None:
    """Metrics (step = round), the round's Parquet and plots as artifacts, and the
    prompts it drew as a table."""
    from mlflow.entities import Metric
    client = _client(run, uri)
    with RunStore(run.run_dir) as db:
        row = db.round_row(run.run_id, round_)
    if row is None or row["status"] != "committed":
        raise RuntimeError(f"round {round_} is not committed; nothing to log")
    metrics = json.loads(row["metrics_json"] or "{}")
    ts = int(row["finished_at"].timestamp() * 1000)
    batch = [Metric(k, float(v), ts, round_) for k, v in metrics.items() if v is not None]
    for i in range(0, len(batch), 200):
        client.log_batch(mlflow_run_id, metrics=batch[i:i + 200])
    folder = round_dir(run.run_dir, round_)
    if folder.is_dir():
        tables = sorted(f for f in folder.rglob("*") if f.is_file())
        log_files(client, mlflow_run_id, tables, folder, f"rounds/{folder.name}")
    log_files(client, mlflow_run_id, round_plots(run, round_), plots_root(run.run_dir), "plots")
    log_selection_table(client, run, round_, mlflow_run_id)
    with RunStore(run.run_dir) as db:
        db.record_tracked(run.run_id, round_, mlflow_run_id, tracking_uri(run, uri))


def round_plots(run: Run, round_: int) -> list[Path]:
    """The round's plots, under run_dir/plots/ (insight.report.plots.make_round_plots): score vs
    posterior mean every round; the cumulative ones (posterior means, selection heat map,
    calibration) refreshed at every evaluation round and at every round from the planned
    last one on, and kept as a snapshot every 10 rounds. Not every round: the three take
    about 1.5 s together at round 12 and 3.3 s at round 100 of the default run (on a
    shared 2-core CPU), more than one of its rounds (2-3 s)."""
    from insight.report.plots import make_round_plots
    cfg = run.config
    refresh = round_ % max(1, cfg.eval.every) == 0 or round_ >= cfg.rounds
    return make_round_plots(run.run_dir, round_, plots_root(run.run_dir), every=10,
                            refresh=refresh)


def log_files(client, mlflow_run_id: str, files: list[Path], root: Path,
              artifact_path: str) -> None:
    """Log `files` (all under `root`) as artifacts at `artifact_path`/<path under root>.
    Into a local artifact store (the default one lives in the run directory) they go as
    hard links, so the run directory holds each plot and Parquet file once, not once in
    place and again in `mlartifacts/`; to any other store they are uploaded."""
    from insight.report.plots import link_file
    local = _local_artifact_dir(client, mlflow_run_id)
    for f in files:
        rel = Path(f).relative_to(root)
        if local is not None:
            link_file(f, local / artifact_path / rel)
        else:
            client.log_artifact(mlflow_run_id, str(f),
                                artifact_path="/".join((artifact_path, *rel.parent.parts)))


def _local_artifact_dir(client, mlflow_run_id: str) -> Path | None:
    return local_artifact_path(client.get_run(mlflow_run_id).info.artifact_uri)


def untracked_rounds(run: Run, uri: str | None = None) -> list[int]:
    with RunStore(run.run_dir) as db:
        return db.untracked_rounds(run.run_id, tracking_uri(run, uri))


def sync(run: Run, flow_run_id: str | None = None, uri: str | None = None) -> list[int]:
    """Backfill every committed round this MLflow (the run's, or `uri`) has not seen.
    Returns the rounds logged."""
    mlflow_run_id = ensure_mlflow_run(run, flow_run_id, uri)
    done = []
    for r in untracked_rounds(run, uri):
        log_round(run, r, mlflow_run_id, uri)
        done.append(r)
    return done


class TrackingUnavailable(RuntimeError):
    """MLflow could not be reached or refused its store. Nothing is lost: the run store
    keeps every round, and a later `insight sync-mlflow` logs what this one could not."""


def sync_or_explain(run: Run, uri: str | None = None) -> list[int]:
    """`sync`, with a failure of MLflow itself (unreachable server, a store it refuses)
    turned into one line that names the tracking URI and the underlying cause."""
    from mlflow.exceptions import MlflowException
    try:
        return sync(run, uri=uri)
    except (MlflowException, OSError) as err:
        raise TrackingUnavailable(explain_failure(err, tracking_uri(run, uri))) from err


def explain_failure(err: BaseException, uri: str) -> str:
    """One line for a failed MLflow call: which store, and the innermost cause (the
    refused connection, the unknown host) rather than MLflow's wrapped retry report."""
    if "filesystem tracking backend" in str(err):
        import mlflow
        return (f"MLflow {mlflow.__version__} no longer accepts file stores ({uri}); log to "
                "a database store instead, e.g. --tracking-uri sqlite:///PATH/mlflow.db "
                "(or set MLFLOW_ALLOW_FILE_STORE=true to use the file store anyway)")
    cause = err
    while (cause.__cause__ or cause.__context__) is not None:
        cause = cause.__cause__ or cause.__context__
    text = " ".join(str(cause).split())
    if len(text) > 200:
        text = text[:200] + "..."
    return f"cannot log to MLflow at {uri} ({type(cause).__name__}: {text}); the run store " \
           "keeps every round, run `insight sync-mlflow` again once MLflow is reachable"


def try_sync(run: Run, flow_run_id: str | None = None) -> str | None:
    """Best effort during training: on any tracking failure, warn and carry on; the
    store keeps everything and `insight sync-mlflow` backfills later."""
    if not run.config.tracking.enabled:
        return None
    try:
        sync(run, flow_run_id)
        return None
    except Exception as err:  # noqa: BLE001 - tracking must never stop training
        msg = f"MLflow tracking failed ({type(err).__name__}: {err}); training continues, " \
              f"run `insight sync-mlflow --run-dir {run.run_dir}` to backfill"
        log.warning(msg)
        return msg


def try_end(run: Run, status: str, flow_run_id: str | None = None) -> str | None:
    """Best effort when a training flow run ends: set the MLflow run's status (FINISHED,
    FAILED, KILLED) and end time, so a finished training does not look RUNNING forever;
    a run that reached its planned rounds first logs its final policy as a model. Like
    `try_sync`, a tracking failure is a warning, never a reason to fail the flow."""
    if not run.config.tracking.enabled:
        return None
    warnings = []
    try:
        mlflow_run_id = ensure_mlflow_run(run, flow_run_id)
        if status == "FINISHED":
            try:
                log_final_policy(_client(run), run, mlflow_run_id)
            except Exception as err:  # noqa: BLE001 - the status must still be set
                warnings.append(f"final policy not logged to MLflow "
                                f"({type(err).__name__}: {err})")
        _client(run).set_terminated(mlflow_run_id, status=status)
    except Exception as err:  # noqa: BLE001 - tracking must never stop training
        warnings.append(f"MLflow run status not set to {status} ({type(err).__name__}: {err})")
    for msg in warnings:
        log.warning(msg)
    return "; ".join(warnings) or None
