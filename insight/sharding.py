"""Rollout shards: one generation batch split across workers, its rows returned.

With `orchestration.rollout_shards: N` the flow splits each generation batch's prompts
into N contiguous pieces and runs `generate_shard` on each, as a Prefect task on a Ray
worker (or a thread of the flow process). A shard never touches the run's store: the
driver hands it the problems and the checkpoint path, and it returns its verified rows,
so the flow process stays the store's only writer (DuckDB allows one writing process).

A sharded run equals the single-process run row for row because every prompt's draws are
seeded by (run seed, round, prompt id) (`stages.group_rows`), never by its batch, and
the shards' rows are put back in the order of the prompts.

A worker process keeps its policy (or vLLM engine) from one call to the next and loads
again only when the checkpoint changes: its path or its weights file (inode, size,
mtime), so a run directory reused by another run is never served stale weights.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence, TypeVar

import pyarrow as pa

from insight import stages
from insight.config import RunConfig
from insight.policy import generation, model as policy_model
from insight.record.run import Run
from insight.trainer import weights_identity

T = TypeVar("T")

_WORKER_POLICY: dict[str, tuple[tuple, object, object]] = {}  # "slot" -> (key, model, tok)
_WORKER_LOCK = threading.Lock()  # shards run as threads of one process with the local runner


def split(items: Sequence[T], shards: int) -> list[list[T]]:
    """`items` in at most `shards` contiguous pieces whose sizes differ by at most one
    (larger first), none empty; concatenated they are `items` again, in order."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    n = len(items)
    base, extra = divmod(n, shards)
    pieces, start = [], 0
    for i in range(min(shards, n)):
        end = start + base + (1 if i < extra else 0)
        pieces.append(list(items[start:end]))
        start = end
    return pieces


def generate_shard(run_dir: str, run_id: str, config: RunConfig, round_: int,
                   gen_batch: int, checkpoint: str, problems: list) -> pa.Table:
    """The verified rollout rows of `problems` (k per problem, in order) with the policy
    in `checkpoint`: the same rows `stages.group_rows` makes in the flow process."""
    run = Run(Path(run_dir), run_id, config)
    # One shard at a time per process: shards that are threads of one process (the
    # local runner) would otherwise share a tokenizer whose padding side generation
    # switches, and one model; Ray runs a task per worker process anyway.
    with _WORKER_LOCK:
        stages.apply_threads(run)
        if config.policy.engine == "vllm":
            engine = stages.vllm_rollout_engine(run, checkpoint)
        else:
            model, tok = _worker_policy(checkpoint, config.policy.device)
            engine = generation.HFEngine(
                model, tok, batch_size=stages.ROLLOUT_BATCH,
                max_tokens_per_batch=config.rollout.max_tokens_per_generation_batch)
        return stages.group_rows(run, round_, engine, problems, gen_batch)


def _worker_policy(checkpoint: str, device: str):
    """This process's read-only policy for `checkpoint`, loaded when the checkpoint
    differs from the one it holds (one slot: a worker serves one round at a time)."""
    key = (str(Path(checkpoint).resolve()), weights_identity(checkpoint), device)
    held = _WORKER_POLICY.get("slot")
    if held is None or held[0] != key:
        _WORKER_POLICY.clear()  # free the old copy before loading the new one
        model, tok = policy_model.load_policy(checkpoint, device=device)
        model.eval()
        held = _WORKER_POLICY["slot"] = (key, model, tok)
        _LOADS[0] += 1
    return held[1], held[2]


_LOADS = [0]  # policies this process has loaded as a shard worker


def worker_loads() -> int:
    """How many policies this process has loaded as a shard worker (what the tests use
    to see that a worker reloads only when the checkpoint changes)."""
    return _LOADS[0]
