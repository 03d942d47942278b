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

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from insight.policy import generation, grpo, model as policy_model
from insight.problems import verifiers
from insight.record.metrics import round_metrics
from insight.record.run import Run, load_problems_of, path_for_record, path_in_run, stage_seed
from insight.selection import registry
from insight.selection.dapo import filter_groups, truncate_kept
from insight.selection.posterior import PosteriorState
from insight.selection.prior import with_fitted_prior_for_unseen
from insight.selection.registry import make_selector
from insight.selection.selectors import Selection
from insight.record import layout
from insight.record.schema import RUN_TABLES_ROUND
from insight.record.store import RunStore

SELECT, GENERATE, EVALUATE, TRAIN = 1, 2, 3, 4  # seed streams

log = logging.getLogger("insight.stages")


# --- helpers -----------------------------------------------------------------------
_POLICY_CACHE: dict[tuple[str, str], tuple] = {}


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


def checkpoint_dir(run: Run, round_: int) -> Path:
    return layout.checkpoint_dir(run.run_dir, round_)


def policy_checkpoint(run: Run, round_: int) -> str:
    """Checkpoint that holds policy(round_): the configured start for round 0."""
    if round_ == 0:
        return str(run.config.resolved_policy_path())
    with RunStore(run.run_dir) as db:
        row = db.round_row(run.run_id, round_)
    if row is None or row["status"] != "committed" or not row["checkpoint"]:
        raise RuntimeError(f"policy of round {round_} is not committed in {run.run_dir}")
    return str(path_in_run(run.run_dir, row["checkpoint"]))


def load_posterior(run: Run, round_: int) -> PosteriorState:
    with RunStore(run.run_dir) as db:
        t = db.sql("SELECT prompt_id, alpha, beta FROM posteriors WHERE run_id = ? AND "
                   "round = ? ORDER BY prompt_id", [run.run_id, round_])
    if t.num_rows == 0:
        raise RuntimeError(f"no posterior snapshot for round {round_} in {run.run_dir}")
    return PosteriorState.from_arrow(t)


def _selector_state(run: Run, round_: int, db: RunStore | None = None) -> dict:
    """The selector state stored with a round (inside an open store, or opening one)."""
    if db is None:
        with RunStore(run.run_dir) as db:
            return _selector_state(run, round_, db)
    row = db.round_row(run.run_id, round_)
    return json.loads(row["selector_state"]) if row and row["selector_state"] else {}


def _save_selector_state(run: Run, round_: int, state: dict) -> None:
    with RunStore(run.run_dir) as db:
        db.execute("UPDATE rounds SET selector_state = ? WHERE run_id = ? AND round = ?",
                       [json.dumps(state), run.run_id, round_])


def _selector_for(run: Run, state: dict):
    selector = make_selector(run.config.selector)
    if state:
        selector.load_state_dict(state)
    return selector


def _prior_for_unseen(run: Run, post: PosteriorState, round_: int) -> PosteriorState:
    """Empirical-Bayes option (an extension beyond the paper): prompts never observed get
    a prior fitted to the observed population instead of Beta(a0, b0)."""
    if run.config.posterior.prior != "empirical-bayes":
        return post
    with RunStore(run.run_dir) as db:
        t = db.sql("SELECT prompt_id, sum(success::INT) AS s, count(*) AS n FROM rollouts "
                   "WHERE run_id = ? AND round < ? GROUP BY prompt_id", [run.run_id, round_])
    # totals aligned with the posterior's prompts (0 trials: never observed)
    idx = post.index_of(np.asarray(t["prompt_id"].to_pylist(), dtype=object))
    successes, trials = np.zeros(len(post)), np.zeros(len(post))
    successes[idx], trials[idx] = np.asarray(t["s"]), np.asarray(t["n"])
    return with_fitted_prior_for_unseen(post, successes, trials)


def _selection_rows(run: Run, round_: int, sel: Selection, gen_batch: int) -> pa.Table:
    t = sel.table
    n = t.num_rows
    t = t.append_column("run_id", pa.array([run.run_id] * n))
    t = t.append_column("round", pa.array([round_] * n, pa.int32()))
    return t.append_column("gen_batch", pa.array([gen_batch] * n, pa.int32()))


# --- stages ------------------------------------------------------------------------
def initial_round(run: Run) -> dict:
    """Round 0: the prior snapshot, the starting policy and its held-out accuracy."""
    cfg = run.config
    train = load_problems_of(run, "train")
    post = PosteriorState.new(np.array([p.prompt_id for p in train], dtype=object),
                              a0=cfg.posterior.a0, b0=cfg.posterior.b0)
    with RunStore(run.run_dir) as db:
        db.start_round(run.run_id, 0, None)
        db.replace_round_rows("posteriors", run.run_id, 0, _posterior_rows(run, 0, post))
    acc = evaluate(run, 0, force=True)
    with RunStore(run.run_dir) as db:
        db.commit_round(run.run_id, 0, checkpoint=policy_checkpoint(run, 0),
                        selector_state=make_selector(cfg.selector).state_dict(),
                        rollouts_consumed=0, metrics=acc)
        db.export_round(run.run_id, 0)
    return acc


def select(run: Run, round_: int) -> dict:
    cfg = run.config
    post = _prior_for_unseen(run, load_posterior(run, round_ - 1), round_)
    selector = _selector_for(run, _selector_state(run, round_ - 1))
    rng = np.random.default_rng(stage_seed(cfg.seed, round_, SELECT))
    t0 = time.perf_counter()
    sel = selector.select(post, cfg.rollout.batch_size, cfg.rollout.k, rng)
    seconds = time.perf_counter() - t0
    with RunStore(run.run_dir) as db:
        db.replace_round_rows("selections", run.run_id, round_, _selection_rows(run, round_, sel, 0))
    _save_selector_state(run, round_, selector.state_dict())
    return {"selected": len(sel.prompt_ids), "candidates": sel.table.num_rows,
            "selection_seconds": seconds}


def rollout(run: Run, round_: int) -> dict:
    """Generate k completions per selected prompt with policy(r-1) and verify them.
    Dynamic sampling (DAPO) over-generates here: it keeps drawing generation batches
    until B groups with mixed outcomes are kept, and every generation is recorded."""
    cfg = run.config
    problems = {p.prompt_id: p for p in load_problems_of(run, "train")}
    apply_threads(run)
    model, tok = cached_policy(policy_checkpoint(run, round_ - 1), cfg.policy.device)
    with RunStore(run.run_dir) as db:
        chosen = db.sql("SELECT prompt_id FROM selections WHERE run_id = ? AND round = ? AND "
                        "selected ORDER BY gen_batch, rank", [run.run_id, round_])
    prompt_ids = chosen.column("prompt_id").to_pylist()
    dynamic = registry.get(cfg.selector.type).dapo_refill
    tables, kept_groups, drawn, gen_batch = [], 0, set(prompt_ids), 0
    while True:
        rows, successes = _generate_group_rows(run, round_, model, tok, problems,
                                               prompt_ids, gen_batch)
        keep = filter_groups(successes, np.full(len(successes), cfg.rollout.k)) if dynamic \
            else np.ones(len(successes), bool)
        keep = truncate_kept(keep, cfg.rollout.batch_size - kept_groups)
        kept_groups += int(keep.sum())
        rows = rows.append_column("kept", pa.array(np.repeat(keep, cfg.rollout.k)))
        tables.append(rows)
        gen_batch += 1
        if not dynamic or kept_groups >= cfg.rollout.batch_size \
                or gen_batch >= cfg.selector.max_num_gen_batches:
            break
        prompt_ids = _draw_refill(run, round_, gen_batch, drawn)
        if not prompt_ids:
            break
        drawn |= set(prompt_ids)
    with RunStore(run.run_dir) as db:
        db.replace_round_rows("rollouts", run.run_id, round_, pa.concat_tables(tables))
    n = sum(t.num_rows for t in tables)
    return {"rollouts": n, "gen_batches": gen_batch, "kept_groups": kept_groups}


def _draw_refill(run: Run, round_: int, gen_batch: int, drawn: set[str]) -> list[str]:
    cfg = run.config
    post = load_posterior(run, round_ - 1)
    selector = _selector_for(run, _selector_state(run, round_))
    rng = np.random.default_rng(stage_seed(cfg.seed, round_, SELECT * 1000 + gen_batch))
    sel = selector.select(post, cfg.rollout.batch_size, cfg.rollout.k, rng, exclude=drawn)
    with RunStore(run.run_dir) as db:
        db.replace_round_rows("selections", run.run_id, round_,
                              _selection_rows(run, round_, sel, gen_batch),
                              where=f"AND gen_batch = {int(gen_batch)}")
    _save_selector_state(run, round_, selector.state_dict())
    return list(sel.prompt_ids)


def _generate_group_rows(run, round_, model, tok, problems, prompt_ids, gen_batch):
    cfg = run.config.rollout
    groups = generation.generate_rollouts(
        model, tok, [problems[i].prompt for i in prompt_ids], cfg.k,
        temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
        seed=stage_seed(run.config.seed, round_, GENERATE * 1000 + gen_batch))
    cols = {k: [] for k in ("prompt_id", "sample_idx", "completion", "completion_chars",
                            "completion_token_ids", "reward", "success", "verifier_error",
                            "truncated")}
    successes = np.zeros(len(prompt_ids))
    for g, (pid, group) in enumerate(zip(prompt_ids, groups)):
        p = problems[pid]
        for j, ro in enumerate(group):
            res = verifiers.verify(p.verifier, ro.completion, p.answer)
            ok = bool(res.reward >= cfg.success_threshold)
            successes[g] += ok
            for key, val in (("prompt_id", pid), ("sample_idx", j),
                             # the verifier reads no further than this either: a hostile
                             # 1 MB completion must not become a 1 MB row; its length stays
                             ("completion", ro.completion[:verifiers.MAX_COMPLETION_CHARS]),
                             ("completion_chars", len(ro.completion)),
                             ("completion_token_ids", list(ro.completion_token_ids)),
                             ("reward", float(res.reward)), ("success", ok),
                             ("verifier_error", res.error), ("truncated", bool(ro.truncated))):
                cols[key].append(val)
    n = len(cols["prompt_id"])
    # Explicit types: a batch with no verifier error must not type the column as null
    # (a later DAPO refill batch with one would then not concatenate).
    t = pa.table({**cols,
                  "completion": pa.array(cols["completion"], pa.string()),
                  "completion_chars": pa.array(cols["completion_chars"], pa.int32()),
                  "verifier_error": pa.array(cols["verifier_error"], pa.string()),
                  "completion_token_ids": pa.array(cols["completion_token_ids"],
                                                   pa.list_(pa.int32()))})
    t = t.append_column("run_id", pa.array([run.run_id] * n))
    t = t.append_column("round", pa.array([round_] * n, pa.int32()))
    t = t.append_column("policy_round", pa.array([round_ - 1] * n, pa.int32()))
    return t.append_column("gen_batch", pa.array([gen_batch] * n, pa.int32())), successes


def update_posterior(run: Run, round_: int) -> dict:
    """Conjugate update with every verified rollout of the round (kept or not: a
    discarded DAPO group is still evidence about its prompt)."""
    cfg = run.config
    post = _prior_for_unseen(run, load_posterior(run, round_ - 1), round_)
    with RunStore(run.run_dir) as db:
        t = db.sql("SELECT prompt_id, sum(success::INT)::DOUBLE AS s, count(*)::DOUBLE AS n "
                   "FROM rollouts WHERE run_id = ? AND round = ? GROUP BY prompt_id "
                   "ORDER BY prompt_id", [run.run_id, round_])
    ids = np.asarray(t["prompt_id"].to_pylist(), dtype=object)
    s, n = np.asarray(t["s"]), np.asarray(t["n"])
    new = post.observe(ids, s, n, lam=cfg.posterior.lam, a0=cfg.posterior.a0,
                       b0=cfg.posterior.b0, decay=cfg.posterior.decay)
    selector = _selector_for(run, _selector_state(run, round_))
    selector.observe(ids, s, n)
    with RunStore(run.run_dir) as db:
        db.replace_round_rows("posteriors", run.run_id, round_, _posterior_rows(run, round_, new))
    _save_selector_state(run, round_, selector.state_dict())
    return {"updated_prompts": len(ids)}


def _posterior_rows(run: Run, round_: int, post: PosteriorState) -> pa.Table:
    t = post.to_arrow().select(["prompt_id", "alpha", "beta"])
    n = t.num_rows
    t = t.append_column("run_id", pa.array([run.run_id] * n))
    return t.append_column("round", pa.array([round_] * n, pa.int32()))


def train(run: Run, round_: int) -> dict:
    """GRPO update of policy(r-1) on the round's kept groups; writes checkpoint(r)
    aside and renames it into place, so a crash never leaves a half checkpoint."""
    cfg = run.config
    src = policy_checkpoint(run, round_ - 1)
    dst = checkpoint_dir(run, round_)
    with RunStore(run.run_dir) as db:
        t = db.sql("SELECT r.prompt_id, r.sample_idx, r.reward, r.completion_token_ids, "
                   "p.prompt FROM rollouts r JOIN prompts p USING (run_id, prompt_id) "
                   "WHERE r.run_id = ? AND r.round = ? AND r.kept "
                   "ORDER BY r.gen_batch, r.prompt_id, r.sample_idx", [run.run_id, round_])
    apply_threads(run)
    model, tok, opt = grpo.load_trainer_state(src, lr=cfg.train.lr,
                                              device=str(policy_model.resolve_device(cfg.policy.device)))
    ref = None
    if cfg.train.kl_coef > 0:
        ref, _ = policy_model.load_policy(policy_checkpoint(run, 0), device=cfg.policy.device)
    prompts, completions, rewards = _groups(t, cfg.rollout.k)
    if not prompts:  # e.g. DAPO kept no group: nothing to learn from, the policy carries over
        batch = grpo.PolicyBatch([], [], [])
    else:
        batch = grpo.make_policy_batch(tok, prompts, completions, rewards,
                                       normalize_std=cfg.train.normalize_std)
    stats = grpo.policy_update(model, opt, batch, ref_model=ref,
                               micro_batch_size=cfg.train.micro_batch_size,
                               epochs=cfg.train.epochs, clip_eps=cfg.train.clip_eps,
                               clip_eps_high=cfg.train.clip_eps_high,
                               kl_coef=cfg.train.kl_coef, max_grad_norm=cfg.train.max_grad_norm,
                               shuffle_seed=stage_seed(cfg.seed, round_, TRAIN))
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    grpo.save_trainer_state(tmp, model, tok, opt)
    (tmp / "train_stats.json").write_text(json.dumps(stats))
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)
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
    """Held-out accuracy of policy(r): avg@n sampled at the eval temperature, and greedy."""
    cfg = run.config
    if not force and round_ % cfg.eval.every != 0 and round_ != cfg.rounds:
        return {}
    ckpt = policy_checkpoint(run, 0) if round_ == 0 else str(checkpoint_dir(run, round_))
    apply_threads(run)
    model, tok = cached_policy(ckpt, cfg.policy.device)
    held_out = load_problems_of(run, "eval")
    common = dict(max_new_tokens=cfg.rollout.max_new_tokens, top_p=cfg.rollout.top_p)
    res = generation.evaluate_accuracy(
        model, tok, held_out, n_samples=cfg.eval.n_samples, temperature=cfg.eval.temperature,
        # The same draws every round (common random numbers): the accuracy change
        # between rounds measures the policy, not a new sample of sampling noise.
        seed=stage_seed(cfg.seed, 0, EVALUATE), **common)
    out = {"heldout_accuracy": float(res["accuracy"])}
    if cfg.eval.greedy:
        g = generation.evaluate_accuracy(model, tok, held_out, greedy=True, **common)
        out["heldout_greedy_accuracy"] = float(g["accuracy"])
    rows = pa.table({"run_id": [run.run_id], "round": pa.array([round_], pa.int32()),
                     "split": ["eval"], "accuracy": [out["heldout_accuracy"]],
                     "greedy_accuracy": [out.get("heldout_greedy_accuracy")],
                     "n_problems": pa.array([len(held_out)], pa.int32()),
                     "n_samples": pa.array([cfg.eval.n_samples], pa.int32())})
    with RunStore(run.run_dir) as db:
        db.replace_round_rows("evals", run.run_id, round_, rows)
    return out


def commit(run: Run, round_: int, stage_seconds: dict[str, tuple[float, float]] | None = None) -> dict:
    """One transaction marks the round committed (with its checkpoint, selector state and
    metrics); then the round is published as Parquet and old checkpoints are pruned."""
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
                        selector_state=_selector_state(run, round_, db),
                        rollouts_consumed=consumed, metrics=metrics)
        db.export_round(run.run_id, round_)
    prune_checkpoints(run, keep_round=round_)
    return metrics


def prune_checkpoints(run: Run, keep_round: int) -> None:
    """Keep the newest `train.keep_checkpoints` round checkpoints (resume needs only the
    last committed one); the final policy is always the newest."""
    keep = run.config.train.keep_checkpoints
    for r in layout.rounds_in(layout.checkpoints_root(run.run_dir)):
        if r < keep_round - keep + 1:
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
