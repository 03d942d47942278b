"""The training flow: rounds of select -> rollout -> posterior update -> policy update ->
evaluate -> commit, each stage a Prefect task, resuming from the first uncommitted round.

The flow holds no training state of its own: every round starts from what the store says
was committed, so a flow run killed at any point is resumed by simply running it again.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from flows import env  # noqa: F401  (Prefect/MLflow defaults before their import)
import pyarrow as pa
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from insight import sharding
from insight.config import OrchestrationConfig
from insight.record.metrics import format_progress, summarize
from insight.record.run import check_resume_checkpoint, load_run
from insight.stages import ensure_published
from insight.trainer import flush_optimizer_state
from insight.record.store import RunStore
from tasks import stages as t
from tasks.run_lock import run_lock
from tasks.tracking import try_end, try_sync

STAGES = (("select", t.select_task), ("rollout", t.rollout_task),
          ("posterior", t.posterior_task), ("train", t.train_task), ("eval", t.eval_task))


@task(name="start-round", task_run_name="start-r{round_}", cache_policy=NO_CACHE,
      persist_result=False, tags=list(t.CPU_TAGS))
def start_round_task(run_dir: str, round_: int, flow_run_id: str | None) -> None:
    run = load_run(run_dir)
    with RunStore(run.run_dir) as db:
        db.start_round(run.run_id, round_, flow_run_id)


@task(name="mlflow-tracking", task_run_name="track-r{round_}", cache_policy=NO_CACHE,
      persist_result=False, tags=list(t.CPU_TAGS))
def track_task(run_dir: str, round_: int, flow_run_id: str | None) -> str | None:
    return try_sync(load_run(run_dir), flow_run_id)


def _flow_run_id() -> str | None:
    try:
        from prefect.runtime import flow_run
        return str(flow_run.id) if flow_run.id else None
    except Exception:  # noqa: BLE001 - outside a flow run there is simply no id
        return None


def shard_rollouts(run_dir: str, round_: int, shards: int):
    """The rollout stage's `generate_rows` for a sharded run: each generation batch's
    problems split into `shards` contiguous pieces (`insight.sharding.split`), each a
    `rollout-shard` task submitted to the flow's task runner (Ray workers with
    `orchestration.task_runner: ray`), their rows put back together in prompt order.
    The shards only return rows; the rollout stage, in this process, writes them."""
    run = load_run(run_dir)

    def generate_rows(problems: list, gen_batch: int, checkpoint: str) -> pa.Table:
        pieces = sharding.split(problems, shards) or [[]]
        futures = [t.rollout_shard_task.submit(run_dir, run.run_id, run.config, round_,
                                               gen_batch, i, checkpoint, piece)
                   for i, piece in enumerate(pieces)]
        return pa.concat_tables([f.result() for f in futures])

    return generate_rows


def _stage_call(name: str, stage, run_dir: str, round_: int, orchestration) -> dict:
    """Run one stage task in this process; the rollout stage fans out to shard tasks
    when the run is sharded or on Ray (a single shard then still runs on a worker)."""
    if name == "rollout" and (orchestration.rollout_shards > 1
                              or orchestration.task_runner == "ray"):
        # The coordinating task does no GPU work and must not hold a `gpu` tag slot
        # while its shards (tagged `gpu`) wait for one: a limit of 1 would deadlock.
        coordinator = stage.with_options(tags=list(t.CPU_TAGS))
        return coordinator(run_dir, round_,
                           shard_rollouts(run_dir, round_, orchestration.rollout_shards))
    return stage(run_dir, round_)


def run_round(run_dir: str, round_: int, flow_run_id: str | None) -> dict:
    """All stages of one round; a stage that fails for good marks the round failed."""
    start_round_task(run_dir, round_, flow_run_id)
    seconds: dict[str, list[float]] = {}
    orchestration = load_run(run_dir).config.orchestration
    try:
        for name, stage in STAGES:
            t0 = time.perf_counter()
            out = _stage_call(name, stage, run_dir, round_, orchestration)
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
    # The lock comes first: nothing of a run another process is training is read, and
    # only the lock holder ends the MLflow run (a flow refused by the lock must not mark
    # FAILED the run another process is training).
    with run_lock(run_dir, create=False):
        run = load_run(run_dir)
        target = rounds or run.config.rounds
        with RunStore(run.run_dir) as db:
            check_resume_checkpoint(db, run.run_dir, run.run_id)
        try:
            _train_rounds(run, target, max_new_rounds, flow_run_id, progress)
        except BaseException as err:
            try_end(run, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED",
                    flow_run_id)
            raise
        warning = try_end(run, "FINISHED", flow_run_id)
        if warning:
            _say(progress, f"  warning: {warning}")
    return summarize(run)


def _train_rounds(run, target: int, max_new_rounds: int | None, flow_run_id: str | None,
                  progress: bool) -> None:
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
    # Stopping before the next `train.save_state_every` save: keep the exact optimizer
    # state, so the next flow run (a new process) continues as if never stopped.
    flush_optimizer_state(run)


def _say(enabled: bool, line: str) -> None:
    if enabled:
        print(line, file=sys.stdout, flush=True)


RUN_LOG = "insight.log"  # per run directory, appended to by every command-line training


class TrainingFailed(RuntimeError):
    """Training stopped on an error inside the flow. The message is one line for the
    terminal; the traceback is in the run's log file."""


def _drop(record: logging.LogRecord) -> bool:
    return False


def _writes_to_terminal(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and \
        not isinstance(handler, logging.FileHandler)


@contextmanager
def logs_in_run_dir(run_dir: str | Path) -> Iterator[Path]:
    """Send log records to `<run_dir>/insight.log` instead of the terminal while the flow
    runs. Prefect logs a failed task or flow with its full traceback (20-90 lines); the
    terminal should show the progress lines and one error line, the log keeps the detail.
    Console handlers are muted by a filter (not removed) because Prefect may reconfigure
    logging incrementally when its ephemeral server starts, which keeps handlers."""
    path = Path(run_dir) / RUN_LOG
    to_file = logging.FileHandler(path, encoding="utf-8", delay=True)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    muted = [h for h in root.handlers if _writes_to_terminal(h)]
    for handler in muted:
        handler.addFilter(_drop)
    root.addHandler(to_file)
    try:
        yield path
    finally:
        root.removeHandler(to_file)
        to_file.close()
        for handler in muted:
            handler.removeFilter(_drop)


def task_runner_for(orchestration: OrchestrationConfig):
    """The Prefect task runner the config asks for: prefect-ray's `RayTaskRunner` for
    `task_runner: ray` (connecting to `ray_address`, or starting a local Ray for the
    flow run when unset; a Ray already initialised in this process is used as is),
    None for Prefect's default."""
    if orchestration.task_runner != "ray":
        return None
    from prefect_ray import RayTaskRunner

    return RayTaskRunner(address=orchestration.ray_address)


def flow_for(run_dir: str):
    """`train_flow` with the task runner of the run's stored config."""
    runner = task_runner_for(load_run(run_dir).config.orchestration)
    return train_flow if runner is None else train_flow.with_options(task_runner=runner)


def train_from_cli(run_dir: str, rounds: int, max_new_rounds: int | None) -> dict:
    """`train_flow` for the command line: logs in the run directory, and a failure inside
    the flow raised as one line naming the log. Errors that are the user's to fix
    (ValueError, a missing file, a held lock) pass through as they are."""
    from insight.record.runlock import RunLockedError

    with logs_in_run_dir(run_dir) as log_path:
        try:
            return flow_for(run_dir)(run_dir, rounds=rounds, max_new_rounds=max_new_rounds)
        except (ValueError, FileNotFoundError, RunLockedError):
            raise
        except Exception as err:
            logging.getLogger("insight.train").error("training failed", exc_info=True)
            first = (str(err).strip().splitlines() or [""])[0]
            raise TrainingFailed(f"training failed: {type(err).__name__}: {first} "
                                 f"(traceback in {log_path})") from err
