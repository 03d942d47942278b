"""Where a run keeps its files: the one place that names the run directory's layout.

    <run_dir>/insight.duckdb                     the record (read-write by the trainer only)
    <run_dir>/parquet/{runs,prompts}.parquet     published once, at run creation
    <run_dir>/parquet/round_NNNNN/<table>.parquet  published per committed round
    <run_dir>/checkpoints/round_NNNNN/           policy (and optimizer) after round N
    <run_dir>/plots/*.png, plots/round_NNNNN/    cumulative and per-round plots
    <run_dir>/insight.log                        tracebacks of failures inside a run

Every module that builds one of these paths calls a function here, so a change of layout
is a change of this file. Paths stored in the record are relative to the run directory
(`relative`/`resolve`), so a run directory can be copied or moved whole.
"""

from __future__ import annotations

import re
from pathlib import Path

DB_NAME = "insight.duckdb"
PARQUET_DIR = "parquet"
CHECKPOINT_DIR = "checkpoints"
PLOTS_DIR = "plots"

_ROUND_NAME = re.compile(r"^round_(\d+)$")


def round_name(round_: int) -> str:
    """`round_00012`: the folder name of one round, wherever rounds have folders."""
    return f"round_{int(round_):05d}"


def parse_round_name(name: str) -> int | None:
    """The round of a `round_NNNNN` folder name; None for anything else (`.tmp` folders)."""
    m = _ROUND_NAME.match(name)
    return int(m.group(1)) if m else None


def rounds_in(folder: str | Path) -> list[int]:
    """Rounds that have a finished folder under `folder`, ascending."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = (parse_round_name(p.name) for p in folder.iterdir() if p.is_dir())
    return sorted(r for r in found if r is not None)


def db_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / DB_NAME


def parquet_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / PARQUET_DIR


def round_dir(run_dir: str | Path, round_: int) -> Path:
    """The published Parquet folder of one committed round."""
    return parquet_dir(run_dir) / round_name(round_)


def checkpoints_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def checkpoint_dir(run_dir: str | Path, round_: int) -> Path:
    """The policy checkpoint written by round `round_`'s update."""
    return checkpoints_root(run_dir) / round_name(round_)


def features_path(run_dir: str | Path, policy_round: int) -> Path:
    """The feature prior's prompt features under the policy of `policy_round` (a cache:
    rebuilt from that checkpoint when missing)."""
    return Path(run_dir) / "cache" / "features" / f"{round_name(policy_round)}.npz"


def plots_root(run_dir: str | Path) -> Path:
    """The run's plots: cumulative ones at the top, per-round ones in `round_NNNNN/`."""
    return Path(run_dir) / PLOTS_DIR
