"""MLflow 3's own entities for a training run, beside the metrics and files that
tasks/tracking.py logs: the prompt set as dataset inputs, each round's selection as a
table the UI renders, and the final policy as a logged model.

Like everything in MLflow they are views of the record, derived from the store or the
published Parquet; a failure to log one is a tracking failure (a warning during
training), never a reason to stop training.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from insight.record.layout import round_name
from insight.record.published import (Need, published_prompts, round_selection_table,
                                      with_view)
from insight.record.run import Run, path_in_run
from insight.record.store import RunStore

TABLES_DIR = "tables"          # artifact folder of the per-round selection tables
POLICY_MODEL = "policy"        # name of the logged model of the final policy
# Files of a checkpoint that are not the policy: the optimizer state (twice the weights
# with Adam) and the trainer's bookkeeping stay in the run directory.
NOT_POLICY = {"optimizer.pt", "trainer_state.json"}


def log_prompt_datasets(client, run: Run, mlflow_run_id: str) -> None:
    """The run's training and held-out prompts as MLflow dataset inputs (contexts
    `training` and `evaluation`), each with MLflow's digest of its rows: the UI shows
    what a run learned from and was measured on, and runs on the same data share a
    digest. Logged once per MLflow run (skipped when its inputs are already there)."""
    import mlflow.data
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    if client.get_run(mlflow_run_id).inputs.dataset_inputs:
        return
    prompts = published_prompts(run.run_dir).drop_columns(["rendered"]).to_pandas()
    source = str(run.run_dir / "parquet" / "prompts.parquet")
    inputs = []
    for split, context in (("train", "training"), ("eval", "evaluation")):
        rows = prompts[prompts["split"] == split].reset_index(drop=True)
        if rows.empty:
            continue
        with warnings.catch_warnings():
            # MLflow warns that a local path could be either of its two local source
            # kinds (it picks one) and that integer columns cannot hold missing values:
            # neither concerns a logged prompt set.
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(rows, source=source, targets="answer",
                                              name=f"{run.run_id}-{split}")
            entity = dataset._to_mlflow_entity()
        inputs.append(DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    client.log_inputs(mlflow_run_id, datasets=inputs)


def log_selection_table(client, run: Run, round_: int, mlflow_run_id: str) -> None:
    """The prompts drawn in `round_`, with their scores and outcomes, as an MLflow table
    (tables/selections_round_NNNNN.json, shown by the UI's artifact view). MLflow appends
    to an existing table file, so a round already logged is left alone."""
    artifact = f"{TABLES_DIR}/selections_{round_name(round_)}.json"
    if any(a.path == artifact for a in client.list_artifacts(mlflow_run_id, TABLES_DIR)):
        return
    need = {"selections": Need((round_,), "selected"), "rollouts": Need((round_,))}
    table = with_view(run.run_dir, need, lambda view: round_selection_table(view, round_))
    if table.num_rows:
        client.log_table(mlflow_run_id, data=table.to_pandas(), artifact_file=artifact)


def log_final_policy(client, run: Run, mlflow_run_id: str) -> str | None:
    """The policy of the last committed round as an MLflow logged model named `policy`
    (its artifacts: the checkpoint's weights, config and tokenizer, loadable with
    transformers' from_pretrained), an output of the MLflow run. Only once the run has
    reached its planned rounds, so a scheduled flow run that trains a few rounds does not
    copy a model each time; and once per round. Returns the model id, or None.

    Not mlflow.transformers.log_model: with transformers 5 it fails on a local
    checkpoint in MLflow 3.17 (build_flavor_config_from_local_checkpoint), and loading
    the model to log it from memory would cost a copy of a large policy in RAM."""
    from mlflow.entities import LoggedModelOutput

    with RunStore(run.run_dir) as db:
        last = db.last_committed_round(run.run_id)
        row = db.round_row(run.run_id, last)
    if last < run.config.rounds or row is None or not row["checkpoint"]:
        return None
    experiment_id = client.get_run(mlflow_run_id).info.experiment_id
    for model in client.search_logged_models(
            [experiment_id], filter_string=f"source_run_id = '{mlflow_run_id}'"):
        if model.tags.get("insight.round") == str(last):
            return model.model_id
    checkpoint = path_in_run(run.run_dir, row["checkpoint"])
    model = client.create_logged_model(
        experiment_id, name=POLICY_MODEL, source_run_id=mlflow_run_id,
        tags={"insight.run_id": run.run_id, "insight.round": str(last),
              "insight.checkpoint": row["checkpoint"]},
        params={"base_policy": run.config.policy.path, "selector": run.config.selector.type})
    try:
        _log_checkpoint(client, model, checkpoint, run.run_dir)
    except BaseException:
        client.finalize_logged_model(model.model_id, "FAILED")
        raise
    client.finalize_logged_model(model.model_id, "READY")
    client.log_outputs(mlflow_run_id, [LoggedModelOutput(model.model_id, step=last)])
    return model.model_id


def _log_checkpoint(client, model, checkpoint: Path, run_dir: Path) -> None:
    """The checkpoint's policy files into the model's artifacts: hard links into a local
    artifact store (no second copy of the weights), an upload to any other."""
    from insight.report.plots import link_file

    files = [f for f in sorted(checkpoint.rglob("*")) if f.is_file() and f.name not in NOT_POLICY]
    target = local_artifact_path(model.artifact_location)
    if target is not None:
        for f in files:
            link_file(f, target / f.relative_to(checkpoint))
        return
    # Staged beside the checkpoint (same file system: links, not copies), then uploaded.
    with tempfile.TemporaryDirectory(dir=run_dir, prefix=".model-upload-") as staging:
        for f in files:
            link_file(f, Path(staging) / f.relative_to(checkpoint))
        client.log_model_artifacts(model.model_id, staging)


def local_artifact_path(uri: str) -> Path | None:
    """The folder an artifact URI names when it is on this machine (`file:` or a plain
    path), else None. A tracking server's proxied store (`mlflow-artifacts:/1/...`) has
    a scheme but no `//`: it is remote, and its files must be uploaded."""
    from urllib.parse import urlparse

    from mlflow.utils.file_utils import local_file_uri_to_path
    if urlparse(uri).scheme not in ("", "file"):
        return None
    return Path(local_file_uri_to_path(uri))
