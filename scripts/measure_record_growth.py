"""How the run's record grows with the work: the real store, synthetic stage outputs.

Why: every round stores rows per candidate and per prompt, so the record grows with pool
size x rounds. This measures it with the code a run uses, not an estimate: the real
`select` and `update_posterior` stages (the configured selector scores the whole pool),
the real `RunStore` commit and Parquet publishing, and the `record` options of the
config. Only the model is replaced: the B selected prompts get k synthetic rollouts each,
a success drawn from a fixed per-prompt rate (short completions, a few token ids), so
the rollouts' size here is a floor (it grows with B x k x tokens, not with the pool).

Per round it prints one JSON line: the select, posterior-update and commit (commit +
Parquet publish) seconds, the DuckDB file size and the round's Parquet bytes per table.
At the end: the latency of `insight audit --round`, `--prompt` and of `insight replay`
over the history written. Example (docs/scale.md has the measured tables):

    python scripts/measure_record_growth.py --pool 200000 --rounds 50 \\
        --out /tmp/growth-200k --candidates selected --snapshot-every 50
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from insight import stages  # noqa: E402
from insight.config import config_from_dict  # noqa: E402
from insight.record.layout import parquet_dir, round_dir  # noqa: E402
from insight.record.run import Run  # noqa: E402
from insight.record.schema import ROUND_TABLES  # noqa: E402
from insight.record.store import RunStore  # noqa: E402
from insight.round_state import SelectionState  # noqa: E402

RUN_ID = "growth"


def make_run(out: Path, pool: int, batch: int, k: int, candidates: str, every: int,
             selector: str, seed: int) -> tuple[Run, np.ndarray]:
    """A run directory with `pool` training prompts and round 0 committed (the prior)."""
    cfg = config_from_dict({
        "name": "growth", "seed": seed, "rounds": 10**6,
        "data": {"type": "arithmetic", "n_train": pool, "n_eval": 1},
        "rollout": {"k": k, "batch_size": batch},
        "selector": {"type": selector},
        "record": {"candidates": candidates, "posterior_snapshot_every": every},
        "tracking": {"enabled": False}})
    shutil.rmtree(out, ignore_errors=True)
    ids = np.array([f"p{i:08d}" for i in range(pool)], dtype=object)
    run = Run(out, RUN_ID, cfg)
    with RunStore(out) as db:
        with db.transaction():
            db.create_run(RUN_ID, config_json=cfg.model_dump_json(), config_hash="growth",
                          data_hash="growth", seed=seed, selector=selector)
            db.insert("prompts", pa.table({
                "run_id": [RUN_ID] * pool, "prompt_id": ids.tolist(),
                "split": ["train"] * pool, "prompt": [f"{i} + {i % 97} =" for i in range(pool)],
                "answer": [str(i + i % 97) for i in range(pool)]}))
        db.export_run_tables(RUN_ID)
        state = SelectionState.initial(run, ids)
        db.start_round(RUN_ID, 0, None)
        db.replace_round_rows("posteriors", RUN_ID, 0,
                              stages._posterior_rows(run, 0, state.posterior))
        state.save(db, 0)
        db.commit_round(RUN_ID, 0, checkpoint="none", rollouts_consumed=0, metrics={})
        db.export_round(RUN_ID, 0)
    return run, ids


def synthetic_rollouts(run: Run, round_: int, rate: dict, k: int, tokens: int,
                       rng: np.random.Generator) -> pa.Table:
    """k verified rollouts per selected prompt, successes drawn at the prompt's rate."""
    with RunStore(run.run_dir) as db:
        selected = db.selected_prompts(RUN_ID, round_)
    n = len(selected) * k
    success = np.concatenate([rng.random(k) < rate[p] for p in selected])
    return pa.table({
        "run_id": [RUN_ID] * n, "round": pa.array(np.full(n, round_, np.int32)),
        "prompt_id": np.repeat(np.asarray(selected, dtype=object), k).tolist(),
        "sample_idx": pa.array(np.tile(np.arange(k, dtype=np.int32), len(selected))),
        "completion": ["42" if s else "41" for s in success],
        "completion_token_ids": pa.array([[7] * tokens] * n, pa.list_(pa.int32())),
        "reward": success.astype(np.float64), "success": success,
        "verifier_error": pa.nulls(n, pa.string()), "truncated": np.zeros(n, bool),
        "policy_round": pa.array(np.full(n, round_ - 1, np.int32)),
        "gen_batch": pa.array(np.zeros(n, np.int32)), "kept": np.ones(n, bool),
        "completion_chars": pa.array(np.full(n, 2, np.int32))})


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def db_bytes(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in run_dir.glob("insight.duckdb*") if p.is_file())


def one_round(run: Run, round_: int, rate: dict, k: int, tokens: int) -> dict:
    rng = np.random.default_rng([round_, 99])
    with RunStore(run.run_dir) as db:
        db.start_round(RUN_ID, round_, None)
    t0 = time.perf_counter()
    stages.select(run, round_)
    t1 = time.perf_counter()
    rows = synthetic_rollouts(run, round_, rate, k, tokens, rng)
    with RunStore(run.run_dir) as db:
        db.replace_round_rows("rollouts", RUN_ID, round_, rows)
    t2 = time.perf_counter()
    stages.update_posterior(run, round_)
    t3 = time.perf_counter()
    with RunStore(run.run_dir) as db:
        db.commit_round(RUN_ID, round_, checkpoint="none", rollouts_consumed=rows.num_rows,
                        metrics={})
        db.export_round(RUN_ID, round_)
    t4 = time.perf_counter()
    folder = round_dir(run.run_dir, round_)
    return {"round": round_, "select_s": t1 - t0, "rollouts_write_s": t2 - t1,
            "posterior_s": t3 - t2, "commit_publish_s": t4 - t3,
            "duckdb_bytes": db_bytes(run.run_dir),
            "parquet_round_bytes": dir_bytes(folder),
            **{f"parquet_{t}_bytes": (folder / f"{t}.parquet").stat().st_size
               for t in ROUND_TABLES}}


def latencies(run_dir: Path, rounds: int, ids: np.ndarray) -> dict:
    """Seconds of the audit and the replay over the history written (read-only)."""
    from insight.report import audit
    from insight.report.replay import replay

    out = {}
    for name, fn in (
            ("audit_round_s", lambda: audit.round_candidates(run_dir, max(1, rounds // 2))),
            ("audit_prompt_s", lambda: audit.prompt_history(run_dir, ids[0])),
            ("replay_mopps_s", lambda: replay(run_dir, "mopps", include_picks=False))):
        t0 = time.perf_counter()
        fn()
        out[name] = time.perf_counter() - t0
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", type=int, required=True, help="training prompts")
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--tokens", type=int, default=4, help="token ids per synthetic completion")
    p.add_argument("--selector", default="insight")
    p.add_argument("--candidates", choices=("all", "selected"), default="all")
    p.add_argument("--snapshot-every", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="run directory (replaced)")
    p.add_argument("--no-latency", action="store_true", help="skip audit/replay timings")
    p.add_argument("--keep", action="store_true", help="keep the run directory")
    a = p.parse_args(argv)
    run, ids = make_run(a.out, a.pool, a.batch_size, a.k, a.candidates, a.snapshot_every,
                        a.selector, a.seed)
    rate = dict(zip(ids, np.random.default_rng(a.seed).random(a.pool)))
    base = {"pool": a.pool, "batch_size": a.batch_size, "k": a.k,
            "candidates": a.candidates, "snapshot_every": a.snapshot_every}
    print(json.dumps({**base, "round": 0, "duckdb_bytes": db_bytes(a.out),
                      "parquet_round_bytes": dir_bytes(round_dir(a.out, 0))}), flush=True)
    for r in range(1, a.rounds + 1):
        print(json.dumps({**base, **one_round(run, r, rate, a.k, a.tokens)}), flush=True)
    summary = {**base, "rounds": a.rounds, "duckdb_bytes": db_bytes(a.out),
               "parquet_bytes": dir_bytes(parquet_dir(a.out))}
    if not a.no_latency:
        summary.update(latencies(a.out, a.rounds, ids))
    print(json.dumps({"summary": summary}), flush=True)
    if not a.keep:
        shutil.rmtree(a.out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
