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

Public API: `published_rounds`, `round_candidates`, `prompt_history`, `never_selected`;
`RunView` / `with_view` / `Need` for other readers of the same files (`insight.report.plots`).
The words (explanations, tables, JSON, what `insight audit` prints) are in
`insight.report.audit_text`; the command's arguments in `flows.cli_audit`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import duckdb
import pyarrow as pa

from insight.report.audit_text import (explain_history, format_ranges, reason_not_selected,
                                why_not_selected)
from insight.store import PARQUET_DIR, ROUND_TABLES, SCHEMA

T = TypeVar("T")

_ROUND_DIR = re.compile(r"^round_(\d+)$")
_RUN_TABLES = ("runs", "prompts")
TRAIN_SPLIT = "train"
# Columns read from the (large) rollouts files: never the completions themselves.
_ROLLOUT_COLUMNS = ("run_id", "round", "prompt_id", "sample_idx", "reward", "success",
                    "gen_batch", "kept", "policy_round")


# --- reading the published Parquet -------------------------------------------------
def published_rounds(run_dir: str | Path) -> list[int]:
    """Rounds whose Parquet folder has been published (committed rounds), ascending."""
    root = Path(run_dir) / PARQUET_DIR
    if not root.is_dir():
        raise FileNotFoundError(
            f"no published Parquet under {root}: is {run_dir} a run directory?")
    rounds = []
    for child in root.iterdir():
        m = _ROUND_DIR.match(child.name)
        if m and child.is_dir():
            rounds.append(int(m.group(1)))
    return sorted(rounds)


def _sql_str(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


@dataclass(frozen=True)
class Need:
    """What a function reads of one per-round table: which rounds (None = all published)
    and an optional SQL filter on the table's columns. Loading it scans its files once."""

    rounds: tuple[int, ...] | None = None
    where: str = ""


class RunView:
    """An in-memory DuckDB connection over the run's published Parquet.

    `runs` and `prompts` are views over their single files. Each per-round table named in
    `need` is read once, with its filter, into an in-memory table (one scan over the
    round files, instead of one per reference in a query); the others are empty tables of
    the store's schema, so every query binds. Columns of SCHEMA missing from the files
    read as NULL; a NULL or missing gen_batch reads as 0; the completions are never loaded."""

    def __init__(self, run_dir: str | Path, need: dict[str, Need] | None = None):
        self.run_dir = Path(run_dir)
        self.rounds = published_rounds(run_dir)
        self.con = duckdb.connect(":memory:")
        # footers are read once per file even when a query scans a table twice
        self.con.execute("SET parquet_metadata_cache = true")
        root = self.run_dir / PARQUET_DIR
        for table in _RUN_TABLES:
            self._create(table, [root / f"{table}.parquet"], "", view=True)
        for table in ROUND_TABLES + ("rounds",):
            spec = (need or {}).get(table)
            if spec is None:
                self.con.execute(f"CREATE TABLE {table} AS SELECT "
                                 f"{self._columns(table, None)} WHERE false")
                continue
            self._create(table, self.files(table, spec.rounds), spec.where, view=False)

    def files(self, table: str, rounds: Iterable[int] | None = None) -> list[Path]:
        published = set(self.rounds)
        wanted = self.rounds if rounds is None else sorted(r for r in rounds if r in published)
        root = self.run_dir / PARQUET_DIR
        return [root / f"round_{r:05d}" / f"{table}.parquet" for r in wanted]

    @staticmethod
    def _columns(table: str, present: set[str] | None) -> str:
        cols = []
        for name, typ in _schema_columns(table).items():
            if table == "rollouts" and name not in _ROLLOUT_COLUMNS:
                continue
            if present is None or name not in present:
                default = "0" if name == "gen_batch" else "NULL"
                cols.append(f"CAST({default} AS {typ}) AS {name}")
            elif name == "gen_batch":
                cols.append("coalesce(gen_batch, 0)::INTEGER AS gen_batch")
            else:
                cols.append(f"CAST({name} AS {typ}) AS {name}")
        return ", ".join(cols)

    def scan(self, table: str, rounds: Iterable[int] | None = None) -> str:
        """A subquery reading `table` straight from its files (normalized columns), for a
        streaming aggregate that need not hold the table in memory."""
        return self._source(table, self.files(table, rounds))

    def _source(self, table: str, files: list[Path]) -> str:
        files = [f for f in files if f.is_file()]
        if not files:
            return f"(SELECT {self._columns(table, None)} WHERE false)"
        # The store's tables keep one shape within a run, so the first file's schema is
        # read. Should the first and last files differ (a run continued by a newer store
        # that added a column), union_by_name is used, at a footer read per file.
        first, last = (self._describe(f"read_parquet({_sql_str(f)})")
                       for f in (files[0], files[-1]))
        union = ", union_by_name = true" if first != last else ""
        listing = ", ".join(_sql_str(f) for f in files)
        source = f"read_parquet([{listing}]{union})"
        present = set(first) | set(last)
        return f"(SELECT {self._columns(table, present)} FROM {source})"

    def _describe(self, source: str) -> list[str]:
        return [r[0] for r in self.con.sql(f"DESCRIBE SELECT * FROM {source}").fetchall()]

    def _create(self, table: str, files: list[Path], where: str, *, view: bool) -> None:
        kind = "VIEW" if view else "TABLE"
        cond = f" WHERE {where}" if where else ""
        self.con.execute(f"CREATE {kind} {table} AS SELECT * FROM "
                         f"{self._source(table, files)} AS t{cond}")

    def sql(self, query: str, params: dict | None = None) -> pa.Table:
        return self.con.sql(query, params=params or None).to_arrow_table()

    def scalar(self, query: str, params: dict | None = None):
        rows = self.con.sql(query, params=params or None).fetchall()
        return rows[0][0] if rows else None

    def close(self) -> None:
        self.con.close()


def _schema_columns(table: str) -> dict[str, str]:
    """Column name -> SQL type, parsed from the store's DDL."""
    out = {}
    for part in re.split(r",(?![^()]*\))", SCHEMA[table]):
        bits = part.split()
        if len(bits) >= 2:
            out[bits[0]] = bits[1]
    return out


def with_view(run_dir, need: dict[str, Need] | None,
              fn: Callable[[RunView], T]) -> T:
    """Run `fn` on a fresh view; retry if a round folder vanished under us (a round being
    re-published by `ensure_published` replaces its folder). A file DuckDB cannot read
    (truncated, corrupt) is the user's to fix, so it is reported as one line naming it."""
    for attempt in range(3):
        view = None
        try:
            view = RunView(run_dir, need)
            return fn(view)
        except (duckdb.IOException, duckdb.InvalidInputException) as err:
            if attempt == 2 or "No such file" not in str(err) and "not found" not in str(err):
                raise ValueError(f"cannot read the published Parquet of {run_dir}: "
                                 f"{_duckdb_reason(err)}") from err
        finally:
            if view is not None:
                view.close()
    raise AssertionError("unreachable")  # pragma: no cover


def _duckdb_reason(err: Exception) -> str:
    """DuckDB's message without its error-class prefix, first line only."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return re.sub(r"^(Invalid Input|IO) Error: ", "", text)


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

    def query(v: RunView) -> pa.Table:
        _check_round(run_dir, round_, v.rounds)
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
    only = Need(where=f"prompt_id = {_sql_str(prompt_id)}")

    def query(v: RunView) -> dict[str, Any]:
        info = v.sql("SELECT * FROM prompts WHERE prompt_id = $p LIMIT 1",
                     {"p": prompt_id}).to_pylist()
        in_posterior = v.scalar("SELECT count(*) FROM posteriors WHERE prompt_id = $p",
                                {"p": prompt_id})
        if not info and not in_posterior:
            raise ValueError(_unknown_prompt_message(v, run_dir, prompt_id))
        rounds = pa.table({"round": pa.array(v.rounds, pa.int32())})
        v.con.register("_published", rounds)
        scored = [r[0] for r in v.con.sql("SELECT DISTINCT round FROM selections").fetchall()]
        src = v.scan("selections", scored)
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
            post AS (SELECT round, alpha, beta FROM posteriors WHERE prompt_id = $p)
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
            LEFT JOIN post p USING (round)
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

    return with_view(run_dir, {"selections": only, "rollouts": only, "posteriors": only},
                      query)


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

    def query(v: RunView) -> pa.Table:
        last_round = max(v.rounds) if v.rounds else 0
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
            post AS (SELECT prompt_id, alpha / (alpha + beta) AS post_mean
                     FROM posteriors)
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

    # posteriors: the latest snapshot only (every training prompt, after the last round)
    last = published_rounds(run_dir)[-1:]
    return with_view(run_dir, {"selections": Need(), "posteriors": Need(tuple(last))}, query)
