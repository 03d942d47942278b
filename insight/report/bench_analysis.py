"""Analysis of a selector comparison (`insight bench compare`): data efficiency from the
held-out accuracy-vs-rollouts curves of real training runs.

Pure functions over plain lists and dicts (no Prefect, no MLflow, no store access), so
that every figure in `results.json` can be recomputed and unit-tested from hand-made
curves. `flows/bench_compare.py` reads the runs out of their stores and calls `analyze`.

Definitions (they are the contract of `results.json`):

* **Curve** of a run: points (rollouts consumed before the evaluation, held-out accuracy)
  at round 0 (0 rollouts, the starting policy) and at every evaluation round. Rollouts
  are what the run paid for: dynamic sampling's discarded generations are included.
  Between evaluations the curve is linear.
* **Reference accuracy**: the mean round-0 accuracy over all runs. Every run starts from
  the same policy and evaluates it on the same held-out prompts (only the sampling seed
  differs), so this is the best estimate of the starting accuracy, and one reference
  gives every run the same absolute target.
* **Targets**: ``+0.10`` means reference + 0.10 (accuracy is a fraction in [0, 1]);
  ``0.60`` means the absolute level 0.60.
* **Rollouts to a target**: the first crossing of the curve, linearly interpolated
  between the last evaluation below the target and the first one at or above it
  (``method="interpolate"``, the main figure), or the rollouts at that first evaluation
  (``method="first-eval"``, an upper bound that depends on the evaluation frequency).
  A curve that starts at or above the target gives its first x (0). A run that never
  reaches a target gives ``None``; aggregates then report how many seeds reached it and
  give no mean that would silently drop the others (see `value_stats`).
* **AUC**: area under the curve from 0 to a common rollout budget (the smallest total
  over all runs, so every run covers it), divided by the budget: the mean held-out
  accuracy over that budget, in accuracy units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from insight.report import bench_power as bp

DEFAULT_TARGETS = ("+0.05", "+0.10", "+0.15")
DEFAULT_MAIN_TARGET = "+0.10"


# ------------------------------------------------------------------------------------
# targets
# ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A held-out accuracy target: `value` above the reference, or an absolute level."""

    value: float
    relative: bool

    @property
    def label(self) -> str:
        # two decimals at least, more only when needed: +0.10, +0.075 (never rounded away)
        digits = f"{self.value:.4f}".rstrip("0")
        digits += "0" * max(0, 2 - len(digits.split(".")[1]))
        return f"+{digits}" if self.relative else digits

    def level(self, reference: float) -> float:
        return reference + self.value if self.relative else self.value


def parse_target(text: str | float | Target) -> Target:
    """``"+0.10"`` (relative to the reference accuracy) or ``"0.6"`` (absolute)."""
    if isinstance(text, Target):
        return text
    if isinstance(text, (int, float)):
        text = str(text)
    s = str(text).strip()
    relative = s.startswith("+")
    try:
        value = float(s[1:] if relative else s)
    except ValueError:
        raise ValueError(f"target {text!r}: expected '+0.10' (relative) or '0.6' (absolute)") \
            from None
    if not math.isfinite(value) or not (0.0 < value <= 1.0 if relative else 0.0 <= value <= 1.0):
        raise ValueError(f"target {text!r}: accuracy is a fraction, expected "
                         f"{'+0 < delta <= +1' if relative else '0 <= level <= 1'}")
    return Target(value, relative)


def parse_targets(text: str | Iterable) -> list[Target]:
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[Target] = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        t = parse_target(item)
        if t not in out:
            out.append(t)
    if not out:
        raise ValueError("no accuracy target given")
    return out


# ------------------------------------------------------------------------------------
# one curve
# ------------------------------------------------------------------------------------
def _check_curve(xs: Sequence[float], ys: Sequence[float]) -> None:
    if len(xs) != len(ys) or not xs:
        raise ValueError("a curve needs as many x as y values, at least one "
                         f"({len(xs)}, {len(ys)})")
    if any(b < a for a, b in zip(xs, xs[1:])):
        raise ValueError("curve x values (rollouts) must be non-decreasing")


def first_crossing(xs: Sequence[float], ys: Sequence[float], level: float,
                   method: str = "interpolate") -> float | None:
    """Rollouts at which the curve first reaches `level` (None if it never does)."""
    _check_curve(xs, ys)
    if method not in ("interpolate", "first-eval"):
        raise ValueError(f"unknown crossing method {method!r}")
    if ys[0] >= level:
        return float(xs[0])
    for i in range(1, len(xs)):
        if ys[i] >= level:
            if method == "first-eval":
                return float(xs[i])
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
            return float(x0 + (level - y0) / (y1 - y0) * (x1 - x0))  # y0 < level <= y1
    return None


def value_at(xs: Sequence[float], ys: Sequence[float], x: float) -> float | None:
    """The piecewise-linear curve at `x` (None outside [xs[0], xs[-1]])."""
    _check_curve(xs, ys)
    if x < xs[0] or x > xs[-1]:
        return None
    for i in range(1, len(xs)):
        if x <= xs[i]:
            x0, x1 = xs[i - 1], xs[i]
            if x1 == x0:
                return float(ys[i])
            return float(ys[i - 1] + (x - x0) / (x1 - x0) * (ys[i] - ys[i - 1]))
    return float(ys[-1])


def area_under_curve(xs: Sequence[float], ys: Sequence[float], budget: float,
                     normalize: bool = True) -> float | None:
    """Trapezoid area of the curve from xs[0] to `budget` (interpolated there); divided by
    the width when `normalize` (the mean accuracy over the budget). None when the curve
    stops short of the budget."""
    _check_curve(xs, ys)
    if budget <= xs[0] or budget > xs[-1]:
        return None
    area = 0.0
    for i in range(1, len(xs)):
        x0, x1 = xs[i - 1], min(xs[i], budget)
        if x1 > x0:
            y1 = value_at(xs, ys, x1)
            area += 0.5 * (ys[i - 1] + y1) * (x1 - x0)
        if xs[i] >= budget:
            break
    return area / (budget - xs[0]) if normalize else area


# ------------------------------------------------------------------------------------
# aggregation over seeds
# ------------------------------------------------------------------------------------
def value_stats(values: Sequence[float | None], censor_at: Sequence[float | None] | None = None
                ) -> dict:
    """Mean / sample std / min / max over seeds, honest about missing values.

    `mean` (and std, min, max) are None unless every seed has a value: a mean over the
    seeds that reached a target alone would flatter a selector that often fails. Then
    `mean_reached` is the mean over the seeds with a value, and, given `censor_at` (per
    seed, e.g. the run's total rollouts), `mean_lower_bound` counts a missing value as
    its censoring point: the true mean is at least that.
    """
    vals = [None if v is None else float(v) for v in values]
    got = [v for v in vals if v is not None]
    n, n_missing = len(vals), len(vals) - len(got)
    out = {"per_seed": vals, "n": n, "n_reached": len(got), "n_missing": n_missing,
           "mean": None, "std": None, "min": None, "max": None, "mean_reached": None}
    if got:
        out["mean_reached"] = sum(got) / len(got)
    if got and not n_missing:
        mean = sum(got) / n
        out.update(mean=mean, min=min(got), max=max(got),
                   std=(math.sqrt(sum((v - mean) ** 2 for v in got) / (n - 1)) if n > 1 else 0.0))
    if censor_at is not None:
        if len(censor_at) != n:
            raise ValueError("censor_at needs one value per seed")
        bounded = [v if v is not None else c for v, c in zip(vals, censor_at)]
        out["mean_lower_bound"] = (sum(bounded) / n if n and all(b is not None for b in bounded)
                                   else None)
    return out


def mean_curve(curves: Sequence[tuple[Sequence[float], Sequence[float]]]) -> dict:
    """Mean and min/max band of several curves on the union of their x points, up to
    the shortest curve's end (each curve linear between its points)."""
    if not curves:
        return {"x": [], "mean": [], "min": [], "max": []}
    end = min(xs[-1] for xs, _ in curves)
    start = max(xs[0] for xs, _ in curves)
    grid = sorted({float(x) for xs, _ in curves for x in xs if start <= x <= end})
    mean, lo, hi = [], [], []
    for x in grid:
        vals = [value_at(xs, ys, x) for xs, ys in curves]
        mean.append(sum(vals) / len(vals))
        lo.append(min(vals))
        hi.append(max(vals))
    return {"x": grid, "mean": mean, "min": lo, "max": hi}


# ------------------------------------------------------------------------------------
# runs -> results
# ------------------------------------------------------------------------------------
def run_curve(run: dict) -> tuple[list[float], list[float]]:
    """(rollouts, accuracy) of a run record's evaluations, round order."""
    evals = sorted(run["evals"], key=lambda e: e["round"])
    return [float(e["rollouts"]) for e in evals], [float(e["accuracy"]) for e in evals]


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _median(values: Iterable[float | None]) -> float | None:
    vals = sorted(float(v) for v in values if v is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else 0.5 * (vals[mid - 1] + vals[mid])


def spend_curves(run: dict) -> tuple[list[float], list[float], list[float]]:
    """(rollouts, rounds, informative groups), cumulative after each round from 0.

    An informative group is a generated group with 0 < s < k: the only kind that moves a
    GRPO update. Selection can save rollouts only by changing how many of these each
    rollout buys, so comparing selectors in these units tells "fewer informative groups
    were needed" apart from "each rollout bought more of them"."""
    k = run.get("k")
    xs, steps, useful = [0.0], [0.0], [0.0]
    for r in sorted(run.get("rounds", []), key=lambda r: r["round"]):
        if r["round"] < 1:
            continue
        share = r.get("zero_adv_share")
        groups = float(r["rollouts"]) / k if k else None
        xs.append(xs[-1] + float(r["rollouts"]))
        steps.append(float(r["round"]))
        useful.append(useful[-1] + groups * (1.0 - share)
                      if groups is not None and share is not None and useful[-1] is not None
                      else None)
    return xs, steps, useful


def _spent_at(curve: tuple[list[float], list[float]], x: float | None) -> float | None:
    xs, ys = curve
    if x is None or len(xs) < 2 or any(y is None for y in ys):
        return None
    return value_at(xs, ys, x)


def analyze_run(run: dict, levels: dict[str, float], budget: float | None) -> dict:
    """Every figure of one run. `run` is a run record (see `analyze`); `levels` maps a
    target label to its absolute accuracy level."""
    xs, ys = run_curve(run)
    rounds = [r for r in run.get("rounds", []) if r["round"] >= 1]
    final = max(run["evals"], key=lambda e: e["round"])
    out = {
        "selector": run["selector"], "seed": run["seed"], "run_dir": run.get("run_dir"),
        "rounds": max((r["round"] for r in rounds), default=0),
        "rollouts_consumed": xs[-1] if rounds else 0.0,
        "initial_accuracy": ys[0],
        "final_accuracy": final["accuracy"],
        "final_greedy_accuracy": final.get("greedy_accuracy"),
        "final_round": final["round"],
        "accuracy_at_budget": value_at(xs, ys, budget) if budget else None,
        "auc": area_under_curve(xs, ys, budget) if budget else None,
        "rollouts_to_target": {lab: first_crossing(xs, ys, lvl) for lab, lvl in levels.items()},
        "rollouts_to_target_first_eval": {lab: first_crossing(xs, ys, lvl, "first-eval")
                                          for lab, lvl in levels.items()},
        "zero_adv_share": _mean(r.get("zero_adv_share") for r in rounds),
        "all_fail_share": _mean(r.get("all_fail_share") for r in rounds),
        "all_success_share": _mean(r.get("all_success_share") for r in rounds),
        "extra_rollouts": sum(float(r.get("extra_rollouts") or 0.0) for r in rounds),
        # median: the first round also pays one-time JIT compilation of the scorer
        "seconds_select_per_round": _median(r.get("seconds_select") for r in rounds),
        "seconds_select_mean": _mean(r.get("seconds_select") for r in rounds),
        "seconds_per_round": _mean(r.get("seconds_round") for r in rounds),
        "wall_seconds": run.get("wall_seconds"),
        "curve": [[x, y] for x, y in zip(xs, ys)],
    }
    spent, steps, useful = spend_curves(run)
    out["rounds_to_target"] = {lab: _spent_at((spent, steps), x)
                               for lab, x in out["rollouts_to_target"].items()}
    out["informative_groups_to_target"] = {lab: _spent_at((spent, useful), x)
                                           for lab, x in out["rollouts_to_target"].items()}
    return out


def groups_by_difficulty(runs: Sequence[dict]) -> list[dict]:
    """Per prompt difficulty level, mean over runs of the share of generated groups that
    went to it and of its all-fail / all-success shares: where the rollouts went.
    Empty when the runs carry no ``groups_by_difficulty`` (a dataset without levels)."""
    levels: dict = {}
    for r in runs:
        rows = r.get("groups_by_difficulty") or []
        total = sum(x["groups"] for x in rows)
        for x in rows:
            lv = levels.setdefault(x["difficulty"], {"share": [], "all_fail": [],
                                                     "all_success": [], "success_rate": []})
            lv["share"].append(x["groups"] / total if total else 0.0)
            for key in ("all_fail", "all_success", "success_rate"):
                lv[key].append(x[key])
    return [{"difficulty": d, "runs": len(v["share"]),
             **{key: sum(vals) / len(vals) for key, vals in v.items()}}
            for d, v in sorted(levels.items())]


def analyze(runs: Sequence[dict], targets: Sequence[str | Target] = DEFAULT_TARGETS,
            main_target: str | Target = DEFAULT_MAIN_TARGET, baseline: str | None = "uniform",
            selectors: Sequence[str] | None = None, *, ceiling: str = "dynamic-sampling",
            ci_level: float = bp.DEFAULT_LEVEL, n_boot: int = bp.DEFAULT_N_BOOT,
            boot_seed: int = bp.DEFAULT_BOOT_SEED) -> dict:
    """Aggregate finished runs per selector.

    A run record is a dict: ``selector``, ``seed``, ``evals`` (list of ``{"round",
    "rollouts", "accuracy", "greedy_accuracy"}``, round 0 included, ``rollouts`` consumed
    before that evaluation), ``rounds`` (list of per-round metrics with ``round``,
    ``rollouts``, ``zero_adv_share``, ``all_fail_share``, ``all_success_share``,
    ``extra_rollouts``, ``seconds_select``, ``seconds_round``), optional ``run_dir`` and
    ``wall_seconds``.

    Bootstrap intervals over seeds (`insight.report.bench_power`, a missed target
    censored at the run's budget) on rollouts to the main target, AUC, the speedup over
    `baseline` and MoPPS, and the share of the per-step ceiling (`ceiling`'s rounds).
    """
    if not runs:
        raise ValueError("no finished runs to analyze")
    targets = parse_targets(targets)
    main = parse_target(main_target)
    if main not in targets:
        targets = [main, *targets]
    initials = [run_curve(r)[1][0] for r in runs]
    reference = sum(initials) / len(initials)
    levels = {t.label: t.level(reference) for t in targets}
    budget = min(run_curve(r)[0][-1] for r in runs)
    budget = budget if budget > 0 else None

    per_run = [analyze_run(r, levels, budget) for r in runs]
    order = list(selectors) if selectors else []
    order += [r["selector"] for r in per_run if r["selector"] not in order]
    by_sel = {s: sorted((r for r in per_run if r["selector"] == s), key=lambda r: r["seed"])
              for s in order}
    by_sel = {s: rs for s, rs in by_sel.items() if rs}

    results: dict = {}
    for sel, rs in by_sel.items():
        consumed = [r["rollouts_consumed"] for r in rs]
        entry = {
            "seeds": [r["seed"] for r in rs],
            "n_runs": len(rs),
            "rollouts_consumed": value_stats(consumed),
            "extra_rollouts": value_stats([r["extra_rollouts"] for r in rs]),
            "rollouts_to_target_all": {
                lab: value_stats([r["rollouts_to_target"][lab] for r in rs], censor_at=consumed)
                for lab in levels},
            "rollouts_to_target_first_eval": {
                lab: value_stats([r["rollouts_to_target_first_eval"][lab] for r in rs],
                                 censor_at=consumed)
                for lab in levels},
            "rounds_to_target": {lab: value_stats([r["rounds_to_target"][lab] for r in rs])
                                 for lab in levels},
            "informative_groups_to_target": {
                lab: value_stats([r["informative_groups_to_target"][lab] for r in rs])
                for lab in levels},
            "initial_accuracy": value_stats([r["initial_accuracy"] for r in rs]),
            "final_accuracy": value_stats([r["final_accuracy"] for r in rs]),
            "final_greedy_accuracy": value_stats([r["final_greedy_accuracy"] for r in rs]),
            "accuracy_at_budget": value_stats([r["accuracy_at_budget"] for r in rs]),
            "auc": value_stats([r["auc"] for r in rs]),
            "zero_adv_share": value_stats([r["zero_adv_share"] for r in rs]),
            "all_fail_share": value_stats([r["all_fail_share"] for r in rs]),
            "all_success_share": value_stats([r["all_success_share"] for r in rs]),
            "seconds_select_per_round": value_stats([r["seconds_select_per_round"] for r in rs]),
            "seconds_select_mean": value_stats([r["seconds_select_mean"] for r in rs]),
            "seconds_per_round": value_stats([r["seconds_per_round"] for r in rs]),
            "wall_seconds": value_stats([r["wall_seconds"] for r in rs]),
        }
        main_stats = entry["rollouts_to_target_all"][main.label]
        entry["rollouts_to_target"] = main_stats["mean"]
        entry["rollouts_to_target_per_seed"] = main_stats["per_seed"]
        entry["rollouts_to_target_reached"] = main_stats["n_reached"]
        sel_runs = [r for r in runs if r["selector"] == sel]
        entry["curve"] = mean_curve([run_curve(r) for r in sel_runs])
        entry["zero_adv_by_round"] = _mean_by_round(sel_runs, "zero_adv_share")
        entry["groups_by_difficulty"] = groups_by_difficulty(sel_runs)
        results[sel] = entry

    base = results.get(baseline) if baseline else None
    for sel, entry in results.items():
        entry["speedup_vs_baseline"] = _ratio(base["rollouts_to_target"] if base else None,
                                              entry["rollouts_to_target"])

    intervals = bp.add_intervals(results, by_sel, main.label, baseline, ceiling,
                                 level=ci_level, n_boot=n_boot, seed=boot_seed)

    seeds0: dict = {}
    for r in per_run:
        seeds0.setdefault(r["seed"], set()).add(round(r["initial_accuracy"], 9))
    return {
        "reference_accuracy": reference,
        "targets": {t.label: {"level": levels[t.label], "relative": t.relative,
                              "value": t.value} for t in targets},
        "main_target": main.label,
        "main_target_level": levels[main.label],
        "crossing_method": "interpolate (first crossing, linear between evaluations)",
        "intervals": intervals,
        "budget_rollouts": budget,
        "baseline": baseline if base else None,
        "selectors": results,
        "runs": per_run,
        # Same seed, same policy, same held-out set: round-0 accuracy must agree across
        # selectors; a mismatch means the runs did not share their setup.
        "setup_consistent": all(len(v) == 1 for v in seeds0.values()),
    }


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


def _mean_by_round(runs: Sequence[dict], key: str) -> dict:
    """Mean (and min/max) of a per-round metric over seeds, for rounds every run has."""
    per: dict[int, list[float]] = {}
    for run in runs:
        for r in run.get("rounds", []):
            if r["round"] >= 1 and r.get(key) is not None:
                per.setdefault(int(r["round"]), []).append(float(r[key]))
    rounds = [k for k in sorted(per) if len(per[k]) == len(runs)]
    return {"round": rounds, "mean": [sum(per[k]) / len(per[k]) for k in rounds],
            "min": [min(per[k]) for k in rounds], "max": [max(per[k]) for k in rounds]}


# ------------------------------------------------------------------------------------
# rendering
# ------------------------------------------------------------------------------------
def _spend_table(sels: dict, labels: list[str]) -> list[str]:
    """Per target, optimizer steps and informative groups spent to reach it (mean over
    the seeds that reached it, with their count)."""
    def cell(st: dict) -> str:
        if not st["n_reached"]:
            return "—"
        return f"{_fmt(st['mean_reached'], ',.0f')} ({st['n_reached']}/{st['n']})"

    head = ["selector"] + [f"{what} to {lab}" for lab in labels
                           for what in ("rounds", "informative groups")]
    lines = ["", "What reaching a target cost, in optimizer steps (rounds) and informative "
                 "groups (0 < s < k; the only ones a GRPO update learns from): mean over the "
                 "seeds that reached it (how many).", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for sel, e in sels.items():
        cells = [cell(e[key][lab]) for lab in labels
                 for key in ("rounds_to_target", "informative_groups_to_target")]
        lines.append(f"| `{sel}` | " + " | ".join(cells) + " |")
    return lines


def _difficulty_table(sels: dict) -> list[str]:
    """Share of generated groups per prompt difficulty level (all-fail share in it)."""
    levels = sorted({x["difficulty"] for e in sels.values()
                     for x in e.get("groups_by_difficulty", [])})
    if not levels:
        return []
    lines = ["", "Where the rollouts went: share of generated groups per prompt difficulty "
                 "level, mean over seeds (in brackets: the share of that level's groups that "
                 "were all-fail / all-success).", "",
             "| selector | " + " | ".join(f"level {d}" for d in levels) + " |",
             "|" + "|".join("---" for _ in range(len(levels) + 1)) + "|"]
    for sel, e in sels.items():
        got = {x["difficulty"]: x for x in e.get("groups_by_difficulty", [])}
        cells = [f"{got[d]['share']:.2f} ({got[d]['all_fail']:.2f} / "
                 f"{got[d]['all_success']:.2f})" if d in got else "—" for d in levels]
        lines.append(f"| `{sel}` | " + " | ".join(cells) + " |")
    return lines


def _fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def _cell(stats: dict, spec: str, scale: float = 1.0) -> str:
    """'mean ± std [min–max]', or for a target some seeds missed: 'n/N reached: ≥ bound'."""
    s = lambda v: None if v is None else v * scale  # noqa: E731
    if stats["n"] == 0:
        return "—"
    if stats["mean"] is not None:
        if stats["n"] == 1:
            return _fmt(s(stats["mean"]), spec)
        return (f"{_fmt(s(stats['mean']), spec)} ± {_fmt(s(stats['std']), spec)} "
                f"[{_fmt(s(stats['min']), spec)}–{_fmt(s(stats['max']), spec)}]")
    if stats["n_reached"] == 0:
        return f"not reached (0/{stats['n']})"
    bound = stats.get("mean_lower_bound")
    tail = f", mean ≥ {_fmt(s(bound), spec)}" if bound is not None else ""
    return f"{stats['n_reached']}/{stats['n']} reached{tail}"


def to_markdown(res: dict, title: str = "Selector comparison") -> str:
    main = res["main_target"]
    lines = [f"# {title}", ""]
    lines.append(
        f"Reference (initial) held-out accuracy {res['reference_accuracy']:.3f}; main target "
        f"{main} = accuracy {res['main_target_level']:.3f}. Rollouts to a target: first "
        f"crossing of the accuracy-vs-rollouts curve, interpolated linearly between "
        f"evaluations. Cells: mean ± sample std [min–max] over seeds; a target missed by "
        f"some seeds shows how many reached it and a lower bound of the mean (a missed "
        f"run counted at its total rollouts). AUC: mean held-out accuracy over the first "
        f"{_fmt(res['budget_rollouts'], ',.0f')} rollouts (common budget). Rollouts consumed "
        f"include discarded generations (dynamic sampling); the zero-advantage share is "
        f"over every generated group.")
    lines.append("")
    sels = res["selectors"]
    other = [lab for lab in res["targets"] if lab != main]
    discarded = any((e["extra_rollouts"]["max"] or 0) > 0 for e in sels.values())
    head = (["selector", "seeds", f"rollouts to {main}"]
            + ([f"speedup vs {res['baseline']}"] if res.get("baseline") else [])
            + [f"rollouts to {lab}" for lab in other]
            + ["final acc", "acc @ budget", "AUC", "rollouts consumed"]
            + (["of which discarded"] if discarded else [])
            + ["zero-adv share", "all-fail / all-success", "select time/round (median)"])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" for _ in head) + "|")
    for sel, e in sels.items():
        row = [f"`{sel}`", str(e["n_runs"]), _cell(e["rollouts_to_target_all"][main], ",.0f")]
        if res.get("baseline"):
            row.append(_fmt(e["speedup_vs_baseline"], ".2f") + ("x" if e["speedup_vs_baseline"]
                                                                 is not None else ""))
        row += [_cell(e["rollouts_to_target_all"][lab], ",.0f") for lab in other]
        row += [_cell(e["final_accuracy"], ".3f"), _cell(e["accuracy_at_budget"], ".3f"),
                _cell(e["auc"], ".3f"), _cell(e["rollouts_consumed"], ",.0f")]
        row += [_cell(e["extra_rollouts"], ",.0f")] if discarded else []
        row += [_cell(e["zero_adv_share"], ".2f"),
                f"{_fmt(e['all_fail_share']['mean'], '.2f')} / "
                f"{_fmt(e['all_success_share']['mean'], '.2f')}",
                _cell(e["seconds_select_per_round"], ".1f", scale=1000.0) + " ms"]
        lines.append("| " + " | ".join(row) + " |")
    lines += _spend_table(sels, [main, *other])
    lines += _difficulty_table(sels)
    lines += bp.intervals_table(res)
    lines.append("")
    lines.append("Per seed, rollouts to the main target (— = not reached within the run):")
    lines.append("")
    for sel, e in sels.items():
        vals = ", ".join(f"s{seed}: {_fmt(v, ',.0f')}" for seed, v in
                         zip(e["seeds"], e["rollouts_to_target_per_seed"]))
        lines.append(f"- `{sel}`: {vals}")
    if not res.get("setup_consistent", True):
        lines += ["", "**Warning**: round-0 accuracy differs between selectors of the same "
                      "seed; the runs did not share their setup."]
    return "\n".join(lines) + "\n"


def plot_curves(res: dict, path, title: str = "Held-out accuracy vs rollouts") -> None:
    """Two panels: accuracy vs rollouts (mean over seeds, min–max band, target line) and
    the zero-advantage share per round. matplotlib is imported here only."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax, az) = plt.subplots(1, 2, figsize=(13, 4.8))
    for sel, e in res["selectors"].items():
        c = e["curve"]
        if not c["x"]:
            continue
        (line,) = ax.plot(c["x"], c["mean"], marker=".", label=f"{sel} (n={e['n_runs']})")
        if e["n_runs"] > 1:
            ax.fill_between(c["x"], c["min"], c["max"], color=line.get_color(), alpha=0.15)
        z = e["zero_adv_by_round"]
        if z["round"]:
            az.plot(z["round"], z["mean"], color=line.get_color(), label=sel)
            if e["n_runs"] > 1:
                az.fill_between(z["round"], z["min"], z["max"], color=line.get_color(), alpha=0.12)
    ax.axhline(res["main_target_level"], color="grey", ls="--", lw=1,
               label=f"target {res['main_target']} ({res['main_target_level']:.3f})")
    if res.get("budget_rollouts"):
        ax.axvline(res["budget_rollouts"], color="grey", ls=":", lw=1, label="common budget")
    ax.set_xlabel("rollouts consumed")
    ax.set_ylabel("held-out accuracy (avg@n)")
    ax.set_title(title + " (mean, min–max over seeds)")
    ax.legend(fontsize=8)
    az.set_xlabel("round")
    az.set_ylabel("share of zero-advantage groups")
    az.set_ylim(-0.02, 1.02)
    az.set_title("zero-advantage share per round (generated groups)")
    az.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
