"""`insight score`: acquisition scores for posteriors that come from elsewhere.

Input (Parquet, or CSV by extension .csv / .csv.gz / .tsv): one row per prompt with
``prompt_id`` and either ``alpha, beta`` (a Beta posterior per prompt) or ``successes,
trials`` (counts; the posterior is Beta(a0 + successes, b0 + trials - successes)).
An optional integer column ``k`` overrides the rollout count per prompt.

Output (Parquet, or CSV by extension): long format, one row per (selector, prompt):
selector, prompt_id, score, rank (1 = best, by descending score within the selector, ties
by a seeded draw), selected (rank <= batch_size when a batch size is given, else null),
mi, weight, alpha, beta, mean, difficulty_factor, evidence_factor, sampled_p, k.
Scores use ``insight.selection.registry.score_components`` (higher is better); for uniform and
dynamic-sampling the score is a seeded uniform key (their candidate order).
The command's arguments are parsed in `flows.cli_score`; `score_file` is the whole job.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from insight.selection import registry
from insight.selection.registry import NAMES as SELECTORS
from insight.selection.validate import as_float_array, describe, validate_alpha_beta, validate_k

_CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv")
_OUT_COLUMNS = ("selector", "prompt_id", "score", "rank", "selected", "mi", "weight", "alpha",
                "beta", "mean", "difficulty_factor", "evidence_factor", "sampled_p", "k")


def _is_csv(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(_CSV_SUFFIXES)


def read_table(path) -> pa.Table:
    """Read Parquet or CSV (prompt_id always read as a string)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"input file not found: {path}")
    try:
        if _is_csv(path):
            delim = "\t" if path.name.lower().endswith(".tsv") else ","
            return pacsv.read_csv(
                path, parse_options=pacsv.ParseOptions(delimiter=delim),
                convert_options=pacsv.ConvertOptions(
                    column_types={"prompt_id": pa.string()},
                    # "nan" stays a float NaN (reported as such), only blanks are missing
                    null_values=["", "NULL", "null", "NA", "N/A"]))
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"cannot read {path}: {err}") from None


def _numeric(table: pa.Table, name: str, ids) -> np.ndarray:
    col = table.column(name)
    if col.null_count:
        bad = np.asarray(col.is_null().to_pylist(), dtype=bool)
        raise ValueError(f"column {name!r} is empty; offending {describe(bad, ids)}")
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        raise ValueError(f"column {name!r} must be numeric, got {col.type}")
    return as_float_array(col.to_numpy(zero_copy_only=False), name, ids)


def load_posteriors(table: pa.Table, *, a0: float = 1.0, b0: float = 1.0):
    """(prompt_ids, alpha, beta, k or None) from a table of alpha/beta or successes/trials."""
    cols = set(table.column_names)
    if "prompt_id" not in cols:
        raise ValueError(f"input lacks column 'prompt_id'; it has {table.column_names}")
    pid = table.column("prompt_id")
    if pid.null_count:
        raise ValueError(f"prompt_id has {pid.null_count} empty entries")
    ids = np.asarray([str(x) for x in pid.to_pylist()], dtype=object)
    empty = np.asarray([x == "" for x in ids], dtype=bool)
    if empty.any():
        raise ValueError(f"prompt_id must be non-empty; offending {describe(empty)}")
    uniq, counts = np.unique(ids.astype(str), return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"duplicate prompt ids: {[str(u) for u in uniq[counts > 1][:10]]}")
    if {"alpha", "beta"} <= cols:
        if {"successes", "trials"} & cols:
            raise ValueError("input has both alpha/beta and successes/trials columns; "
                             "keep one pair")
        alpha, beta = validate_alpha_beta(_numeric(table, "alpha", ids),
                                          _numeric(table, "beta", ids), ids)
    elif {"successes", "trials"} <= cols:
        from insight.selection.posterior import update, validate_outcomes

        s, t = validate_outcomes(_numeric(table, "successes", ids),
                                 _numeric(table, "trials", ids), ids)
        alpha, beta = update(np.full(len(ids), float(a0)), np.full(len(ids), float(b0)), s, t,
                             lam=1.0, a0=a0, b0=b0)
    else:
        raise ValueError("input needs columns prompt_id with alpha, beta or with successes, "
                         f"trials; it has {table.column_names}")
    k = None
    if "k" in cols:
        k = validate_k(_numeric(table, "k", ids), len(ids), ids)
    return ids, alpha, beta, k


def score_table(ids, alpha, beta, selectors: list[str], k, *, seed: int = 0,
                batch_size: int | None = None, **params) -> pa.Table:
    """Long-format scores of several selectors (see module doc). ``params`` are shared:
    each selector takes the ones that apply to it (an unknown name raises)."""
    if not selectors:
        raise ValueError(f"no selector given; choose from {list(SELECTORS)}")
    for name in selectors:
        if name not in SELECTORS:
            raise ValueError(f"unknown selector {name!r}; choose from {list(SELECTORS)}")
    if len(set(selectors)) != len(selectors):
        raise ValueError(f"selector listed twice: {selectors}")
    applicable = set().union(*(registry.selector_params(s) for s in selectors))
    given = {p for p, v in params.items() if v is not None}
    unused = sorted(given - applicable)
    if unused:
        raise ValueError(f"parameter(s) {unused} apply to none of the selectors {selectors}; "
                         f"they take {sorted(applicable) or 'none'}")
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    kk = validate_k(k, len(ids) if np.ndim(k) else None, ids)
    n = len(ids)
    parts = []
    for i, name in enumerate(selectors):
        rng = np.random.default_rng([seed, i])
        mine = {p: v for p, v in params.items()
                if p in registry.selector_params(name) and v is not None}
        comp = registry.score_components(name, alpha, beta, kk, rng=rng, prompt_ids=ids,
                                            **mine)
        order = np.lexsort((rng.random(n), -comp["score"]))
        rank = np.empty(n, dtype=np.int32)
        rank[order] = np.arange(1, n + 1, dtype=np.int32)
        selected = (pa.array(rank <= batch_size) if batch_size is not None
                    else pa.nulls(n, pa.bool_()))
        kcol = np.broadcast_to(np.asarray(kk, dtype=np.int64), (n,))
        parts.append(pa.table({
            "selector": pa.array([name] * n, pa.string()),
            "prompt_id": pa.array(ids.tolist(), pa.string()),
            "score": comp["score"], "rank": rank, "selected": selected,
            "mi": comp["mi"],
            "weight": pa.array(comp["weight"], mask=np.isnan(comp["weight"])),
            "alpha": alpha, "beta": beta, "mean": comp["mean"],
            "difficulty_factor": comp["difficulty_factor"],
            "evidence_factor": comp["evidence_factor"],
            "sampled_p": pa.array(comp["sampled_p"], mask=np.isnan(comp["sampled_p"])),
            "k": kcol,
        }))
    return pa.concat_tables(parts)


def score_file(in_path, out_path, selectors: list[str], k: int, *, seed: int = 0,
               **params) -> Path:
    """Score the posteriors of ``in_path`` with each selector and write ``out_path``.

    ``k``: rollouts per prompt (a ``k`` column in the input overrides it per prompt).
    ``params``: a0, b0 (prior for successes/trials input, default 1, 1), batch_size (marks
    the top-B as selected), and the scoring parameters weight, gamma, tau, sigma.
    """
    a0 = params.pop("a0", None)
    b0 = params.pop("b0", None)
    a0 = 1.0 if a0 is None else float(a0)
    b0 = 1.0 if b0 is None else float(b0)
    batch_size = params.pop("batch_size", None)
    _refuse_overwriting_input(in_path, out_path)
    if isinstance(selectors, str):
        selectors = [s.strip() for s in selectors.split(",") if s.strip()]
    ids, alpha, beta, kcol = load_posteriors(read_table(in_path), a0=a0, b0=b0)
    out = score_table(ids, alpha, beta, list(selectors), k if kcol is None else kcol,
                      seed=seed, batch_size=batch_size, **params)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if _is_csv(out_path):
        pacsv.write_csv(out, out_path)
    else:
        pq.write_table(out, out_path)
    return out_path


def _refuse_overwriting_input(in_path, out_path) -> None:
    """Writing the scores over the posteriors they came from would destroy the input;
    compare resolved paths (and the file itself, for links) so `./in.csv` is caught."""
    src, dst = Path(in_path).resolve(), Path(out_path).resolve()
    if src == dst or (src.exists() and dst.exists() and os.path.samefile(src, dst)):
        raise ValueError(f"output {out_path} is the input file {in_path}; "
                         "choose another output path")
