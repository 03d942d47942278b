"""The stages of one training round (DESIGN §3), as pure functions over the run store.

Each stage reads its inputs by (run_dir, round) from the store, writes its outputs back
idempotently, and returns only small JSON-able summaries. That is what lets Prefect wrap
each one as a task that passes ids and paths, and what makes a crashed round safe to redo:

    select   : posterior(r-1), selector state(r-1)      -> selections(r)
    rollout  : policy(r-1), selections(r)               -> rollouts(r)  (DAPO refills here)
    update   : posterior(r-1), rollouts(r)              -> posteriors(r), selector state(r)
    train    : policy(r-1) + optimizer, rollouts(r)     -> checkpoint(r)
    evaluate : checkpoint(r), held-out prompts          -> evals(r)          (every N rounds)
    commit   : one transaction marks round r committed, then Parquet is published

Round 0 is the starting point: the prior, the initial policy and its held-out accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from insight.policy import generation, grpo, model as policy_model
from insight.problems import verifiers
from insight.record import compact, layout
from insight.record.metrics import round_metrics
from insight.record.run import (EVALUATE, GENERATE, SELECT, TRAIN, Run, load_problems_of,
                                path_for_record, path_in_run, prompt_seed, stage_seed)
from insight.record.schema import RUN_TABLES_ROUND
from insight.record.store import RunStore
from insight import trainer as trainers
from insight.round_state import SelectionState, stored_posterior
# The flow and the tests reach the trainer's lifecycle through the stage layer.
from insight.trainer import drop_trainer, flush_optimizer_state  # noqa: F401
from insight.selection import registry
from insight.selection.dapo import generation_batches
from insight.selection.posterior import PosteriorState
from insight.selection.selectors import Selection

# problems of one generation batch, its index, policy checkpoint -> its rollout rows
GenerateRows = Callable[[list, int, str], pa.Table]

ROLLOUT_BATCH, EVAL_BATCH = 256, 512  # sequences decoded at once by the HF engine

log = logging.getLogger("insight.stages")


# --- helpers -----------------------------------------------------------------------
_POLICY_CACHE: dict[tuple[str, str], tuple] = {}
_VLLM_ENGINE: dict[tuple, object] = {}  # the process's one vLLM engine, see vllm_rollout_engine


def apply_threads(run: Run) -> None:
    """Pin torch's CPU threads when the config says so. On a small shared machine,
    intra-op threads that outnumber free cores spin-wait and slow a tiny model down
    by an order of magnitude; one thread is the safe choice there."""
    if run.config.policy.threads:
        import torch
        torch.set_num_threads(run.config.policy.threads)


def cached_policy(path: str, device: str):
    """Read-only policy for generation. Checkpoint directories are immutable once
    renamed into place, so caching by path is safe; two entries cover the policy of
    the round and the one just trained (evaluated next)."""
    key = (str(path), device)
    if key not in _POLICY_CACHE:
        if len(_POLICY_CACHE) >= 2:
            _POLICY_CACHE.pop(next(iter(_POLICY_CACHE)))
        model, tok = policy_model.load_policy(path, device=device)
        model.eval()
        _POLICY_CACHE[key] = (model, tok)
    return _POLICY_CACHE[key]


def rollout_engine(run: Run, checkpoint: str, batch_size: int) -> generation.RolloutEngine:
    """The `policy.engine` that generates with the policy in `checkpoint`: `hf` samples
    with the in-process transformers model (CPU or GPU) in batches of `batch_size`
    sequences or of `rollout.max_tokens_per_generation_batch` tokens, `vllm` with the process's one
    vLLM engine, which loads the checkpoint's weights in place (`vllm_rollout_engine`)."""
    cfg = run.config.policy
    if cfg.engine == "vllm":
        return vllm_rollout_engine(run, checkpoint)
    model, tok = _generation_policy(run, checkpoint)
    return generation.HFEngine(
        model, tok, batch_size=batch_size,
        max_tokens_per_batch=run.config.rollout.max_tokens_per_generation_batch)


def _generation_policy(run: Run, checkpoint: str):
    """The model the hf engine generates with: the kept-alive trainer's own when it holds
    exactly `checkpoint` (one copy of the policy in memory, not a trainer and a reader;
    the same weights, so the same draws), else a read-only copy loaded from disk. A LoRA
    trainer is a base model plus an adapter, not the merged checkpoint: never shared."""
    kept = trainers.holding(run, checkpoint)
    if run.config.train.lora is None and kept is not None:
        return kept.model, kept.tokenizer
    return cached_policy(checkpoint, run.config.policy.device)


def vllm_rollout_engine(run: Run, checkpoint: str):
    """The flow process's one vLLM engine, holding the weights of `checkpoint`.

    Built once (the first round's policy), then every later checkpoint is loaded in
    place. A failed or timed-out load drops the engine (its weights are undefined) and
    raises, so the stage fails and the round is not committed; the next attempt builds
    a fresh engine. A run with another base model or other vLLM options builds anew."""
    from insight.policy.vllm_engine import VLLMEngine

    cfg = run.config
    key = (str(cfg.resolved_policy_path()), cfg.policy.vllm.model_dump_json())
    engine = _VLLM_ENGINE.get(key)
    if engine is None:
        _VLLM_ENGINE.clear()  # at most one engine holds the GPU
        opts = cfg.policy.vllm
        engine = VLLMEngine(checkpoint, gpu_memory_utilization=opts.gpu_memory_utilization,
                            max_model_len=opts.max_model_len,
                            enable_sleep_mode=opts.enable_sleep_mode,
                            weight_sync_timeout_s=opts.weight_sync_timeout_s, seed=cfg.seed)
        _VLLM_ENGINE[key] = engine
    try:
        engine.load(checkpoint)
    except BaseException:
        _VLLM_ENGINE.clear()
        raise
    return engine


def free_gpu_for_update() -> None:
    """Before a policy update: a vLLM engine with sleep mode frees its GPU memory
    (weights and KV cache) for the trainer; the next `rollout_engine` wakes it into
    the new weights. No-op for the hf engine."""
    for engine in _VLLM_ENGINE.values():
        engine.sleep()


def checkpoint_dir(run: Run, round_: int) -> Path:
    return layout.checkpoint_dir(run.run_dir, round_)


def policy_checkpoint(run: Run, round_: int, db: RunStore | None = None) -> str:
    """Checkpoint that holds policy(round_): the configured start for round 0."""
    if round_ == 0:
        return str(run.config.resolved_policy_path())
    if db is None:
        with RunStore(run.run_dir) as db:
            return policy_checkpoint(run, round_, db)
    row = db.round_row(run.run_id, round_)
    if row is None or row["status"] != "committed" or not row["checkpoint"]:
        raise RuntimeError(f"policy of round {round_} is not committed in {run.run_dir}")
    return str(path_in_run(run.run_dir, row["checkpoint"]))


def _with_round(t: pa.Table, run: Run, round_: int, **int_columns: int) -> pa.Table:
    """Rows of one round: the run id, the round and any per-round int32 columns."""
    n = t.num_rows
    t = t.append_column("run_id", pa.array([run.run_id] * n))
    t = t.append_column("round", pa.array([round_] * n, pa.int32()))
    for name, value in int_columns.items():
        t = t.append_column(name, pa.array([value] * n, pa.int32()))
    return t


def _selection_rows(run: Run, round_: int, sel: Selection, gen_batch: int) -> pa.Table:
    """The batch's candidate rows the record keeps (`record.candidates`: all, or the
    selected ones; insight.record.compact)."""
    kept = compact.selection_rows_to_store(sel.table, run.config.record)
    return _with_round(kept, run, round_, gen_batch=gen_batch)


def _posterior_rows(run: Run, round_: int, post: PosteriorState,
                    before: PosteriorState | None = None) -> pa.Table:
    """The posterior rows the round stores: all of them, or on a compact record's
    rounds between two snapshots the rows that differ from `before`."""
    post = compact.posterior_rows_to_store(post, before, round_, run.config.record)
    return _with_round(post.to_arrow().select(["prompt_id", "alpha", "beta"]), run, round_)


# --- stages ------------------------------------------------------------------------
def initial_round(run: Run) -> dict:
    """Round 0: the prior snapshot, the starting policy and its held-out accuracy."""
    with RunStore(run.run_dir) as db:
        train = load_problems_of(run, "train", db)
        state = SelectionState.initial(run, [p.prompt_id for p in train])
        db.start_round(run.run_id, 0, None)
        db.replace_round_rows("posteriors", run.run_id, 0,
                              _posterior_rows(run, 0, state.posterior))
        acc = _evaluate(run, 0, db)
        state.save(db, 0)
        db.commit_round(run.run_id, 0, checkpoint=policy_checkpoint(run, 0),
                        rollouts_consumed=0, metrics=acc)
        db.export_round(run.run_id, 0)
    return acc


def select(run: Run, round_: int) -> dict:
    """Score the pool on posterior(r-1) and draw the round's batch B_r."""
    cfg = run.config
    with RunStore(run.run_dir) as db:
        state = SelectionState.load(db, run, posterior_round=round_ - 1,
                                    selector_round=round_ - 1,
                                    features=policy_features(run, round_ - 1, db))
        t0 = time.perf_counter()
        sel = state.draw(np.random.default_rng(stage_seed(cfg.seed, round_, SELECT)))
        seconds = time.perf_counter() - t0
        db.replace_round_rows("selections", run.run_id, round_,
                              _selection_rows(run, round_, sel, 0))
        state.save(db, round_)
    return {"selected": len(sel.prompt_ids), "candidates": sel.table.num_rows,
            "selection_seconds": seconds}


def policy_features(run: Run, policy_round: int, db: RunStore):
    """(prompt ids, features) of the training prompts under the policy of `policy_round`
    for the feature prior, else None. Cached per checkpoint in the run directory (a
    forward pass is deterministic, so a resume recomputing it scores the same view)."""
    cfg = run.config
    if cfg.posterior.prior != "feature-knn" or not registry.get(cfg.selector.type).uses_posterior:
        return None
    from insight.policy.embeddings import prompt_embeddings

    path = layout.features_path(run.run_dir, policy_round)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return z["prompt_ids"].astype(object), z["features"]
    problems = load_problems_of(run, "train", db)
    model, tok = _generation_policy(run, policy_checkpoint(run, policy_round, db))
    feats = prompt_embeddings(model, tok, [p.model_input for p in problems],
                              batch_size=32)
    ids = np.array([p.prompt_id for p in problems], dtype=str)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, prompt_ids=ids, features=feats)
    tmp.replace(path)
    return ids.astype(object), feats


def rollout(run: Run, round_: int, generate_rows: GenerateRows | None = None) -> dict:
    """Generate k completions per selected prompt with policy(r-1) and verify them.
    A selector with DAPO's refill (dynamic sampling) over-generates here: it keeps
    drawing generation batches until B groups with mixed outcomes are kept
    (insight.selection.dapo), and every generation is recorded.

    `generate_rows(problems, gen_batch, checkpoint)` makes the rows of one generation
    batch somewhere else (the flow's rollout shards on Ray workers) and returns them;
    this process stays the only writer of the store. None generates here."""
    cfg = run.config
    apply_threads(run)
    with RunStore(run.run_dir) as db:
        problems = {p.prompt_id: p for p in load_problems_of(run, "train", db)}
        checkpoint = policy_checkpoint(run, round_ - 1, db)
        if generate_rows is None:
            engine = rollout_engine(run, checkpoint, ROLLOUT_BATCH)

            def generate_rows(batch, gen_batch, _checkpoint):
                return group_rows(run, round_, engine, batch, gen_batch)
        selected = db.selected_prompts(run.run_id, round_)
        tables: list[pa.Table] = []
        refills: list[SelectionState] = []  # loaded at the first refill, saved at the end

        def draw(gen_batch: int, drawn: frozenset) -> list[str]:
            if gen_batch == 0:
                return selected
            if not refills:
                refills.append(SelectionState.load(db, run, posterior_round=round_ - 1,
                                                   selector_round=round_))
            rng = np.random.default_rng(stage_seed(cfg.seed, round_, SELECT * 1000 + gen_batch))
            sel = refills[0].draw(rng, exclude=set(drawn))
            db.replace_round_rows("selections", run.run_id, round_,
                                  _selection_rows(run, round_, sel, gen_batch),
                                  where=f"AND gen_batch = {int(gen_batch)}")
            return list(sel.prompt_ids)

        def generate(prompt_ids: list[str], gen_batch: int) -> np.ndarray:
            rows = generate_rows([problems[i] for i in prompt_ids], gen_batch, checkpoint)
            tables.append(rows)
            return group_successes(rows, prompt_ids, cfg.rollout.k)

        batches, _ = generation_batches(
            draw, generate, batch_size=cfg.rollout.batch_size, k=cfg.rollout.k,
            dapo=registry.get(cfg.selector.type).dapo_refill,
            max_num_gen_batches=getattr(cfg.selector, "max_num_gen_batches", 1))
        tables = [t.append_column("kept", pa.array(np.repeat(b.keep, cfg.rollout.k)))
                  for t, b in zip(tables, batches)]
        db.replace_round_rows("rollouts", run.run_id, round_, pa.concat_tables(tables))
        for state in refills:
            state.save(db, round_)
    return {"rollouts": sum(t.num_rows for t in tables), "gen_batches": len(batches),
            "kept_groups": int(sum(b.keep.sum() for b in batches))}


def group_successes(rows: pa.Table, prompt_ids: list[str], k: int) -> np.ndarray:
    """Successes per group, in `prompt_ids` order, from rows holding k per prompt in
    that order (as `group_rows` writes them); refuses rows that do not."""
    ids = rows["prompt_id"].to_pylist()
    if ids != [pid for pid in prompt_ids for _ in range(k)]:
        raise RuntimeError(f"rollout rows do not hold {k} samples of each requested prompt "
                           "in order")
    success = np.asarray(rows["success"].to_pylist(), dtype=float)
    return success.reshape(len(prompt_ids), k).sum(axis=1)


def group_rows(run: Run, round_: int, engine: generation.RolloutEngine,
               problems: list, gen_batch: int) -> pa.Table:
    """The verified rollout rows of one generation batch (k per problem, in order).
    Each prompt's draws are seeded by (run seed, round, prompt id) (`prompt_seed`), so
    they do not depend on which other prompts are generated with it: a batch split
    across workers gives the same rows as one process."""
    cfg = run.config.rollout
    groups = engine.generate(
        [p.model_input for p in problems], cfg.k,
        temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
        seed=stage_seed(run.config.seed, round_, GENERATE * 1000 + gen_batch),
        prompt_seeds=[prompt_seed(run.config.seed, round_, p.prompt_id) for p in problems])
    cols = {k: [] for k in ("prompt_id", "sample_idx", "completion", "completion_chars",
                            "completion_token_ids", "reward", "success", "verifier_error",
                            "truncated")}
    for p, group in zip(problems, groups):
        for j, ro in enumerate(group):
            res = verifiers.verify(p.verifier, ro.completion, p.answer)
            ok = verifiers.is_success(res.reward, cfg.success_threshold)
            for key, val in (("prompt_id", p.prompt_id), ("sample_idx", j),
                             # the verifier reads no further than this either: a hostile
                             # 1 MB completion must not become a 1 MB row; its length stays
                             ("completion", ro.completion[:verifiers.MAX_COMPLETION_CHARS]),
                             ("completion_chars", len(ro.completion)),
                             ("completion_token_ids", list(ro.completion_token_ids)),
                             ("reward", float(res.reward)), ("success", ok),
                             ("verifier_error", res.error), ("truncated", bool(ro.truncated))):
                cols[key].append(val)
    # Explicit types: a batch with no verifier error must not type the column as null
    # (a later DAPO refill batch with one would then not concatenate).
    t = pa.table({**cols,
                  "completion": pa.array(cols["completion"], pa.string()),
                  "completion_chars": pa.array(cols["completion_chars"], pa.int32()),
                  "verifier_error": pa.array(cols["verifier_error"], pa.string()),
                  "completion_token_ids": pa.array(cols["completion_token_ids"],
                                                   pa.list_(pa.int32()))})
    return _with_round(t, run, round_, policy_round=round_ - 1, gen_batch=gen_batch)


def update_posterior(run: Run, round_: int) -> dict:
    """Conjugate update with every verified rollout of the round (kept or not: a
    discarded DAPO group is still evidence about its prompt)."""
    with RunStore(run.run_dir) as db:
        state = SelectionState.load(db, run, posterior_round=round_ - 1, selector_round=round_,
                                    for_update=True)
        outcomes = db.round_outcomes(run.run_id, round_)
        new = state.observe(outcomes)
        every = run.config.record.posterior_snapshot_every
        before = (None if compact.is_full_snapshot(round_, every)
                  else stored_posterior(db, run, round_ - 1))
        db.replace_round_rows("posteriors", run.run_id, round_,
                              _posterior_rows(run, round_, new, before))
        state.save(db, round_)
    return {"updated_prompts": outcomes.num_rows}


def train(run: Run, round_: int) -> dict:
    """GRPO update of policy(r-1) on the round's kept groups. The trainer (model and
    optimizer) stays alive in this process from one round to the next; the checkpoint
    of round r (weights every round, the optimizer every `train.save_state_every`) is
    written aside and renamed into place, so a crash never leaves a half checkpoint."""
    cfg = run.config
    free_gpu_for_update()
    with RunStore(run.run_dir) as db:
        src = policy_checkpoint(run, round_ - 1, db)
        t = db.kept_groups(run.run_id, round_)
    apply_threads(run)
    # One trainer copy in memory: the generation copies cached for rollout are of
    # earlier policies and never used again once this round trains.
    _POLICY_CACHE.clear()
    trainer = trainers.take_trainer(run, round_ - 1, src)
    prompts, completions, rewards = _groups(t, cfg.rollout.k)
    if not prompts:  # e.g. DAPO kept no group: nothing to learn from, the policy carries over
        batch = grpo.PolicyBatch([], [], [])
    else:
        batch = grpo.make_policy_batch(trainer.tokenizer, prompts, completions, rewards,
                                       normalize_std=cfg.train.normalize_std)
    stats = grpo.policy_update(trainer.model, trainer.optimizer, batch, ref_model=trainer.ref,
                               micro_batch_size=cfg.train.micro_batch_size,
                               epochs=cfg.train.epochs, clip_eps=cfg.train.clip_eps,
                               clip_eps_high=cfg.train.clip_eps_high,
                               kl_coef=cfg.train.kl_coef, max_grad_norm=cfg.train.max_grad_norm,
                               shuffle_seed=stage_seed(cfg.seed, round_, TRAIN),
                               max_tokens_per_micro_batch=cfg.train.max_tokens_per_micro_batch,
                               precision=trainer.precision)
    trainers.write_checkpoint(run, round_, trainer, stats)
    trainers.keep_trainer(trainer)
    return stats


def _groups(t: pa.Table, k: int):
    """Rows ordered by (gen_batch, prompt, sample) -> per-group prompts, ids, rewards."""
    prompts, completions, rewards = [], [], []
    rows = t.to_pylist()
    for g in range(0, len(rows), k):
        group = rows[g:g + k]
        if len({r["prompt_id"] for r in group}) != 1 or len(group) != k:
            raise RuntimeError(f"rollouts of prompt {group[0]['prompt_id']} are not a group of {k}")
        prompts.append(group[0]["prompt"])
        completions.append([r["completion_token_ids"] for r in group])
        rewards.append([r["reward"] for r in group])
    return prompts, completions, np.asarray(rewards, dtype=np.float32).reshape(-1, k)


def evaluate(run: Run, round_: int, *, force: bool = False) -> dict:
    """Held-out accuracy of policy(r): avg@n sampled at the eval temperature, and greedy
    (every `eval.every` rounds and at the last planned round, or when forced)."""
    cfg = run.config
    if not force and round_ % cfg.eval.every != 0 and round_ != cfg.rounds:
        return {}
    with RunStore(run.run_dir) as db:
        return _evaluate(run, round_, db)


def _eval_seed(cfg) -> int:
    """The sampled evaluation's seed: the config's shared one, else the run's own."""
    run_seed = cfg.seed if cfg.eval.seed is None else cfg.eval.seed
    return stage_seed(run_seed, 0, EVALUATE)


def _evaluate(run: Run, round_: int, db: RunStore) -> dict:
    cfg = run.config
    ckpt = policy_checkpoint(run, 0) if round_ == 0 else str(checkpoint_dir(run, round_))
    apply_threads(run)
    engine = rollout_engine(run, ckpt, EVAL_BATCH)
    # engine_accuracy generates from `.prompt`: give it the text the model is given
    held_out = [dataclasses.replace(p, prompt=p.model_input)
                for p in load_problems_of(run, "eval", db)]
    common = dict(max_new_tokens=cfg.rollout.max_new_tokens, top_p=cfg.rollout.top_p,
                  success_threshold=cfg.rollout.success_threshold)
    res = generation.engine_accuracy(
        engine, held_out, n_samples=cfg.eval.n_samples, temperature=cfg.eval.temperature,
        # The same draws every round (common random numbers): the accuracy change
        # between rounds measures the policy, not a new sample of sampling noise.
        seed=_eval_seed(cfg), **common)
    out = {"heldout_accuracy": float(res["accuracy"])}
    if cfg.eval.greedy:
        g = generation.engine_accuracy(engine, held_out, greedy=True, **common)
        out["heldout_greedy_accuracy"] = float(g["accuracy"])
    rows = pa.table({"split": ["eval"], "accuracy": [out["heldout_accuracy"]],
                     "greedy_accuracy": [out.get("heldout_greedy_accuracy")],
                     "n_problems": pa.array([len(held_out)], pa.int32()),
                     "n_samples": pa.array([cfg.eval.n_samples], pa.int32())})
    db.replace_round_rows("evals", run.run_id, round_, _with_round(rows, run, round_))
    return out


def commit(run: Run, round_: int, stage_seconds: dict[str, tuple[float, float]] | None = None) -> dict:
    """One transaction marks the round committed (with its checkpoint and metrics; the
    selector state is the one its stages saved); then the round is published as Parquet and old checkpoints are pruned."""
    ckpt = checkpoint_dir(run, round_)
    if not (ckpt / "config.json").is_file():
        raise RuntimeError(f"round {round_} has no checkpoint at {ckpt}; cannot commit")
    stats = json.loads((ckpt / "train_stats.json").read_text())
    with RunStore(run.run_dir) as db:
        for stage, (seconds, wall) in (stage_seconds or {}).items():
            db.record_stage(run.run_id, round_, stage, seconds, wall)
        metrics = round_metrics(db, run.run_id, round_, train_stats=stats)
        consumed = int(metrics["rollouts"])
        db.commit_round(run.run_id, round_, checkpoint=path_for_record(run.run_dir, ckpt),
                        rollouts_consumed=consumed, metrics=metrics)
        db.export_round(run.run_id, round_)
    prune_checkpoints(run, keep_round=round_)
    return metrics


def prune_checkpoints(run: Run, keep_round: int) -> None:
    """Keep the newest `train.keep_checkpoints` round checkpoints (resume needs only the
    last committed one) and the newest one holding an optimizer state (a resume between
    two `train.save_state_every` saves continues with it); the final policy is always
    the newest."""
    keep = run.config.train.keep_checkpoints
    state_round, _ = trainers.last_optimizer_state(run, keep_round,
                                                  str(checkpoint_dir(run, keep_round)))
    for r in layout.rounds_in(layout.checkpoints_root(run.run_dir)):
        if r < keep_round - keep + 1 and r != state_round:
            shutil.rmtree(layout.checkpoint_dir(run.run_dir, r), ignore_errors=True)


def ensure_published(run: Run) -> list[int]:
    """Make the published Parquet match the store again before training on: finish what
    a crash between a round's commit and its export left undone, and re-publish from
    DuckDB (the source of truth) any file that is missing, truncated or altered. Says
    so in one log line; returns the rounds re-published (RUN_TABLES_ROUND for the run
    tables)."""
    with RunStore(run.run_dir) as db:
        damaged = db.damaged_publications(run.run_id)
        for round_ in damaged:
            if round_ == RUN_TABLES_ROUND:
                db.export_run_tables(run.run_id)
            else:
                db.export_round(run.run_id, round_)
    if damaged:
        found = [item for items in damaged.values() for item in items]
        more = f" and {len(found) - 5} more" if len(found) > 5 else ""
        log.warning("re-published Parquet from insight.duckdb: %s%s",
                    "; ".join(found[:5]), more)
    return sorted(damaged)
