"""Reading a run's published Parquet: the record as readers that must never block
training see it (the audit, the plots, the benchmark analysis).

The training process holds `insight.duckdb`'s write lock, so readers go through the
Parquet folders instead: `parquet/round_NNNNN/` appears by an atomic rename after the
round is committed, so the folders that exist are exactly the committed, published
rounds (`*.tmp` folders, an export in progress, are ignored). `RunView` is an in-memory
DuckDB connection over those files with every contract table bound, whatever the files
hold (columns an older run lacks read as NULL).

The plots' data queries live here too, as functions of a `RunView` named for what they
return, so the SQL over the published record has one owner and the plots only draw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import duckdb
import pyarrow as pa

from insight.record import layout, schema

T = TypeVar("T")

# Columns read from the (large) rollouts files: never the completions themselves.
_ROLLOUT_COLUMNS = ("run_id", "round", "prompt_id", "sample_idx", "reward", "success",
                    "gen_batch", "kept", "policy_round")


def published_rounds(run_dir: str | Path) -> list[int]:
    """Rounds whose Parquet folder has been published (committed rounds), ascending."""
    root = layout.parquet_dir(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"no published Parquet under {root}: is {run_dir} a run directory?")
    return layout.rounds_in(root)


def sql_str(value: str) -> str:
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
        root = layout.parquet_dir(self.run_dir)
        for table in schema.RUN_TABLES:
            self._create(table, [root / f"{table}.parquet"], "", view=True)
        for table in schema.ROUND_TABLES + ("rounds",):
            spec = (need or {}).get(table)
            if spec is None:
                self.con.execute(f"CREATE TABLE {table} AS SELECT "
                                 f"{self._columns(table, None)} WHERE false")
                continue
            self._create(table, self.files(table, spec.rounds), spec.where, view=False)

    def files(self, table: str, rounds: Iterable[int] | None = None) -> list[Path]:
        published = set(self.rounds)
        wanted = self.rounds if rounds is None else sorted(r for r in rounds if r in published)
        return [layout.round_dir(self.run_dir, r) / f"{table}.parquet" for r in wanted]

    @staticmethod
    def _columns(table: str, present: set[str] | None) -> str:
        cols = []
        for name, typ in schema.columns(table).items():
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
        first, last = (self._describe(f"read_parquet({sql_str(f)})")
                       for f in (files[0], files[-1]))
        union = ", union_by_name = true" if first != last else ""
        listing = ", ".join(sql_str(f) for f in files)
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


# -- the plots' data queries (insight.report.plots) ------------------------------------
def prompt_difficulties(view: RunView) -> dict[str, int]:
    """prompt_id -> difficulty level, for the prompts that carry one."""
    t = view.sql("SELECT prompt_id, any_value(difficulty) AS d FROM prompts "
                 "WHERE difficulty IS NOT NULL GROUP BY prompt_id")
    return dict(zip(t.column("prompt_id").to_pylist(), t.column("d").to_pylist()))


def posterior_mean_quantiles(view: RunView, levels: dict[str, int] | None) -> pa.Table:
    """Per round and `level`: the number of prompts `n` and the 5/25/50/75/95% quantiles
    `q` of their posterior means. `levels` (prompt_id -> difficulty) splits the prompts
    by level, -1 for a prompt without one; None pools them all as level 0."""
    if levels is not None:
        view.con.register("_diff", pa.table({"prompt_id": list(levels),
                                             "difficulty": list(levels.values())}))
        group = "coalesce(d.difficulty, -1)"
        join = "LEFT JOIN _diff d USING (prompt_id)"
    else:
        group, join = "0", ""
    return view.sql(f"""
        SELECT p.round, {group} AS level, count(*) AS n,
               quantile_cont(p.alpha / (p.alpha + p.beta),
                             [0.05, 0.25, 0.5, 0.75, 0.95]) AS q
        FROM posteriors p {join} GROUP BY ALL ORDER BY level, p.round""")


def posterior_mean_trajectories(view: RunView, n_prompts: int) -> pa.Table:
    """`prompt_id`, `round`, posterior `mean` of a fixed sample of `n_prompts` prompts
    (chosen by a hash of the id, so every redraw shows the same ones)."""
    return view.sql(f"""
        WITH ids AS (SELECT DISTINCT prompt_id FROM posteriors
                     ORDER BY hash(prompt_id), prompt_id LIMIT {int(n_prompts)})
        SELECT prompt_id, round, alpha / (alpha + beta) AS mean FROM posteriors
        WHERE prompt_id IN (SELECT prompt_id FROM ids) ORDER BY prompt_id, round""")


def prompts_by_first_selection(view: RunView) -> pa.Table:
    """The training prompts (those with a posterior) with `difficulty` and `first_round`
    selected, ordered by difficulty, then first selection (never selected last), then id:
    the rows of the selection heat map."""
    return view.sql("""
        WITH train AS (SELECT DISTINCT prompt_id FROM posteriors),
        first AS (SELECT prompt_id, min(round) AS first_round FROM selections
                  WHERE selected GROUP BY prompt_id)
        SELECT t.prompt_id, p.difficulty, f.first_round
        FROM train t LEFT JOIN first f USING (prompt_id)
        LEFT JOIN (SELECT prompt_id, any_value(difficulty) AS difficulty FROM prompts
                   GROUP BY prompt_id) p USING (prompt_id)
        ORDER BY p.difficulty NULLS LAST, f.first_round NULLS LAST, t.prompt_id""")


def selected_success_rates(view: RunView) -> pa.Table:
    """Per selected (prompt_id, round): the success `rate` of its rollouts that round,
    NULL when none are stored: the cells of the selection heat map."""
    return view.sql("""
        SELECT s.prompt_id, s.round, avg(o.success::INT) AS rate
        FROM selections s LEFT JOIN rollouts o
             ON o.round = s.round AND o.prompt_id = s.prompt_id
            AND o.gen_batch = s.gen_batch
        WHERE s.selected GROUP BY s.prompt_id, s.round""")


def selected_group_outcomes(view: RunView) -> pa.Table:
    """Per selected group with rollouts: the posterior mean `m` it was selected at, its
    successes `s` and rollouts `k`: the prediction and the outcome, for calibration."""
    return view.sql("""
        WITH obs AS (
            SELECT round, prompt_id, gen_batch, sum(success::INT) AS s, count(*) AS k
            FROM rollouts GROUP BY ALL)
        SELECT s.mean AS m, o.s, o.k
        FROM selections s JOIN obs o USING (round, prompt_id, gen_batch)
        WHERE s.selected AND s.mean IS NOT NULL""")


# -- re-scoring recorded rounds (insight.report.rescore, insight.report.replay) ------
def run_row(view: RunView) -> dict:
    """The run's `runs` row (config_json, seed, selector, ...)."""
    rows = view.sql("SELECT * FROM runs LIMIT 1").to_pylist()
    if not rows:
        raise ValueError(f"{view.run_dir} has no published runs.parquet")
    return rows[0]


def posterior_rows(view: RunView, round_: int) -> pa.Table:
    """(prompt_id, alpha, beta) stored with round `round_`, by prompt id: every prompt
    on a snapshot round, the changed ones on a compact record's delta round."""
    return view.sql(f"SELECT prompt_id, alpha, beta FROM {view.scan('posteriors', [round_])} "
                    "ORDER BY prompt_id")


def selector_state_json(view: RunView, round_: int) -> str | None:
    """The selector's state saved with round `round_` (JSON text), None if none."""
    return view.scalar(f"SELECT selector_state FROM {view.scan('rounds', [round_])} "
                       "LIMIT 1")


def success_counts_by_round(view: RunView, rounds: Iterable[int]) -> pa.Table:
    """(round, prompt_id, s, n) over the rollouts of `rounds`, kept or not, one row per
    prompt and round in round and prompt order: the evidence the priors are fitted from,
    and the history time-aware forgetting weighs (as `RunStore.outcomes_by_round_before`)."""
    return view.sql("SELECT round, prompt_id, sum(success::INT)::DOUBLE AS s, "
                    f"count(*)::DOUBLE AS n FROM {view.scan('rollouts', list(rounds))} "
                    "GROUP BY round, prompt_id ORDER BY round, prompt_id")


def prompt_groups(view: RunView, column: str) -> pa.Table:
    """(prompt_id, grp): the training prompts' value of `column` (source or difficulty)
    as text, from the published prompts table: the grouped empirical-Bayes prior's groups
    (as `RunStore.prompt_groups`)."""
    if column not in ("source", "difficulty"):
        raise ValueError(f"prompts cannot be grouped by {column!r}; use source or difficulty")
    return view.sql(f"SELECT prompt_id, CAST({column} AS VARCHAR) AS grp FROM prompts "
                    "WHERE split = 'train' ORDER BY prompt_id")


def round_groups(view: RunView, rounds: Iterable[int]) -> pa.Table:
    """One row per generated group of `rounds`: round, prompt_id, gen_batch, successes
    `s` and rollouts `n` (one scan of the rounds' rollouts files)."""
    return view.sql("SELECT round, prompt_id, gen_batch, sum(success::INT)::INTEGER AS s, "
                    f"count(*)::INTEGER AS n FROM {view.scan('rollouts', list(rounds))} "
                    "GROUP BY round, prompt_id, gen_batch ORDER BY round, gen_batch, prompt_id")


def selector_states(view: RunView, rounds: Iterable[int]) -> dict[int, str | None]:
    """round -> the selector's state saved with it (JSON text or None)."""
    t = view.sql(f"SELECT round, selector_state FROM {view.scan('rounds', list(rounds))}")
    return dict(zip(t["round"].to_pylist(), t["selector_state"].to_pylist()))


def stored_selections(view: RunView, round_: int) -> pa.Table:
    """Every `selections` row stored for the round (all candidates, or on a compact
    record the selected ones and the margin), in generation batch and rank order."""
    return view.sql(f"SELECT * FROM {view.scan('selections', [round_])} "
                    "ORDER BY gen_batch, rank")


def selected_in_rounds(view: RunView, rounds: Iterable[int]) -> pa.Table:
    """The selected prompts of `rounds` (round, prompt_id, gen_batch, rank), in round
    and generation order."""
    return view.sql("SELECT round, prompt_id, gen_batch, rank FROM "
                    f"{view.scan('selections', list(rounds))} WHERE selected "
                    "ORDER BY round, gen_batch, rank")


# -- MLflow's views of a run (tasks/tracking_entities.py) ------------------------------
def published_prompts(run_dir: str | Path) -> pa.Table:
    """The run's prompt set as published at its creation (parquet/prompts.parquet)."""
    import pyarrow.parquet as pq
    path = layout.parquet_dir(run_dir) / "prompts.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no published prompt set: {path}")
    return pq.read_table(path)


def round_selection_table(view: RunView, round_: int) -> pa.Table:
    """The prompts drawn in `round_` (every generation batch), in draw order: the prompt,
    its answer, what it was drawn by (score, mi, weight, the posterior it was scored at)
    and its group's outcome (successes of k rollouts, kept for the update or not). The
    B rows a reader of MLflow looks at; every candidate stays in the round's Parquet."""
    return view.sql("""
        WITH obs AS (
            SELECT prompt_id, gen_batch, sum(success::INT)::INTEGER AS successes,
                   count(*)::INTEGER AS k,
                   bool_or(kept) AS kept
            FROM rollouts WHERE round = $r GROUP BY ALL),
        text AS (SELECT prompt_id, any_value(prompt) AS prompt, any_value(answer) AS answer
                 FROM prompts GROUP BY prompt_id)
        SELECT s.round, s.gen_batch, s.rank, s.prompt_id, t.prompt, t.answer, s.score, s.mi,
               s.weight, s.alpha, s.beta, s.mean, o.successes, o.k, o.kept
        FROM selections s LEFT JOIN obs o USING (prompt_id, gen_batch)
        LEFT JOIN text t USING (prompt_id)
        WHERE s.round = $r AND s.selected
        ORDER BY s.gen_batch, s.rank, s.prompt_id""", {"r": round_})
