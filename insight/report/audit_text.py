"""The words of an audit: why a prompt was (not) selected, and audit results as text.

`insight.report.audit` answers the questions (tables and dicts read from the published Parquet);
this module says the answers in words and lays them out, so that the queries stay free of
presentation and the sentences can be tested on hand-made rows:

- `reason_not_selected` / `why_not_selected`: a short label and a sentence, with the
  numbers, for a scored candidate that missed the cut; `explain_history`: one line on a
  prompt's selection state from its per-round history.
- `format_table` (fixed-width text) and `to_json` (NaN-free JSON) of any result.
- `round_report`, `prompt_report`, `never_selected_report`: the text `insight audit`
  prints for each question, in table or JSON form.

Nothing here reads a file.
"""

from __future__ import annotations

import json
import math
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

#: Rows a table shows when no --limit is given (JSON shows all).
DEFAULT_TABLE_ROWS = 40


def format_ranges(values: list[int]) -> str:
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



# --- why (not) selected -------------------------------------------------------------
def _f(x: float | None, digits: int = 3) -> str:
    """A number for a sentence: `digits` significant digits, scientific when tiny/huge."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) < 1e-3 or abs(x) >= 1e5:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def _random_key(selector) -> bool:
    """The selector's score is a random key (draw order), not a judgement of the prompt."""
    from insight.selection import registry
    return selector in registry.SELECTORS and registry.SELECTORS[selector].random_key


def reason_not_selected(row: dict) -> str:
    """A short label for why a scored candidate was not selected."""
    if _random_key(row.get("selector")):
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


def why_not_selected(row: dict) -> str:
    """Why a scored candidate was not selected, in words, with the numbers."""
    reason = reason_not_selected(row)
    r, pos, n = row["round"], row.get("position"), row.get("candidates")
    place = f"rank {pos} of {n}, cut at {row.get('n_selected')}"
    score, cut = row.get("score"), row.get("cut_score")
    if cut is None:
        return f"round {r} selected no candidate of its batch ({place})"
    if _random_key(row.get("selector")):
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


def explain_history(rows: list[dict], split: str | None, trainable: bool) -> str:
    """One line on a prompt's selection state, from its per-round history (the rows of
    `insight.report.audit.prompt_history`): selected last round, or why not, and since when."""
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
        return (f"never selected (scored {_times(len(scored))}): "
                f"{why_not_selected(last)}{tail}")
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
            f"not selected in round {last['round']}: {why_not_selected(last)}{tail}")


# --- tables and JSON --------------------------------------------------------------------
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



# --- what `insight audit` prints ---------------------------------------------------------
def shown_rows(table: pa.Table, limit: int | None, *, as_json: bool = False,
               tail: bool = False) -> pa.Table:
    """The rows a report shows: the first `limit` (the last with `tail`); `limit` None
    means DEFAULT_TABLE_ROWS for a table and all rows for JSON, 0 or less means all."""
    n = limit
    if n is None:
        n = 0 if as_json else DEFAULT_TABLE_ROWS
    if n <= 0 or table.num_rows <= n:
        return table
    return table.slice(table.num_rows - n) if tail else table.slice(0, n)


def round_report(run_dir, round_: int, table: pa.Table, *, as_json: bool = False,
                 limit: int | None = None) -> str:
    """A round's candidates (`insight.report.audit.round_candidates`): a headline (candidates,
    selected, selector) and the ranking, as a table or JSON."""
    shown = shown_rows(table, limit, as_json=as_json)
    n_sel = sum(1 for s in table.column("selected").to_pylist() if s)
    selector = next((s for s in table.column("selector").to_pylist() if s), None)
    if as_json:
        return to_json({"run_dir": run_dir, "round": round_, "selector": selector,
                        "candidates": table.num_rows, "selected": n_sel,
                        "rows": shown})
    batches = len(set(table.column("gen_batch").to_pylist()))
    head = (f"round {round_} of {run_dir}: {table.num_rows} candidates scored, "
            f"{n_sel} selected (selector {selector})"
            + (f", in {batches} generation batches" if batches > 1 else ""))
    body = format_table(shown.drop_columns(["candidates", "selector"]))
    return f"{head}\n{body}" + _more(table, shown)


def prompt_report(run_dir, history: dict[str, Any], *, as_json: bool = False,
                  limit: int | None = None) -> str:
    """A prompt's history (`insight.report.audit.prompt_history`): its text, answer, tallies and
    explanation, then its most recent `limit` rounds, as a table or JSON."""
    h = history
    rounds = h["rounds"]
    shown = shown_rows(rounds, limit, as_json=as_json, tail=True)
    if as_json:
        return to_json({**h, "rounds": shown})
    head = [f"prompt {h['prompt_id']} of {run_dir}"
            + (f" (split {h['split']}, difficulty {h['difficulty']})"
               if h.get("split") else ""),
            f"  prompt : {_cell(h['prompt'], 200)}",
            *([f"  model  : {_cell(h['rendered'], 400)}"] if h.get("rendered") else []),
            f"  answer : {_cell(h['answer'], 200)}",
            f"  scored {_times(h['times_scored'])}, selected {_times(h['times_selected'])}"
            + (f" (rounds {format_ranges(h['selected_rounds'])})" if h["selected_rounds"]
               else ""),
            f"  why    : {h['explanation']}"]
    cols = ["round", "scored", "selected", "score", "position", "candidates", "cut_score",
            "weight", "mi", "sel_mean", "successes", "trials", "post_alpha", "post_beta",
            "post_mean"]
    body = format_table(shown.select(cols))
    note = (f"\n(showing the last {shown.num_rows} of {rounds.num_rows} rounds; "
            "--limit 0 shows all)" if shown.num_rows < rounds.num_rows else "")
    return "\n".join(head) + "\n" + body + note


def never_selected_report(run_dir, table: pa.Table, *, as_json: bool = False,
                          limit: int | None = None) -> str:
    """The never-selected prompts (`insight.report.audit.never_selected`): a count per reason,
    then the prompts closest to the cut first, as a table or JSON."""
    shown = shown_rows(table, limit, as_json=as_json)
    if as_json:
        return to_json({"run_dir": run_dir, "never_selected": table.num_rows, "rows": shown})
    counts: dict[str, int] = {}
    for reason in table.column("reason").to_pylist():
        counts[reason] = counts.get(reason, 0) + 1
    head = (f"{table.num_rows} training prompts of {run_dir} never selected"
            + (" (" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + ")"
               if counts else ""))
    cols = ["prompt_id", "difficulty", "times_scored", "last_round", "last_score",
            "last_position", "candidates", "cut_score", "sel_mean", "post_mean", "reason",
            "prompt"]
    return f"{head}\n{format_table(shown.select(cols))}" + _more(table, shown)


def _more(full: pa.Table, shown: pa.Table) -> str:
    if shown.num_rows < full.num_rows:
        return f"\n... {full.num_rows - shown.num_rows} more rows (--limit 0 shows all)"
    return ""
