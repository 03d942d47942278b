"""Audit a run's selection history: why did the trainer pick (or skip) these prompts?

Everything here reads the run's *published Parquet* (DESIGN §3) through an in-memory
DuckDB connection, never `insight.duckdb` itself: the training process holds that file's
write lock, and an audit must neither block a training run nor be blocked by one. A round
folder `parquet/round_NNNNN/` appears by an atomic rename after the round is committed, so
the folders that exist are exactly the committed, published rounds; `*.tmp` folders (an
export in progress) are ignored.

Conventions used throughout:
- `rank` is what the selector stored; `position` is the 1-based place of a candidate in
  its round's ranking (per generation batch, for dynamic sampling's refills), which is
  what the explanations quote ("rank 140 of 512, cut at 16").
- The selection of round r scores the posterior after round r-1; `sel_mean` is the
  posterior mean the selector saw, `post_mean` the mean after round r's update.

Public API: `round_candidates`, `prompt_history`, `never_selected`. The reader of the
published files (`RunView`, `with_view`, `Need`, `published_rounds`) is
`insight.record.published`.
The words (explanations, tables, JSON, what `insight audit` prints) are in
`insight.report.audit_text`; the command's arguments in `flows.cli_audit`.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from insight.config import RecordConfig
from insight.record.compact import snapshot_round
from insight.report.audit_text import (explain_history, format_ranges, reason_not_selected,
                                why_not_selected)
from insight.record.published import Need, RunView, published_rounds, sql_str, with_view
from insight.report.rescore import PosteriorHistory, RecordedRun, recompute_selections

TRAIN_SPLIT = "train"


def _check_round(run_dir, round_: int, rounds: list[int]) -> None:
    selection_rounds = [r for r in rounds if r > 0]
    if round_ not in rounds:
        raise ValueError(
            f"round {round_} is not a committed, published round of {run_dir}; "
            f"published rounds: {format_ranges(rounds)}")
    if round_ == 0:
        raise ValueError(
            f"round 0 of {run_dir} holds the prior and the initial evaluation; it scored no "
            f"candidates. Rounds with selections: {format_ranges(selection_rounds)}")


def _record_config(run_dir) -> RecordConfig:
    """What the run's record keeps of each round: its config's `record` section; the
    full record when the run has none (written before the option, or by a writer
    without a run config)."""
    def read(v: RunView) -> RecordConfig:
        rows = v.sql("SELECT config_json FROM runs LIMIT 1").to_pylist()
        raw = json.loads(rows[0]["config_json"] or "{}") if rows else {}
        return RecordConfig.model_validate(raw.get("record") or {})
    return with_view(run_dir, None, read)


def _complete_selections(v: RunView, rounds) -> None:
    """On a compact record (`record.candidates: selected`) the view's `selections` hold
    only the stored rows; replace those of `rounds` by every candidate's row, recomputed
    from the reconstructed posterior and the round's seed (insight.report.rescore) and
    checked against the stored ones. The queries below then read both modes alike."""
    run = RecordedRun.read(v)
    history = PosteriorHistory(v, run)
    tables = [recompute_selections(v, run, r, history) for r in sorted(rounds) if r > 0]
    if not tables:
        return
    v.con.register("_recomputed", pa.concat_tables(tables))
    try:
        v.con.execute("DELETE FROM selections WHERE round IN "
                      "(SELECT DISTINCT round FROM _recomputed)")
        v.con.execute("INSERT INTO selections BY NAME SELECT * FROM _recomputed")
    finally:
        v.con.unregister("_recomputed")


# For each row of `mine` (a prompt's scoring in one round and generation batch): how many candidates, how many selected,
# the place of mine in the ranking, and the lowest selected candidate (the cut) with the
# factors of its score. `src` holds every candidate of those rounds; one pass over it.
_STATS_SQL = """
    stats AS (
        SELECT m.prompt_id, m.round, m.gen_batch, count(*) AS candidates,
               sum(s.selected::INT) AS n_selected,
               1 + sum(CASE WHEN m.rank IS NOT NULL THEN (s.rank < m.rank)::INT
                            ELSE (s.score > m.score)::INT END) AS position,
               min(s.score) FILTER (WHERE s.selected) AS cut_score,
               arg_min(s.weight, s.score) FILTER (WHERE s.selected) AS cut_weight,
               arg_min(s.mi, s.score) FILTER (WHERE s.selected) AS cut_mi
        FROM {src} s JOIN {mine} m ON s.round = m.round AND s.gen_batch = m.gen_batch
        GROUP BY m.prompt_id, m.round, m.gen_batch)
"""


# --- round candidates ----------------------------------------------------------------
def round_candidates(run_dir: str | Path, round_: int) -> pa.Table:
    """Every candidate scored in `round_`, in ranking order (per generation batch), with
    its score and the factors behind it, and its outcome (successes of k) if rolled out."""
    round_ = int(round_)
    compact = _record_config(run_dir).candidates != "all"

    def query(v: RunView) -> pa.Table:
        _check_round(run_dir, round_, v.rounds)
        if compact:
            _complete_selections(v, [round_])
        return v.sql(f"""
            WITH sel AS (
                SELECT *, row_number() OVER (PARTITION BY gen_batch
                          ORDER BY rank NULLS LAST, score DESC, prompt_id) AS position,
                       count(*) OVER (PARTITION BY gen_batch) AS candidates
                FROM selections WHERE round = $r),
            outcome AS (
                SELECT prompt_id, gen_batch, sum(success::INT)::INTEGER AS successes,
                       count(*)::INTEGER AS k
                FROM rollouts WHERE round = $r GROUP BY prompt_id, gen_batch)
            SELECT s.position::INTEGER AS position, s.rank, s.prompt_id, s.selected,
                   s.score, s.mi, s.weight, s.mean, s.alpha, s.beta,
                   s.difficulty_factor, s.evidence_factor, o.successes, o.k,
                   s.gen_batch, s.candidates::INTEGER AS candidates, s.selector,
                   p.difficulty, p.prompt
            FROM sel s
            LEFT JOIN outcome o USING (prompt_id, gen_batch)
            LEFT JOIN (SELECT DISTINCT ON (prompt_id) * FROM prompts) p USING (prompt_id)
            ORDER BY s.gen_batch, s.position""", {"r": round_})

    return with_view(run_dir, {"selections": Need((round_,)), "rollouts": Need((round_,))},
                      query)


# --- one prompt's history --------------------------------------------------------------
def prompt_history(run_dir: str | Path, prompt_id: str) -> dict[str, Any]:
    """A prompt's text and answer, its path through every published round (scored?,
    score, rank, selected?, outcome, posterior after the round), and a one-line
    explanation of its latest selection state."""
    prompt_id = str(prompt_id)
    only = Need(where=f"prompt_id = {sql_str(prompt_id)}")
    # a compact record's candidates are recomputed, every round (the ranking needs them)
    compact = _record_config(run_dir).candidates != "all"

    def query(v: RunView) -> dict[str, Any]:
        info = v.sql("SELECT * FROM prompts WHERE prompt_id = $p LIMIT 1",
                     {"p": prompt_id}).to_pylist()
        in_posterior = v.scalar("SELECT count(*) FROM posteriors WHERE prompt_id = $p",
                                {"p": prompt_id})
        if not info and not in_posterior:
            raise ValueError(_unknown_prompt_message(v, run_dir, prompt_id))
        rounds = pa.table({"round": pa.array(v.rounds, pa.int32())})
        v.con.register("_published", rounds)
        if compact:
            _complete_selections(v, v.rounds)
        scored = [r[0] for r in v.con.sql("SELECT DISTINCT round FROM selections").fetchall()]
        src = "selections" if compact else v.scan("selections", scored)
        hist = v.sql(f"""
            WITH mine AS (
                SELECT * FROM selections WHERE prompt_id = $p
                QUALIFY row_number() OVER (PARTITION BY round
                                           ORDER BY selected DESC, gen_batch) = 1),
            {_STATS_SQL.format(mine='mine', src=src)},
            outcome AS (
                SELECT round, sum(success::INT)::INTEGER AS successes,
                       count(*)::INTEGER AS trials
                FROM rollouts WHERE prompt_id = $p GROUP BY round),
            -- the latest posterior row at or before each round: a compact record stores
            -- a prompt's row only in the rounds that changed it
            post AS (SELECT round AS post_round, alpha, beta FROM posteriors
                     WHERE prompt_id = $p)
            SELECT r.round, m.prompt_id IS NOT NULL AS scored, m.selected,
                   m.score, m.rank, st.position::INTEGER AS position,
                   st.candidates::INTEGER AS candidates,
                   st.n_selected::INTEGER AS n_selected, st.cut_score,
                   m.weight, m.mi, m.mean AS sel_mean, m.alpha AS sel_alpha,
                   m.beta AS sel_beta, o.successes, o.trials,
                   p.alpha AS post_alpha, p.beta AS post_beta,
                   p.alpha / (p.alpha + p.beta) AS post_mean, m.gen_batch, m.selector,
                   st.cut_weight, st.cut_mi
            FROM _published r
            LEFT JOIN mine m USING (round)
            LEFT JOIN stats st USING (prompt_id, round, gen_batch)
            LEFT JOIN outcome o USING (round)
            ASOF LEFT JOIN post p ON r.round >= p.post_round
            ORDER BY r.round""", {"p": prompt_id})
        meta = info[0] if info else {}
        rows = hist.to_pylist()
        selected_rounds = [r["round"] for r in rows if r["selected"]]
        table = hist.drop_columns(["cut_weight", "cut_mi"])
        split = meta.get("split")
        return {
            "run_dir": str(run_dir),
            "prompt_id": prompt_id,
            "prompt": meta.get("prompt"),
            # what the policy was given, when the run renders prompts (chat template...)
            "rendered": meta.get("rendered"),
            "answer": meta.get("answer"),
            "split": split,
            "difficulty": meta.get("difficulty"),
            "source": meta.get("source"),
            "times_scored": sum(1 for r in rows if r["scored"]),
            "times_selected": len(selected_rounds),
            "selected_rounds": selected_rounds,
            "explanation": explain_history(rows, split, in_posterior > 0),
            "rounds": table,
        }

    return with_view(run_dir, {"selections": Need() if compact else only, "rollouts": only,
                               "posteriors": only}, query)


def _unknown_prompt_message(v: RunView, run_dir, prompt_id: str) -> str:
    last = v.rounds[-1:] if v.rounds else []
    ids = v.sql(f"SELECT DISTINCT prompt_id FROM {v.scan('posteriors', last)} UNION "
                "SELECT prompt_id FROM prompts").column("prompt_id").to_pylist()
    ids = sorted(i for i in ids if i is not None)
    if not ids:
        return f"unknown prompt id {prompt_id!r}: {run_dir} has no prompts published yet"
    close = difflib.get_close_matches(prompt_id, ids, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return (f"unknown prompt id {prompt_id!r} in {run_dir}: its {len(ids)} prompt ids range "
            f"from {ids[0]!r} to {ids[-1]!r}{hint}")


# --- never selected ------------------------------------------------------------------
def never_selected(run_dir: str | Path) -> pa.Table:
    """Training prompts never selected in any published round, with their last scoring
    (round, score, rank, posterior mean) and why they missed the cut. Closest to the cut
    first; prompts never scored at all last."""

    record = _record_config(run_dir)

    def query(v: RunView) -> pa.Table:
        last_round = max(v.rounds) if v.rounds else 0
        if record.candidates != "all":
            _complete_selections(v, v.rounds)
        t = v.sql(f"""
            WITH train AS (
                SELECT prompt_id FROM posteriors
                UNION SELECT prompt_id FROM prompts WHERE split = '{TRAIN_SPLIT}'),
            ever AS (SELECT DISTINCT prompt_id FROM selections WHERE selected),
            never AS (SELECT prompt_id FROM train WHERE prompt_id NOT IN
                      (SELECT prompt_id FROM ever)),
            tally AS (SELECT prompt_id, count(DISTINCT round)::INTEGER AS times_scored
                      FROM selections WHERE prompt_id IN (SELECT prompt_id FROM never)
                      GROUP BY prompt_id),
            mine AS (
                SELECT * FROM selections WHERE prompt_id IN (SELECT prompt_id FROM never)
                QUALIFY row_number() OVER (PARTITION BY prompt_id
                                           ORDER BY round DESC, gen_batch DESC) = 1),
            batches AS (SELECT DISTINCT round, gen_batch FROM mine),
            -- places by window over the batches involved (no candidates x prompts join)
            ranked AS (
                SELECT s.prompt_id, s.round, s.gen_batch,
                       row_number() OVER (PARTITION BY s.round, s.gen_batch
                           ORDER BY s.rank NULLS LAST, s.score DESC, s.prompt_id) AS position,
                       count(*) OVER (PARTITION BY s.round, s.gen_batch) AS candidates
                FROM selections s JOIN batches b USING (round, gen_batch)),
            cut AS (
                SELECT s.round, s.gen_batch, count(*) AS n_selected,
                       min(s.score) AS cut_score, arg_min(s.weight, s.score) AS cut_weight,
                       arg_min(s.mi, s.score) AS cut_mi
                FROM selections s JOIN batches b USING (round, gen_batch)
                WHERE s.selected GROUP BY s.round, s.gen_batch),
            stats AS (
                SELECT r.prompt_id, r.round, r.gen_batch, r.position, r.candidates,
                       coalesce(c.n_selected, 0) AS n_selected, c.cut_score, c.cut_weight,
                       c.cut_mi
                FROM ranked r JOIN mine m USING (prompt_id, round, gen_batch)
                LEFT JOIN cut c USING (round, gen_batch)),
            -- each prompt's latest row: the last snapshot, overwritten by later deltas
            post AS (SELECT prompt_id, arg_max(alpha / (alpha + beta), round) AS post_mean
                     FROM posteriors GROUP BY prompt_id)
            SELECT n.prompt_id, p.difficulty, coalesce(t.times_scored, 0) AS times_scored,
                   m.round, m.score, st.position::INTEGER AS position,
                   st.candidates::INTEGER AS candidates,
                   st.n_selected::INTEGER AS n_selected, st.cut_score,
                   m.weight, m.mi, m.mean AS sel_mean, m.alpha AS sel_alpha,
                   m.beta AS sel_beta, po.post_mean, m.selector, st.cut_weight, st.cut_mi,
                   p.prompt
            FROM never n
            LEFT JOIN tally t USING (prompt_id)
            LEFT JOIN mine m USING (prompt_id)
            LEFT JOIN stats st ON st.prompt_id = m.prompt_id AND st.round = m.round
                                  AND st.gen_batch = m.gen_batch
            LEFT JOIN post po USING (prompt_id)
            LEFT JOIN (SELECT DISTINCT ON (prompt_id) * FROM prompts) p USING (prompt_id)
            ORDER BY m.score DESC NULLS LAST, n.prompt_id""")
        rows = t.to_pylist()
        reasons, explanations = [], []
        for row in rows:
            if row["round"] is None:
                reasons.append("never scored")
                explanations.append(
                    f"never scored: it was in no candidate pool of rounds 1..{last_round}")
            else:
                reasons.append(reason_not_selected(row))
                explanations.append(why_not_selected(row))
        t = t.drop_columns(["cut_weight", "cut_mi", "sel_alpha", "sel_beta"])
        t = t.rename_columns(["last_round" if c == "round" else
                              "last_score" if c == "score" else
                              "last_position" if c == "position" else c
                              for c in t.column_names])
        prompt = t.column("prompt")
        t = t.drop_columns(["prompt"])
        t = t.append_column("reason", pa.array(reasons, pa.string()))
        t = t.append_column("explanation", pa.array(explanations, pa.string()))
        return t.append_column("prompt", prompt)

    # posteriors: after the last round (its snapshot, and a compact record's deltas since)
    last = published_rounds(run_dir)[-1:]
    since = tuple(range(snapshot_round(last[0], record.posterior_snapshot_every),
                        last[0] + 1)) if last else ()
    return with_view(run_dir, {"selections": Need(), "posteriors": Need(since)}, query)
