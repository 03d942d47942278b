"""The storage contract as data: every table of the record, its columns and their types.

Users query these tables with SQL (in `insight.duckdb`, or in the published Parquet), so
table and column names are stable; columns may be added, and readers of an older run see
a column it lacks as NULL. The DuckDB DDL, the migration of older run files and the
Parquet readers' column lists all derive from `TABLES`; docs/storage.md describes them.
"""

from __future__ import annotations

# table -> ((column, DuckDB type), ...). `round` is the training round that produced a row.
TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "runs": (
        ("run_id", "VARCHAR"), ("config_json", "VARCHAR"), ("config_hash", "VARCHAR"),
        ("data_hash", "VARCHAR"), ("seed", "BIGINT"), ("selector", "VARCHAR"),
        ("created_at", "TIMESTAMPTZ")),
    "prompts": (
        ("run_id", "VARCHAR"), ("prompt_id", "VARCHAR"), ("split", "VARCHAR"),
        ("source", "VARCHAR"), ("prompt", "VARCHAR"), ("answer", "VARCHAR"),
        ("difficulty", "INTEGER"), ("verifier", "VARCHAR"), ("rendered", "VARCHAR")),
    "rounds": (
        ("run_id", "VARCHAR"), ("round", "INTEGER"), ("status", "VARCHAR"),
        ("started_at", "TIMESTAMPTZ"), ("finished_at", "TIMESTAMPTZ"),
        ("checkpoint", "VARCHAR"), ("error", "VARCHAR"), ("flow_run_id", "VARCHAR"),
        ("selector_state", "VARCHAR"), ("rollouts_consumed", "BIGINT"),
        ("metrics_json", "VARCHAR")),
    "selections": (
        ("run_id", "VARCHAR"), ("round", "INTEGER"), ("prompt_id", "VARCHAR"),
        ("selector", "VARCHAR"), ("score", "DOUBLE"), ("mi", "DOUBLE"), ("weight", "DOUBLE"),
        ("alpha", "DOUBLE"), ("beta", "DOUBLE"), ("mean", "DOUBLE"),
        ("difficulty_factor", "DOUBLE"), ("evidence_factor", "DOUBLE"),
        ("selected", "BOOLEAN"), ("rank", "INTEGER"), ("gen_batch", "INTEGER")),
    "rollouts": (
        ("run_id", "VARCHAR"), ("round", "INTEGER"), ("prompt_id", "VARCHAR"),
        ("sample_idx", "INTEGER"), ("completion", "VARCHAR"),
        ("completion_token_ids", "INTEGER[]"), ("reward", "DOUBLE"), ("success", "BOOLEAN"),
        ("verifier_error", "VARCHAR"), ("truncated", "BOOLEAN"), ("policy_round", "INTEGER"),
        ("gen_batch", "INTEGER"), ("kept", "BOOLEAN"), ("completion_chars", "INTEGER")),
    "posteriors": (
        ("run_id", "VARCHAR"), ("round", "INTEGER"), ("prompt_id", "VARCHAR"),
        ("alpha", "DOUBLE"), ("beta", "DOUBLE")),
    "evals": (
        ("run_id", "VARCHAR"), ("round", "INTEGER"), ("split", "VARCHAR"),
        ("accuracy", "DOUBLE"), ("greedy_accuracy", "DOUBLE"), ("n_problems", "INTEGER"),
        ("n_samples", "INTEGER")),
    "stages": (
        ("run_id", "VARCHAR"), ("round", "INTEGER"), ("stage", "VARCHAR"),
        ("seconds", "DOUBLE"), ("wall_seconds", "DOUBLE"), ("finished_at", "TIMESTAMPTZ")),
    "tracking": (
        ("run_id", "VARCHAR"), ("round", "INTEGER"), ("mlflow_run_id", "VARCHAR"),
        ("logged_at", "TIMESTAMPTZ"), ("uri", "VARCHAR")),
    # One row per published Parquet file; `path` is relative to the run directory and
    # `round` is RUN_TABLES_ROUND for parquet/{runs,prompts}.parquet.
    "published": (
        ("run_id", "VARCHAR"), ("round", "INTEGER"), ("path", "VARCHAR"),
        ("bytes", "BIGINT"), ("sha256", "VARCHAR"), ("published_at", "TIMESTAMPTZ")),
}

PRIMARY_KEYS = {"runs": "run_id"}

# Run-level tables, published once as parquet/<table>.parquet.
RUN_TABLES = ("runs", "prompts")
# Tables whose rows belong to one round and are published per round (with `rounds`).
ROUND_TABLES = ("selections", "rollouts", "posteriors", "evals", "stages")
# Everything a round writes before its commit: discarded when a round is redone.
ROUND_OUTPUT_TABLES = ROUND_TABLES
RUN_TABLES_ROUND = -1  # `published.round` of the run-level files (runs, prompts)


def columns(table: str) -> dict[str, str]:
    """Column name -> DuckDB type, in table order."""
    return dict(TABLES[table])


def ddl(table: str) -> str:
    """`CREATE TABLE` statement of `table`."""
    cols = ", ".join(f"{name} {typ}" + (" PRIMARY KEY" if PRIMARY_KEYS.get(table) == name
                                        else "") for name, typ in TABLES[table])
    return f"CREATE TABLE {table} ({cols})"
