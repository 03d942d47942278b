"""The training flow: rounds of select -> rollout -> posterior update -> policy update ->
evaluate -> commit, each stage a Prefect task, resuming from the first uncommitted round.

The flow holds no training state of its own: every round starts from what the store says
was committed, so a flow run killed at any point is resumed by simply running it again.
"""

from __future__ import annotations

import sys
import time

from flows import env  # noqa: F401  (Prefect/MLflow defaults before their import)
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from insight.metrics import format_progress, summarize
from insight.run import check_resume_checkpoint, load_run
from insight.runlock import training_lock
from insight.stages import ensure_published
from insight.store import RunStore
from tasks import stages as t
from tasks.tracking import try_sync

STAGES = (("select", t.select_task), ("rollout", t.rollout_task),
          ("posterior", t.posterior_task), ("train", t.train_task), ("eval", t.eval_task))


@task(name="start-round", task_run_name="start-r{round_}", cache_policy=NO_CACHE,
      persist_result=False)
def start_round_task(run_dir: str, round_: int, flow_run_id: str | None) -> None:
    run = load_run(run_dir)
    with RunStore(run.run_dir) as db:
        db.start_round(run.run_id, round_, flow_run_id)


@task(name="mlflow-tracking", task_run_name="track-r{round_}", cache_policy=NO_CACHE,
      persist_result=False)
def track_task(run_dir: str, round_: int, flow_run_id: str | None) -> str | None:
    return try_sync(load_run(run_dir), flow_run_id)


def _flow_run_id() -> str | None:
    try:
        from prefect.runtime import flow_run
        return str(flow_run.id) if flow_run.id else None
    except Exception:  # noqa: BLE001 - outside a flow run there is simply no id
        return None


def run_round(run_dir: str, round_: int, flow_run_id: str | None) -> dict:
    """All stages of one round; a stage that fails for good marks the round failed."""
    start_round_task(run_dir, round_, flow_run_id)
    seconds: dict[str, list[float]] = {}
    try:
        for name, stage in STAGES:
            t0 = time.perf_counter()
            out = stage(run_dir, round_)
            seconds[name] = [out["stage_seconds"], time.perf_counter() - t0]
        return t.commit_task(run_dir, round_, seconds)
    except BaseException as err:
        run = load_run(run_dir)
        with RunStore(run.run_dir) as db:
            db.fail_round(run.run_id, round_, f"{type(err).__name__}: {err}")
        raise


@flow(name="insight-train", persist_result=False, log_prints=False)
def train_flow(run_dir: str, rounds: int | None = None, max_new_rounds: int | None = None,
               progress: bool = True) -> dict:
    """Train the run in `run_dir` up to `rounds` (default: its config), at most
    `max_new_rounds` rounds in this flow run (for scheduled, incremental runs)."""
    flow_run_id = _flow_run_id()
    # The lock comes first: nothing of a run another process is training is read.
    with training_lock(run_dir, create=False):
        run = load_run(run_dir)
        target = rounds or run.config.rounds
        with RunStore(run.run_dir) as db:
            check_resume_checkpoint(db, run.run_dir, run.run_id)
        ensure_published(run)
        with RunStore(run.run_dir) as db:
            committed = db.committed_rounds(run.run_id)
        if 0 not in committed:
            init = t.initial_round_task(str(run.run_dir))
            _say(progress, f"round   0/{target}  initial held-out accuracy "
                           f"{init['heldout_accuracy']:.3f}")
        start = (max(committed) if committed else 0) + 1
        end = target if max_new_rounds is None else min(target, start + max_new_rounds - 1)
        if start > end:
            _say(progress, f"nothing to do: {start - 1} rounds committed, target {target}")
        for r in range(start, end + 1):
            metrics = run_round(str(run.run_dir), r, flow_run_id)
            warning = track_task(str(run.run_dir), r, flow_run_id)
            _say(progress, format_progress(r, target, metrics))
            if warning:
                _say(progress, f"  warning: {warning}")
    return summarize(run)


def _say(enabled: bool, line: str) -> None:
    if enabled:
        print(line, file=sys.stdout, flush=True)
