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

Public API: `published_rounds`, `round_candidates`, `prompt_history`, `never_selected`,
`format_table`, `to_json`, and the CLI glue `add_audit_arguments` / `run_audit`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import sys
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import duckdb
import pyarrow as pa

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


class _RunView:
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


def _with_view(run_dir, need: dict[str, Need] | None,
               fn: Callable[[_RunView], T]) -> T:
    """Run `fn` on a fresh view; retry if a round folder vanished under us (a round being
    re-published by `ensure_published` replaces its folder). A file DuckDB cannot read
    (truncated, corrupt) is the user's to fix, so it is reported as one line naming it."""
    for attempt in range(3):
        view = None
        try:
            view = _RunView(run_dir, need)
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


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0..2, 5, 7..8'."""
    if not values:
        return "none"
    parts, start, prev = [], values[0], values[0]
    for v in values[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}..{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(parts)


def _check_round(run_dir, round_: int, rounds: list[int]) -> None:
    selection_rounds = [r for r in rounds if r > 0]
    if round_ not in rounds:
        raise ValueError(
            f"round {round_} is not a committed, published round of {run_dir}; "
            f"published rounds: {_ranges(rounds)}")
    if round_ == 0:
        raise ValueError(
            f"round 0 of {run_dir} holds the prior and the initial evaluation; it scored no "
            f"candidates. Rounds with selections: {_ranges(selection_rounds)}")


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

    def query(v: _RunView) -> pa.Table:
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

    return _with_view(run_dir, {"selections": Need((round_,)), "rollouts": Need((round_,))},
                      query)


# --- one prompt's history --------------------------------------------------------------
def prompt_history(run_dir: str | Path, prompt_id: str) -> dict[str, Any]:
    """A prompt's text and answer, its path through every published round (scored?,
    score, rank, selected?, outcome, posterior after the round), and a one-line
    explanation of its latest selection state."""
    prompt_id = str(prompt_id)
    only = Need(where=f"prompt_id = {_sql_str(prompt_id)}")

    def query(v: _RunView) -> dict[str, Any]:
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
            "explanation": _explain_history(rows, split, in_posterior > 0),
            "rounds": table,
        }

    return _with_view(run_dir, {"selections": only, "rollouts": only, "posteriors": only},
                      query)


def _unknown_prompt_message(v: _RunView, run_dir, prompt_id: str) -> str:
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


def _f(x: float | None, digits: int = 3) -> str:
    """A number for a sentence: `digits` significant digits, scientific when tiny/huge."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) < 1e-3 or abs(x) >= 1e5:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


# Selectors whose score is a random key (draw order), not a judgement of the prompt.
_RANDOM_KEY_SELECTORS = ("uniform", "dynamic-sampling")


def _reason(row: dict) -> str:
    """A short label for why a scored candidate was not selected."""
    if row.get("selector") in _RANDOM_KEY_SELECTORS:
        return "not drawn"
    score, cut = row.get("score"), row.get("cut_score")
    if score is not None and cut is not None and score >= cut:
        return "not drawn"
    w, cw, mi, cmi = row.get("weight"), row.get("cut_weight"), row.get("mi"), row.get("cut_mi")
    if None in (w, cw, mi, cmi) or cw <= 0 or cmi <= 0:
        return "below cut"
    if w / cw <= mi / cmi:
        mean = row.get("sel_mean")
        return "too easy" if mean is not None and mean > 0.5 else "too hard"
    return "well measured"


def _why_not(row: dict) -> str:
    """Why a scored candidate was not selected, in words, with the numbers."""
    reason = _reason(row)
    r, pos, n = row["round"], row.get("position"), row.get("candidates")
    place = f"rank {pos} of {n}, cut at {row.get('n_selected')}"
    score, cut = row.get("score"), row.get("cut_score")
    if cut is None:
        return f"round {r} selected no candidate of its batch ({place})"
    if row.get("selector") in _RANDOM_KEY_SELECTORS:
        return (f"not drawn by the {row['selector']} selector in round {r} (its score is a "
                f"random key; {place})")
    if reason == "not drawn":
        return (f"its score {_f(score)} is not below the lowest selected score {_f(cut)} of "
                f"round {r}, but it was not drawn ({place}; a sampling selector or a tie)")
    parts = []
    if row.get("sel_mean") is not None:
        weight = row.get("weight")
        parts.append(f"its posterior mean {_f(row['sel_mean'], 2)}"
                     + (f" gives weight {_f(weight, 2)}" if weight is not None else ""))
    if row.get("weight") is not None and row.get("mi") is not None \
            and row.get("sel_alpha") is not None:
        n_ev = row["sel_alpha"] + row["sel_beta"]
        parts.append(f"Beta({_f(row['sel_alpha'])}, {_f(row['sel_beta'])}) (n={_f(n_ev)}) "
                     f"leaves MI {_f(row['mi'])}")
    lead = ", ".join(parts) + ", " if parts else ""
    label = {"too easy": "too easy: ", "too hard": "too hard: ",
             "well measured": "well measured: "}.get(reason, "")
    return (f"{label}{lead}score {_f(score)} below the cut {_f(cut)} of round {r} "
            f"({place})")


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _explain_history(rows: list[dict], split: str | None, trainable: bool) -> str:
    last_round = rows[-1]["round"] if rows else 0
    if not trainable:
        kind = f"a {split!r} prompt" if split else "not a training prompt"
        return f"{kind}: never a selection candidate (it has no posterior)"
    scored = [r for r in rows if r["scored"]]
    if not scored:
        return (f"never scored: it was in no candidate pool of rounds 1..{last_round}"
                if last_round else "no selection round published yet")
    last = scored[-1]
    selected = [r for r in rows if r["selected"]]
    tail = ""
    if last["round"] < last_round:
        tail = f"; not a candidate since (rounds {last['round'] + 1}..{last_round})"
    post = rows[-1]
    post_s = f"posterior mean now {_f(post['post_mean'], 2)}" \
        if post.get("post_mean") is not None else ""
    if not selected:
        return f"never selected (scored {_times(len(scored))}): {_why_not(last)}{tail}"
    if last["selected"]:
        outcome = (f", outcome {last['successes']}/{last['trials']}"
                   if last.get("trials") else "")
        how = (f"posterior mean {_f(last['sel_mean'], 2)} gave weight {_f(last['weight'], 2)} "
               f"and MI {_f(last['mi'])}, " if last.get("weight") is not None
               and last.get("mi") is not None else "")
        return (f"selected in round {last['round']} ({how}score {_f(last['score'])}, "
                f"rank {last['position']} of {last['candidates']}, cut at "
                f"{last['n_selected']}){outcome}; selected {_times(len(selected))} in all"
                f"{'; ' + post_s if post_s else ''}{tail}")
    prev = selected[-1]
    prev_s = (f" ({prev['successes']}/{prev['trials']})" if prev.get("trials") else "")
    return (f"last selected in round {prev['round']}{prev_s}, {_times(len(selected))} in all; "
            f"not selected in round {last['round']}: {_why_not(last)}{tail}")


# --- never selected ------------------------------------------------------------------
def never_selected(run_dir: str | Path) -> pa.Table:
    """Training prompts never selected in any published round, with their last scoring
    (round, score, rank, posterior mean) and why they missed the cut. Closest to the cut
    first; prompts never scored at all last."""

    def query(v: _RunView) -> pa.Table:
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
                reasons.append(_reason(row))
                explanations.append(_why_not(row))
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
    return _with_view(run_dir, {"selections": Need(), "posteriors": Need(tuple(last))}, query)


# --- formatting ------------------------------------------------------------------------
def _cell(value: Any, width: int = 48) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0:
            return "0"
        if abs(value) < 1e-3 or abs(value) >= 1e6:
            return f"{value:.3e}"
        return f"{value:.4g}" if abs(value) >= 1 else f"{value:.4f}"
    text = str(value).replace("\r", "").replace("\n", "\\n").replace("\t", " ")
    return text if len(text) <= width else text[:width - 1] + "…"


def format_table(table: pa.Table | list[dict], max_rows: int | None = None,
                 max_width: int = 48) -> str:
    """Fixed-width text: a header, a rule, one line per row (numbers right-aligned,
    text left-aligned, long text cut at `max_width`), and a note of rows left out."""
    if isinstance(table, pa.Table):
        names, rows = table.column_names, table.to_pylist()
    else:
        rows = list(table)
        names = list(rows[0]) if rows else []
    if not names:
        return "(no columns)"
    shown = rows if max_rows is None or max_rows <= 0 else rows[:max_rows]
    cells = [[_cell(r.get(c), max_width) for c in names] for r in shown]
    numeric = [all(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool)
                   for r in shown if r.get(c) is not None) for c in names]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(names)]

    def line(values):
        out = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "  ".join(out).rstrip()

    lines = [line(names), "  ".join("-" * w for w in widths)]
    lines += [line(row) for row in cells]
    if not rows:
        lines.append("(no rows)")
    elif len(shown) < len(rows):
        lines.append(f"... {len(rows) - len(shown)} more rows (of {len(rows)}; "
                     "--limit 0 shows all)")
    return "\n".join(lines)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, pa.Table):
        return [_jsonable(r) for r in obj.to_pylist()]
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (datetime, date)):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def to_json(obj: Any, indent: int | None = 2) -> str:
    """JSON text of an audit result (tables become lists of row objects; NaN -> null)."""
    return json.dumps(_jsonable(obj), indent=indent, allow_nan=False)


# --- command line ----------------------------------------------------------------------
DEFAULT_TABLE_ROWS = 40


def add_audit_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `insight audit`."""
    parser.add_argument("--run-dir", required=True, type=Path,
                        help="run directory (reads its published Parquet only; safe while "
                             "the run is training)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--round", type=int, metavar="R",
                      help="every candidate scored in round R, in rank order")
    what.add_argument("--prompt", metavar="ID",
                      help="one prompt's selection history and posterior path")
    what.add_argument("--never-selected", action="store_true",
                      help="training prompts never selected, and why")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="fixed-width table (default) or JSON")
    parser.add_argument("--limit", type=int, metavar="N", default=None,
                        help=f"rows to show (table default {DEFAULT_TABLE_ROWS}, JSON default "
                             "all; 0 = all). For --prompt: the most recent N rounds")
    return parser


def _limit(args, table: pa.Table, *, tail: bool = False) -> pa.Table:
    n = args.limit
    if n is None:
        n = DEFAULT_TABLE_ROWS if args.format == "table" else 0
    if n <= 0 or table.num_rows <= n:
        return table
    return table.slice(table.num_rows - n) if tail else table.slice(0, n)


def run_audit(args: argparse.Namespace, out=None, err=None) -> int:
    """Run `insight audit`; returns the exit status (0 ok, 2 bad run dir/round/prompt)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        text = _audit_text(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"insight audit: error: {exc}", file=err)
        return 2
    print(text, file=out)
    return 0


def _audit_text(args) -> str:
    run_dir = args.run_dir
    as_json = args.format == "json"
    if args.round is not None:
        t = round_candidates(run_dir, args.round)
        shown = _limit(args, t)
        n_sel = sum(1 for s in t.column("selected").to_pylist() if s)
        selector = next((s for s in t.column("selector").to_pylist() if s), None)
        if as_json:
            return to_json({"run_dir": run_dir, "round": args.round, "selector": selector,
                            "candidates": t.num_rows, "selected": n_sel,
                            "rows": shown})
        batches = len(set(t.column("gen_batch").to_pylist()))
        head = (f"round {args.round} of {run_dir}: {t.num_rows} candidates scored, "
                f"{n_sel} selected (selector {selector})"
                + (f", in {batches} generation batches" if batches > 1 else ""))
        body = format_table(shown.drop_columns(["candidates", "selector"]))
        return f"{head}\n{body}" + _more(t, shown)
    if args.prompt is not None:
        h = prompt_history(run_dir, args.prompt)
        rounds = h["rounds"]
        shown = _limit(args, rounds, tail=True)
        if as_json:
            return to_json({**h, "rounds": shown})
        head = [f"prompt {h['prompt_id']} of {run_dir}"
                + (f" (split {h['split']}, difficulty {h['difficulty']})"
                   if h.get("split") else ""),
                f"  prompt : {_cell(h['prompt'], 200)}",
                f"  answer : {_cell(h['answer'], 200)}",
                f"  scored {_times(h['times_scored'])}, selected {_times(h['times_selected'])}"
                + (f" (rounds {_ranges(h['selected_rounds'])})" if h["selected_rounds"]
                   else ""),
                f"  why    : {h['explanation']}"]
        cols = ["round", "scored", "selected", "score", "position", "candidates", "cut_score",
                "weight", "mi", "sel_mean", "successes", "trials", "post_alpha", "post_beta",
                "post_mean"]
        body = format_table(shown.select(cols))
        note = (f"\n(showing the last {shown.num_rows} of {rounds.num_rows} rounds; "
                "--limit 0 shows all)" if shown.num_rows < rounds.num_rows else "")
        return "\n".join(head) + "\n" + body + note
    t = never_selected(run_dir)
    shown = _limit(args, t)
    if as_json:
        return to_json({"run_dir": run_dir, "never_selected": t.num_rows, "rows": shown})
    counts: dict[str, int] = {}
    for reason in t.column("reason").to_pylist():
        counts[reason] = counts.get(reason, 0) + 1
    head = (f"{t.num_rows} training prompts of {run_dir} never selected"
            + (" (" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + ")"
               if counts else ""))
    cols = ["prompt_id", "difficulty", "times_scored", "last_round", "last_score",
            "last_position", "candidates", "cut_score", "sel_mean", "post_mean", "reason",
            "prompt"]
    return f"{head}\n{format_table(shown.select(cols))}" + _more(t, shown)


def _more(full: pa.Table, shown: pa.Table) -> str:
    if shown.num_rows < full.num_rows:
        return f"\n... {full.num_rows - shown.num_rows} more rows (--limit 0 shows all)"
    return ""
