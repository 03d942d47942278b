"""One Prefect task per pipeline stage, each a few lines over an `insight.stages` function.

Tasks take the run directory and the round number, never models or tensors: the store
holds everything between stages, so Prefect can record, retry and resume each stage
without serializing a model. Caching is off because a stage's result depends on the
store's contents, not on its arguments; idempotence comes from the store instead.
"""

from __future__ import annotations

import time

import duckdb
import pyarrow as pa
from prefect import task
from prefect.cache_policies import NO_CACHE

from insight import sharding, stages
from insight.config import RunConfig
from insight.record.run import load_run

TRANSIENT = (duckdb.IOException, TimeoutError, ConnectionError, InterruptedError)


def is_transient(task_, task_run, state) -> bool:
    """Retry only what can succeed on a second try: a database lock held a little too
    long, an I/O hiccup. A bug or bad data fails at once and marks the round failed."""
    try:
        state.result()
    except TRANSIENT:
        return True
    except Exception:
        return False
    return False


def _timed(fn, *args) -> dict:
    """Run a stage and report its own compute time, so the flow can tell it apart
    from orchestration overhead."""
    t0 = time.perf_counter()
    out = dict(fn(*args) or {})
    out["stage_seconds"] = time.perf_counter() - t0
    return out


_opts = dict(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
             retry_condition_fn=is_transient, persist_result=False)

# Tags say which stages hold an accelerator, so a Prefect server can bound them with a
# tag-based concurrency limit (`prefect concurrency-limit create gpu 1`): rollout, the
# update and evaluation run the policy; selection, the posterior update and the commit
# are CPU and DuckDB work. Tags change nothing about what a stage computes or records.
GPU_TAGS = ("insight", "gpu")
CPU_TAGS = ("insight", "cpu")


@task(name="initial-round", tags=list(GPU_TAGS), **_opts)
def initial_round_task(run_dir: str) -> dict:
    return stages.initial_round(load_run(run_dir))


@task(name="acquisition-scoring", task_run_name="select-r{round_}", tags=list(CPU_TAGS), **_opts)
def select_task(run_dir: str, round_: int) -> dict:
    return _timed(stages.select, load_run(run_dir), round_)


@task(name="rollout-generation", task_run_name="rollout-r{round_}", tags=list(GPU_TAGS), **_opts)
def rollout_task(run_dir: str, round_: int,
                 generate_rows: stages.GenerateRows | None = None) -> dict:
    """`generate_rows`: the flow's fan-out to rollout shards (None: generate here)."""
    return _timed(stages.rollout, load_run(run_dir), round_, generate_rows)


@task(name="rollout-shard", task_run_name="rollout-r{round_}-b{gen_batch}-s{shard}",
      tags=list(GPU_TAGS), **_opts)
def rollout_shard_task(run_dir: str, run_id: str, config: RunConfig, round_: int,
                       gen_batch: int, shard: int, checkpoint: str,
                       problems: list) -> pa.Table:
    """One shard of a generation batch, on whichever worker the task runner picks (a Ray
    worker with `orchestration.task_runner: ray`). It returns its rows and never opens
    the store: the flow process is its only writer."""
    return sharding.generate_shard(run_dir, run_id, config, round_, gen_batch, checkpoint,
                                   problems)


@task(name="posterior-update", task_run_name="posterior-r{round_}", tags=list(CPU_TAGS), **_opts)
def posterior_task(run_dir: str, round_: int) -> dict:
    return _timed(stages.update_posterior, load_run(run_dir), round_)


@task(name="policy-update", task_run_name="train-r{round_}", tags=list(GPU_TAGS), **_opts)
def train_task(run_dir: str, round_: int) -> dict:
    return _timed(stages.train, load_run(run_dir), round_)


@task(name="evaluation", task_run_name="eval-r{round_}", tags=list(GPU_TAGS), **_opts)
def eval_task(run_dir: str, round_: int) -> dict:
    return _timed(stages.evaluate, load_run(run_dir), round_)


@task(name="commit", task_run_name="commit-r{round_}", tags=list(CPU_TAGS), **_opts)
def commit_task(run_dir: str, round_: int, stage_seconds: dict[str, list[float]]) -> dict:
    return stages.commit(load_run(run_dir), round_, stage_seconds)
