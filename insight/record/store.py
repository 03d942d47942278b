"""The run's record: one DuckDB file per run, plus Parquet per committed round.

Why a database at all: the outcomes are the source of truth (DESIGN §3). The posterior,
the selections and the metrics can all be rebuilt from them, so the store is what makes a
run resumable and auditable. Tables follow the storage contract users query with SQL;
names are stable, columns may be added.

Concurrency model: only the training process opens `insight.duckdb` read-write, once
per stage, for that stage (`with RunStore(path) as db:`). Readers that must never
block a training run (`insight audit`) read the Parquet files instead, which are
published per round, after the round's commit, by an atomic rename.

Idempotence: every stage first deletes its own rows for (run_id, round) and then writes
them, inside one transaction, so re-running a stage after a crash never duplicates rows.

Integrity: each published Parquet file's size and SHA-256 are recorded in the `published`
table when it is written, so a resume can tell a truncated or altered file from a good
one and re-publish it from DuckDB; a database that cannot be read is refused with
`RunDamagedError` instead of a DuckDB traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from insight.record.layout import DB_NAME, parquet_dir, round_dir
from insight.record.schema import (ROUND_OUTPUT_TABLES, ROUND_TABLES, RUN_TABLES,
                                   RUN_TABLES_ROUND, TABLES, ddl)

# DuckDB's file layout: a file header and two database headers of 4 KiB each, then
# fixed-size blocks numbered from 0 (`PRAGMA database_size` reports their size).
_DUCKDB_HEADER_BYTES = 3 * 4096

_LOCK_RETRY_SECONDS = 30.0


class RunDamagedError(RuntimeError):
    """The run directory cannot be continued as it is: its database is unreadable, or a
    file its record relies on is gone. Continuing would lose or invent data, so the
    run is refused with a message that says which file."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class RunStore:
    """Read-write access to one run's DuckDB file. Use as a context manager, once per
    stage or command: DuckDB lets one process at a time hold the file."""

    def __init__(self, run_dir: str | Path, *, read_only: bool = False):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / DB_NAME
        self.read_only = read_only
        self.con: duckdb.DuckDBPyConnection | None = None

    def __enter__(self) -> "RunStore":
        if self.read_only and not self.path.exists():
            raise FileNotFoundError(f"no run database at {self.path}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.con = _connect_with_retry(self.path, self.read_only)
        try:
            _check_not_truncated(self.con, self.path)
        except BaseException:
            self.__exit__()
            raise
        if not self.read_only:
            have = {r[0] for r in self.con.execute(
                "SELECT table_name FROM duckdb_tables()").fetchall()}
            for name in TABLES:
                if name not in have:
                    self.execute(ddl(name))
            self._add_missing_columns()
        return self

    def _add_missing_columns(self) -> None:
        """Columns added to the schema since a run's file was created (a resumed older run
        would otherwise fail its first insert of a new column)."""
        have = {(t, c) for t, c in self.con.execute(
            "SELECT table_name, column_name FROM duckdb_columns()").fetchall()}
        for name, cols in TABLES.items():
            for col, col_type in cols:
                if (name, col) not in have:
                    self.execute(f"ALTER TABLE {name} ADD COLUMN {col} {col_type}")

    def __exit__(self, *exc) -> None:
        if self.con is not None:
            self.con.close()
            self.con = None

    # -- generic helpers ------------------------------------------------------------
    def sql(self, query: str, params: list | tuple | None = None) -> pa.Table:
        return self.con.sql(query, params=params or None).to_arrow_table()

    def execute(self, query: str, params: list | tuple | None = None) -> None:
        """Run a statement to completion (DuckDB 2 refuses new work on a connection
        whose previous result was left unfetched)."""
        self.con.execute(query, params or []).fetchall()

    def scalar(self, query: str, params: list | tuple | None = None):
        rows = self.con.execute(query, params or []).fetchall()
        return rows[0][0] if rows else None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    def insert(self, table: str, rows: pa.Table) -> None:
        """Append an Arrow table whose columns are a subset of the table's columns."""
        if rows.num_rows == 0:
            return
        cols = ", ".join(rows.column_names)
        self.con.register("_insert_rows", rows)
        try:
            self.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _insert_rows")
        finally:
            self.con.unregister("_insert_rows")

    def replace_round_rows(self, table: str, run_id: str, round_: int, rows: pa.Table,
                           where: str = "") -> None:
        """Idempotent write: delete this round's rows of `table` (optionally narrowed by
        `where`), then insert `rows`, in one transaction."""
        with self.transaction():
            self.execute(f"DELETE FROM {table} WHERE run_id = ? AND round = ? {where}",
                             [run_id, round_])
            self.insert(table, rows)

    # -- runs -----------------------------------------------------------------------
    def get_run(self) -> dict | None:
        t = self.sql("SELECT * FROM runs")
        if t.num_rows == 0:
            return None
        if t.num_rows > 1:
            raise ValueError(f"{self.path} holds {t.num_rows} runs; one run per directory")
        return t.to_pylist()[0]

    # -- rounds ---------------------------------------------------------------------
    def committed_rounds(self, run_id: str) -> list[int]:
        t = self.sql("SELECT round FROM rounds WHERE run_id = ? AND status = 'committed' "
                     "ORDER BY round", [run_id])
        return t.column("round").to_pylist()

    def last_committed_round(self, run_id: str) -> int:
        last = self.scalar("SELECT max(round) FROM rounds WHERE run_id = ? AND "
                           "status = 'committed'", [run_id])
        return int(last) if last is not None else 0

    def round_row(self, run_id: str, round_: int) -> dict | None:
        t = self.sql("SELECT * FROM rounds WHERE run_id = ? AND round = ?", [run_id, round_])
        return t.to_pylist()[0] if t.num_rows else None

    def start_round(self, run_id: str, round_: int, flow_run_id: str | None) -> None:
        """Mark a round running, discarding any partial output of an earlier attempt."""
        row = self.round_row(run_id, round_)
        if row is not None and row["status"] == "committed":
            raise ValueError(f"round {round_} of run {run_id} is already committed")
        with self.transaction():
            for table in ROUND_OUTPUT_TABLES:
                self.execute(f"DELETE FROM {table} WHERE run_id = ? AND round = ?",
                                 [run_id, round_])
            self.execute("DELETE FROM rounds WHERE run_id = ? AND round = ?",
                             [run_id, round_])
            self.execute(
                "INSERT INTO rounds (run_id, round, status, started_at, flow_run_id) "
                "VALUES (?, ?, 'running', ?, ?)", [run_id, round_, utcnow(), flow_run_id])

    def fail_round(self, run_id: str, round_: int, error: str) -> None:
        self.execute("UPDATE rounds SET status = 'failed', error = ?, finished_at = ? "
                         "WHERE run_id = ? AND round = ? AND status <> 'committed'",
                         [error[:4000], utcnow(), run_id, round_])

    def commit_round(self, run_id: str, round_: int, *, checkpoint: str,
                     rollouts_consumed: int, metrics: dict,
                     selector_state: dict | None = None) -> None:
        """Mark a running round committed. `selector_state` None keeps the state the
        round's stages saved (`save_selector_state`)."""
        if selector_state is not None:
            self.save_selector_state(run_id, round_, selector_state)
        with self.transaction():
            n = self.scalar("SELECT count(*) FROM rounds WHERE run_id = ? AND round = ? "
                            "AND status = 'running'", [run_id, round_])
            if n != 1:
                raise RuntimeError(f"round {round_} is not running; cannot commit it")
            self.execute(
                "UPDATE rounds SET status = 'committed', finished_at = ?, checkpoint = ?, "
                "rollouts_consumed = ?, metrics_json = ?, error = NULL "
                "WHERE run_id = ? AND round = ?",
                [utcnow(), checkpoint, int(rollouts_consumed), json.dumps(metrics), run_id,
                 round_])

    def record_stage(self, run_id: str, round_: int, stage: str, seconds: float,
                     wall_seconds: float | None = None) -> None:
        """`seconds`: the stage's own compute; `wall_seconds`: as seen by the flow, so the
        difference is the orchestration overhead (Prefect, store I/O, model loading)."""
        with self.transaction():
            self.execute("DELETE FROM stages WHERE run_id = ? AND round = ? AND stage = ?",
                             [run_id, round_, stage])
            self.execute("INSERT INTO stages VALUES (?, ?, ?, ?, ?, ?)",
                             [run_id, round_, stage, float(seconds),
                              None if wall_seconds is None else float(wall_seconds), utcnow()])

    # -- the stages' reads and writes --------------------------------------------------
    def selector_state(self, run_id: str, round_: int) -> dict:
        """The selector's own state (epoch position, ...) saved with a round; {} if none."""
        row = self.round_row(run_id, round_)
        return json.loads(row["selector_state"]) if row and row["selector_state"] else {}

    def save_selector_state(self, run_id: str, round_: int, state: dict) -> None:
        self.execute("UPDATE rounds SET selector_state = ? WHERE run_id = ? AND round = ?",
                     [json.dumps(state), run_id, round_])

    def posterior_snapshot(self, run_id: str, round_: int, every: int = 1) -> pa.Table:
        """(prompt_id, alpha, beta) after round `round_`'s update, by prompt id. With
        `record.posterior_snapshot_every` = `every` > 1 (insight.record.compact): the full
        snapshot at or before the round, each prompt's latest delta row over it."""
        base = round_ - round_ % every
        if base == round_:
            return self.sql("SELECT prompt_id, alpha, beta FROM posteriors WHERE run_id = ? "
                            "AND round = ? ORDER BY prompt_id", [run_id, round_])
        return self.sql("SELECT prompt_id, arg_max(alpha, round) AS alpha, "
                        "arg_max(beta, round) AS beta FROM posteriors WHERE run_id = ? "
                        "AND round BETWEEN ? AND ? GROUP BY prompt_id ORDER BY prompt_id",
                        [run_id, base, round_])

    def outcome_totals_before(self, run_id: str, round_: int) -> pa.Table:
        """(prompt_id, s, n): successes and rollouts of every prompt before `round_`."""
        return self.sql("SELECT prompt_id, sum(success::INT) AS s, count(*) AS n FROM "
                        "rollouts WHERE run_id = ? AND round < ? GROUP BY prompt_id",
                        [run_id, round_])

    def outcomes_by_round_before(self, run_id: str, round_: int) -> pa.Table:
        """(prompt_id, round, s, n): each prompt's successes and rollouts per round, for
        every round before `round_` (the history time-aware forgetting weighs)."""
        return self.sql("SELECT prompt_id, round, sum(success::INT)::DOUBLE AS s, "
                        "count(*)::DOUBLE AS n FROM rollouts WHERE run_id = ? AND round < ? "
                        "GROUP BY prompt_id, round ORDER BY round, prompt_id",
                        [run_id, round_])

    def prompt_groups(self, run_id: str, column: str) -> pa.Table:
        """(prompt_id, grp): the training prompts' value of `column` (source or
        difficulty), as text: the groups of the grouped empirical-Bayes prior."""
        if column not in ("source", "difficulty"):
            raise ValueError(f"prompts cannot be grouped by {column!r}; use source or difficulty")
        return self.sql(f"SELECT prompt_id, CAST({column} AS VARCHAR) AS grp FROM prompts "
                        "WHERE run_id = ? AND split = 'train' ORDER BY prompt_id", [run_id])

    def round_outcomes(self, run_id: str, round_: int) -> pa.Table:
        """(prompt_id, s, n) of one round's rollouts, kept or not, by prompt id."""
        return self.sql("SELECT prompt_id, sum(success::INT)::DOUBLE AS s, "
                        "count(*)::DOUBLE AS n FROM rollouts WHERE run_id = ? AND round = ? "
                        "GROUP BY prompt_id ORDER BY prompt_id", [run_id, round_])

    def selected_prompts(self, run_id: str, round_: int) -> list[str]:
        """The prompts selected in a round, in generation order (batch, then rank)."""
        return self.sql("SELECT prompt_id FROM selections WHERE run_id = ? AND round = ? AND "
                        "selected ORDER BY gen_batch, rank",
                        [run_id, round_]).column("prompt_id").to_pylist()

    def kept_groups(self, run_id: str, round_: int) -> pa.Table:
        """The rollouts the policy update learns from (DAPO's kept groups), with the
        prompt text the model was given (rendered, else raw), ordered by generation
        batch, prompt and sample."""
        return self.sql("SELECT r.prompt_id, r.sample_idx, r.reward, r.completion_token_ids, "
                        "coalesce(p.rendered, p.prompt) AS prompt "
                        "FROM rollouts r JOIN prompts p USING (run_id, prompt_id) "
                        "WHERE r.run_id = ? AND r.round = ? AND r.kept "
                        "ORDER BY r.gen_batch, r.prompt_id, r.sample_idx", [run_id, round_])

    # -- Parquet export -------------------------------------------------------------
    def export_run_tables(self, run_id: str) -> None:
        """Write runs and prompts as Parquet (at run creation, and to repair them)."""
        out = parquet_dir(self.run_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = {}
        for table in RUN_TABLES:
            final = out / f"{table}.parquet"
            tmp = final.with_name(final.name + ".tmp")
            pq.write_table(self.sql(f"SELECT * FROM {table} WHERE run_id = ?", [run_id]), tmp)
            written[final] = tmp
        self._record_published(run_id, RUN_TABLES_ROUND, written)
        for final, tmp in written.items():
            os.replace(tmp, final)

    def export_round(self, run_id: str, round_: int) -> Path:
        """Publish a committed round's rows as Parquet: a folder written aside, then
        renamed into place, so a reader sees a round whole or not at all. The files'
        checksums are recorded before the rename, so a folder in place always has them."""
        final = round_dir(self.run_dir, round_)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        written = {}
        for table in ROUND_TABLES + ("rounds",):
            name = f"{table}.parquet"
            pq.write_table(self.sql(f"SELECT * FROM {table} WHERE run_id = ? AND round = ?",
                                    [run_id, round_]), tmp / name)
            written[final / name] = tmp / name
        self._record_published(run_id, round_, written)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        return final

    def _record_published(self, run_id: str, round_: int, written: dict[Path, Path]) -> None:
        """Record size and checksum of each file as written (`final path -> file written`)."""
        now = utcnow()
        rows = [(run_id, round_, final.relative_to(self.run_dir).as_posix(),
                 tmp.stat().st_size, file_sha256(tmp), now) for final, tmp in written.items()]
        with self.transaction():
            self.execute("DELETE FROM published WHERE run_id = ? AND round = ?",
                         [run_id, round_])
            self.con.executemany("INSERT INTO published VALUES (?, ?, ?, ?, ?, ?)", rows)

    def damaged_publications(self, run_id: str) -> dict[int, list[str]]:
        """Published files that no longer match their record, by round: what is missing,
        truncated or altered. A committed round (or the run tables) with no record at
        all, published by an older version or cut off by a crash, counts as damaged
        too: nothing vouches for its files."""
        recorded: dict[int, dict[str, tuple[int, str]]] = {}
        for row in self.sql("SELECT round, path, bytes, sha256 FROM published "
                            "WHERE run_id = ?", [run_id]).to_pylist():
            recorded.setdefault(row["round"], {})[row["path"]] = (row["bytes"], row["sha256"])
        damaged: dict[int, list[str]] = {}
        for round_ in [RUN_TABLES_ROUND] + self.committed_rounds(run_id):
            files = recorded.get(round_)
            if not files:
                where = (parquet_dir(Path()) if round_ == RUN_TABLES_ROUND
                         else round_dir(Path(), round_)).as_posix()
                damaged[round_] = [f"{where}/ (no checksums recorded)"]
                continue
            bad = [f"{path} ({why})" for path, (size, digest) in sorted(files.items())
                   if (why := _file_problem(self.run_dir / path, size, digest))]
            if bad:
                damaged[round_] = bad
        return damaged


    # -- named queries: metrics, summary, run, tracking, benchmark ----
    # Every read or write of the contract tables outside a training stage goes through a
    # method here, named for what it returns, so the SQL over the record has one owner
    # and a schema change is made (and reviewed) in one place.

    # metrics of one round (insight.record.metrics.round_metrics)
    def group_outcomes(self, run_id: str, round_: int) -> list[dict]:
        """One row per generated group (prompt, gen_batch) of the round: its rollouts `k`,
        successes `s`, reward mean `r` and population sd `sd`, and whether it was `kept`
        for training; the zero-advantage share and the wasted rollouts derive from them."""
        return self.sql("""
            SELECT prompt_id, gen_batch, count(*) AS k, sum(success::INT) AS s,
                   avg(reward) AS r, stddev_pop(reward) AS sd, bool_and(kept) AS kept
            FROM rollouts WHERE run_id = ? AND round = ? GROUP BY prompt_id, gen_batch""",
            [run_id, round_]).to_pylist()

    def selected_score_stats(self, run_id: str, round_: int) -> dict:
        """Score mean/min/max (`mean`, `lo`, `hi`) and the mean MI `mi`, weight `w` and
        posterior mean `m` of the round's selected prompts: what the selector favoured."""
        return self.sql("""SELECT avg(score) AS mean, min(score) AS lo, max(score) AS hi,
                           avg(mi) AS mi, avg(weight) AS w, avg(mean) AS m
                    FROM selections WHERE run_id = ? AND round = ? AND selected""",
                        [run_id, round_]).to_pylist()[0]

    def rollouts_committed_before(self, run_id: str, round_: int) -> int:
        """Rollouts consumed by the committed rounds before `round_`, so a round's running
        total follows from the record alone (also for a round recomputed later)."""
        return self.scalar("SELECT coalesce(sum(rollouts_consumed), 0) FROM rounds "
                           "WHERE run_id = ? AND status = 'committed' AND round < ?",
                           [run_id, round_])

    def eval_row(self, run_id: str, round_: int) -> dict | None:
        """The round's held-out `accuracy` and `greedy_accuracy`, or None when the round
        was not evaluated (evaluation runs every `eval.every` rounds)."""
        rows = self.sql("SELECT accuracy, greedy_accuracy FROM evals WHERE run_id = ? "
                        "AND round = ?", [run_id, round_]).to_pylist()
        return rows[0] if rows else None

    def stage_times(self, run_id: str, round_: int) -> list[dict]:
        """The round's stages with their compute `seconds` and `wall_seconds`."""
        return self.sql("SELECT stage, seconds, wall_seconds FROM stages WHERE run_id = ? "
                        "AND round = ?", [run_id, round_]).to_pylist()

    # the run summary (insight.record.metrics.summarize) and the benchmark's record
    def committed_evals(self, run_id: str) -> list[dict]:
        """`round`, `accuracy`, `greedy_accuracy` of every evaluated committed round, in
        round order: an evaluation of a round that never committed does not count."""
        return self.sql("SELECT e.round, e.accuracy, e.greedy_accuracy FROM evals e "
                        "JOIN rounds r USING (run_id, round) WHERE e.run_id = ? "
                        "AND r.status = 'committed' ORDER BY e.round", [run_id]).to_pylist()

    def summary_aggregates(self, run_id: str) -> dict:
        """Over the committed training rounds (round 0 trains nothing): the rollouts
        consumed (`rollouts`) and the mean zero-advantage share (`z`) from their metrics."""
        return self.sql("SELECT coalesce(sum(rollouts_consumed), 0) AS rollouts, "
                        "avg(CAST(json_extract(metrics_json, '$.zero_adv_share') AS DOUBLE)) "
                        "AS z FROM rounds WHERE run_id = ? AND status = 'committed' "
                        "AND round > 0", [run_id]).to_pylist()[0]

    def stage_time_means(self, run_id: str) -> list[dict]:
        """Per stage, in name order: mean compute seconds `s` and mean orchestration
        overhead `o` (wall minus compute) over every recorded round."""
        return self.sql("SELECT stage, avg(seconds) AS s, avg(wall_seconds - seconds) AS o "
                        "FROM stages WHERE run_id = ? GROUP BY stage ORDER BY stage",
                        [run_id]).to_pylist()

    # the run itself (insight.record.run)
    def create_run(self, run_id: str, *, config_json: str, config_hash: str, data_hash: str,
                   seed: int, selector: str) -> None:
        """The run's one `runs` row, stamped now (the caller adds its prompts in the
        same transaction, so a run never exists without them)."""
        self.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                     [run_id, config_json, config_hash, data_hash, seed, selector, utcnow()])

    def update_run_config(self, config_json: str) -> None:
        """Store the config a resume runs under (its identity unchanged: only settings
        such as the number of rounds or the tracking target may differ)."""
        self.execute("UPDATE runs SET config_json = ?", [config_json])

    def replace_run_identity(self, config_json: str, config_hash: str, data_hash: str) -> None:
        """Store a changed setup the user allowed (`--allow-changed`): config and the
        hashes that identify the experiment from now on."""
        self.execute("UPDATE runs SET config_json = ?, config_hash = ?, data_hash = ?",
                     [config_json, config_hash, data_hash])

    def prompt_rows(self, run_id: str, split: str) -> pa.Table:
        """The `split` prompts ("train" or "eval") with the fields of a Problem, in id
        order, so every stage sees the pool in one order."""
        return self.sql("SELECT prompt_id, prompt, answer, source, difficulty, verifier, rendered "
                        "FROM prompts WHERE run_id = ? AND split = ? ORDER BY prompt_id",
                        [run_id, split])

    # MLflow tracking (tasks.tracking)
    def tracked_mlflow_run(self, run_id: str, round_: int, uri: str) -> str | None:
        """The MLflow run that `round_` (or the run-level row) was logged to at `uri`."""
        return self.scalar("SELECT mlflow_run_id FROM tracking WHERE run_id = ? AND "
                           "round = ? AND uri = ?", [run_id, round_, uri])

    def record_tracked(self, run_id: str, round_: int, mlflow_run_id: str, uri: str) -> None:
        """Remember that `round_` reached the MLflow at `uri`, replacing an earlier
        record of it (a re-logged round keeps one row)."""
        with self.transaction():
            self.execute("DELETE FROM tracking WHERE run_id = ? AND round = ? AND uri = ?",
                         [run_id, round_, uri])
            self.execute("INSERT INTO tracking (run_id, round, mlflow_run_id, logged_at, uri) "
                         "VALUES (?, ?, ?, ?, ?)", [run_id, round_, mlflow_run_id, utcnow(), uri])

    def untracked_rounds(self, run_id: str, uri: str) -> list[int]:
        """Committed rounds the MLflow at `uri` has not seen, ascending: what a sync logs."""
        t = self.sql("SELECT round FROM rounds WHERE run_id = ? AND status = 'committed' AND "
                     "round NOT IN (SELECT round FROM tracking WHERE run_id = ? AND uri = ?) "
                     "ORDER BY round", [run_id, run_id, uri])
        return t.column("round").to_pylist()

    # the benchmark's reading of finished runs (flows.bench_compare.read_run_record)
    def committed_round_metrics(self, run_id: str) -> list[dict]:
        """`round`, `rollouts_consumed` and `metrics_json` of every committed round, in
        round order: a run's learning curve and its cost axis."""
        return self.sql("SELECT round, rollouts_consumed, metrics_json FROM rounds "
                        "WHERE run_id = ? AND status = 'committed' ORDER BY round",
                        [run_id]).to_pylist()

    def group_outcomes_by_difficulty(self, run_id: str,
                                     through_round: int | None = None) -> list[dict]:
        """Per prompt difficulty level, over the committed training rounds up to
        `through_round` (default all): generated `groups`, the shares of all-fail and
        all-success groups, and the `success_rate`. Where a selector's savings went."""
        last = through_round if through_round is not None else 2**31 - 1
        return self.sql(
            "WITH g AS (SELECT o.round, o.prompt_id, sum(o.success::INT) AS s, count(*) AS n "
            "FROM rollouts o JOIN rounds r USING (run_id, round) WHERE o.run_id = ? "
            "AND r.status = 'committed' AND o.round BETWEEN 1 AND ? GROUP BY ALL) "
            "SELECT p.difficulty, count(*) AS groups, avg((g.s = 0)::INT) AS all_fail, "
            "avg((g.s = g.n)::INT) AS all_success, sum(g.s) / sum(g.n) AS success_rate "
            "FROM g JOIN prompts p ON p.run_id = ? AND p.prompt_id = g.prompt_id "
            "WHERE p.difficulty IS NOT NULL GROUP BY ALL ORDER BY 1",
            [run_id, last, run_id]).to_pylist()

    def prompt_groups_by_round(self, run_id: str, through_round: int) -> list[dict]:
        """Every generated group of the committed training rounds up to `through_round`,
        in round order: `round`, `prompt_id`, successes `s` of `n`, and the prompt's
        `difficulty`. Where a selector's rollouts went, prompt by prompt."""
        return self.sql(
            "SELECT o.round, o.prompt_id, sum(o.success::INT) AS s, count(*) AS n, "
            "any_value(p.difficulty) AS difficulty "
            "FROM rollouts o JOIN rounds r USING (run_id, round) "
            "JOIN prompts p ON p.run_id = o.run_id AND p.prompt_id = o.prompt_id "
            "WHERE o.run_id = ? AND r.status = 'committed' AND o.round BETWEEN 1 AND ? "
            "GROUP BY o.round, o.prompt_id ORDER BY o.round",
            [run_id, through_round]).to_pylist()

    def delete_rounds_after(self, run_id: str, round_: int) -> list[int]:
        """Delete every round after `round_`, committed or not, from every per-round
        table, one transaction per round; returns the rounds deleted. For a trainer that
        resumed from an earlier checkpoint and will redo them."""
        later = self.sql("SELECT round FROM rounds WHERE run_id = ? AND round > ? "
                         "ORDER BY round", [run_id, round_]).column("round").to_pylist()
        for r in later:
            with self.transaction():
                for table in ROUND_TABLES + ("published", "rounds"):
                    self.execute(f"DELETE FROM {table} WHERE run_id = ? AND round = ?",
                                 [run_id, r])
        return later

    def round_wall_seconds(self, run_id: str) -> dict[int, float | None]:
        """Each recorded round's wall-clock seconds, summed over its stages."""
        rows = self.sql("SELECT round, sum(wall_seconds) AS w FROM stages WHERE run_id = ? "
                        "GROUP BY round", [run_id]).to_pylist()
        return {r["round"]: r["w"] for r in rows}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_problem(path: Path, size: int, digest: str) -> str | None:
    """What is wrong with a published file compared to its record, or None."""
    if not path.is_file():
        return "missing"
    actual = path.stat().st_size
    if actual < size:
        return f"truncated: {actual} of {size} bytes"
    if actual != size:
        return f"altered: {actual} bytes, {size} recorded"
    if file_sha256(path) != digest:
        return "altered: checksum differs"
    return None


def _check_not_truncated(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """DuckDB reads blocks lazily: a truncated file opens fine and fails at the first
    query that reaches a lost block, possibly mid-round after other writes. The file
    must reach past the last block that its metadata or any table still uses (the
    block count in its header is no bound: trailing free blocks are cut off)."""
    try:
        block_size = con.execute("SELECT block_size FROM pragma_database_size() "
                                 "WHERE database_name = current_database()").fetchall()[0][0]
        used = [r[0] for r in con.execute("SELECT block_id FROM pragma_metadata_info()").fetchall()]
        for (table,) in con.execute("SELECT table_name FROM duckdb_tables() "
                                    "WHERE database_name = current_database()").fetchall():
            used.append(con.execute("SELECT max(block_id) FROM pragma_storage_info(?)",
                                    [table]).fetchall()[0][0])
    except duckdb.Error as err:
        raise _damaged(path, err) from err
    last = max((b for b in used if b is not None and b >= 0), default=-1)
    expected = _DUCKDB_HEADER_BYTES + (last + 1) * int(block_size)
    actual = path.stat().st_size
    if actual < expected:
        raise RunDamagedError(
            f"cannot read the run database {path}: truncated ({actual} bytes, its blocks "
            f"reach {expected}; restore it from a backup: it is the run's record)")


def _damaged(path: Path, err: Exception) -> RunDamagedError:
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return RunDamagedError(f"cannot read the run database {path}: {reason} (if it is "
                           "truncated or damaged, restore it from a backup: it is the "
                           "run's record)")


def _connect_with_retry(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """DuckDB allows one writing process per file; wait out a short-lived holder
    (another stage, an older reader) instead of failing the stage."""
    deadline = time.monotonic() + _LOCK_RETRY_SECONDS
    delay = 0.05
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as err:
            held = "lock" in str(err).lower()
            if held and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if held or not path.exists():
                raise
            # A file that exists but will not open is damaged (truncated by a full disk,
            # a partial copy): one line that says which file, not a DuckDB traceback.
            raise _damaged(path, err) from err
