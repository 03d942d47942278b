"""Confidence intervals for a selector comparison: how sure the seeds let us be.

A comparison over a handful of seeds gives one mean per selector; whether InSight's
1.3x over uniform is a result or a lucky draw of seeds is the question this module
answers, with a percentile bootstrap over seeds. Pure numpy over plain lists, so every
interval in `results.json` is reproducible from the per-seed values and a seed.

Definitions (the contract of the ``*_ci`` entries of `results.json`):

* **Resampling**: each selector's seeds are resampled with replacement, independently
  of the other selectors' (the runs of different selectors share a seed number but
  diverge from the first selection, so they are not paired samples). One set of
  resampled means per selector serves every statistic, so a ratio and a ceiling share
  computed from the same draws are consistent with each other.
* **Interval**: the (1 - level) / 2 and (1 + level) / 2 percentiles of the statistic
  over the resamples (percentile bootstrap, numpy's linear interpolation).
* **A seed that misses the target** is *censored at its budget*: it counts as if it had
  reached the target with the last rollout (or round) it ran. Its true value is larger,
  so a mean with censored seeds is a lower bound, a ratio whose numerator has censored
  seeds a lower bound, and so on; every entry reports how many seeds were censored,
  so a reader can tell a measured value from a bound.
* **Ceiling share** of a selector: (R_uniform - R_selector) / (R_uniform - R_ceiling) in
  rounds (optimizer steps) to the main target, R the mean over seeds, and the ceiling the
  per-step limit of selection (dynamic sampling, whose every step trains on informative
  groups only). 1 = as few steps as the ceiling, 0 = as many as uniform. A resample in
  which the ceiling is not below uniform has no share; such draws are left out of the
  interval and counted (``undefined_draws``): if they are many, the setting did not
  resolve a ceiling and the share means little.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

DEFAULT_N_BOOT = 4000
DEFAULT_LEVEL = 0.95
DEFAULT_BOOT_SEED = 0


def censored(values: Sequence[float | None], budgets: Sequence[float]) -> tuple[np.ndarray, int]:
    """Per-seed values with a missing one (target not reached) replaced by its budget;
    and how many were replaced."""
    if len(values) != len(budgets):
        raise ValueError(f"need one budget per seed ({len(values)} values, {len(budgets)} budgets)")
    filled = [float(b) if v is None else float(v) for v, b in zip(values, budgets)]
    return np.asarray(filled, dtype=float), sum(v is None for v in values)


def resampled_means(samples: Mapping[str, Sequence[float]], n_boot: int = DEFAULT_N_BOOT,
                    seed: int = DEFAULT_BOOT_SEED) -> dict[str, np.ndarray]:
    """For each named sample, `n_boot` means of a with-replacement resample of its values
    (samples resampled independently, in sorted name order from one generator, so the
    draws do not depend on the dict's order)."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(samples):
        vals = np.asarray(samples[name], dtype=float)
        if vals.size == 0:
            raise ValueError(f"sample {name!r} is empty")
        idx = rng.integers(0, vals.size, size=(n_boot, vals.size))
        out[name] = vals[idx].mean(axis=1)
    return out


def percentile_interval(draws: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float, float, int]:
    """(low, high) percentile interval of the finite draws, and how many were not finite."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    finite = draws[np.isfinite(draws)]
    undefined = int(draws.size - finite.size)
    if finite.size == 0:
        return float("nan"), float("nan"), undefined
    lo, hi = np.percentile(finite, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi), undefined


def _interval_entry(point: float | None, draws: np.ndarray, level: float, n_censored: int,
                    n: int) -> dict:
    lo, hi, undefined = percentile_interval(draws, level)
    ok = point is not None and np.isfinite(lo)
    return {"value": point, "ci_low": lo if ok else None, "ci_high": hi if ok else None,
            "level": level, "n_seeds": n, "n_censored": n_censored,
            "undefined_draws": undefined, "n_boot": int(draws.size)}


def mean_ci(values: Sequence[float], *, n_censored: int = 0, level: float = DEFAULT_LEVEL,
            n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_BOOT_SEED) -> dict:
    """Mean over seeds with its bootstrap interval (`n_censored` is only reported)."""
    draws = resampled_means({"x": values}, n_boot, seed)["x"]
    return _interval_entry(float(np.mean(values)), draws, level, n_censored, len(values))


def _safe_div(num, den):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def ratio(num, den):
    """num / den, NaN where den <= 0 (works on floats and on arrays of draws)."""
    return _safe_div(np.asarray(num, dtype=float), np.asarray(den, dtype=float))


def ceiling_share(r_baseline, r_selector, r_ceiling):
    """(R_baseline - R_selector) / (R_baseline - R_ceiling); NaN where the ceiling is not
    below the baseline (no room to share). Floats or arrays of draws."""
    base = np.asarray(r_baseline, dtype=float)
    return _safe_div(base - np.asarray(r_selector, dtype=float),
                     base - np.asarray(r_ceiling, dtype=float))


def _point(fn: Callable, *means: float) -> float | None:
    v = float(fn(*means))
    return v if np.isfinite(v) else None


def comparison_intervals(rollouts: Mapping[str, Sequence[float]],
                         rounds: Mapping[str, Sequence[float]],
                         censored_counts: Mapping[str, tuple[int, int]],
                         auc: Mapping[str, Sequence[float]] | None = None, *,
                         baselines: Sequence[str] = ("uniform", "mopps"),
                         ceiling: str = "dynamic-sampling", ceiling_baseline: str = "uniform",
                         level: float = DEFAULT_LEVEL, n_boot: int = DEFAULT_N_BOOT,
                         seed: int = DEFAULT_BOOT_SEED) -> dict[str, dict]:
    """Every interval of a comparison, per selector.

    `rollouts` and `rounds`: per selector, per-seed rollouts and rounds to the main
    target, already censored (see `censored`); `censored_counts`: per selector, how many
    seeds were censored in (rollouts, rounds). `auc`: per selector, per-seed AUC (never
    censored). Returns per selector ``rollouts_to_target_ci``, ``auc_ci``,
    ``speedup_vs`` (per baseline present: R_baseline / R_selector in rollouts, > 1 means
    fewer rollouts than the baseline) and ``ceiling_share`` (when both the ceiling and its
    baseline selector were run)."""
    r_draws = resampled_means(rollouts, n_boot, seed)
    s_draws = resampled_means(rounds, n_boot, seed + 1)
    a_draws = resampled_means(auc, n_boot, seed + 2) if auc else {}
    r_mean = {s: float(np.mean(v)) for s, v in rollouts.items()}
    s_mean = {s: float(np.mean(v)) for s, v in rounds.items()}
    out: dict[str, dict] = {}
    for sel in rollouts:
        n_r, n_s = censored_counts.get(sel, (0, 0))
        entry = {"rollouts_to_target_ci": _interval_entry(
            r_mean[sel], r_draws[sel], level, n_r, len(rollouts[sel]))}
        if sel in a_draws:
            entry["auc_ci"] = _interval_entry(float(np.mean(auc[sel])), a_draws[sel], level,
                                              0, len(auc[sel]))
        entry["speedup_vs"] = {}
        for base in baselines:
            if base in rollouts and base != sel:
                n_base = censored_counts.get(base, (0, 0))[0]
                e = _interval_entry(_point(ratio, r_mean[base], r_mean[sel]),
                                    ratio(r_draws[base], r_draws[sel]), level, n_r + n_base,
                                    len(rollouts[sel]))
                e["censored"] = {"selector": n_r, base: n_base}
                entry["speedup_vs"][base] = e
        if ceiling in rounds and ceiling_baseline in rounds:
            e = _interval_entry(
                _point(ceiling_share, s_mean[ceiling_baseline], s_mean[sel], s_mean[ceiling]),
                ceiling_share(s_draws[ceiling_baseline], s_draws[sel], s_draws[ceiling]),
                level, n_s, len(rounds[sel]))
            e["censored"] = {"selector": n_s,
                             ceiling_baseline: censored_counts.get(ceiling_baseline, (0, 0))[1],
                             ceiling: censored_counts.get(ceiling, (0, 0))[1]}
            e["ceiling_ratio"] = _point(ratio, s_mean[ceiling_baseline], s_mean[ceiling])
            entry["ceiling_share"] = e
        out[sel] = entry
    return out


def add_intervals(results: dict, by_sel: Mapping[str, Sequence[dict]], main: str,
                  baseline: str | None, ceiling: str, *, level: float = DEFAULT_LEVEL,
                  n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_BOOT_SEED) -> dict:
    """Add each selector's intervals to its entry of `results` (`bench_analysis.analyze`'s
    per-selector dict), from its per-run analyses `by_sel`; returns the method's note."""
    rollouts, rounds, counts, auc = {}, {}, {}, {}
    for sel, rs in by_sel.items():
        rollouts[sel], n_r = censored([r["rollouts_to_target"][main] for r in rs],
                                      [r["rollouts_consumed"] for r in rs])
        rounds[sel], n_s = censored([r["rounds_to_target"][main] for r in rs],
                                    [r["rounds"] for r in rs])
        counts[sel] = (n_r, n_s)
        if all(r["auc"] is not None for r in rs):
            auc[sel] = [r["auc"] for r in rs]
    bases = [b for b in (baseline, "mopps") if b]
    got = comparison_intervals(rollouts, rounds, counts, auc, baselines=bases, ceiling=ceiling,
                               ceiling_baseline=baseline or "uniform", level=level,
                               n_boot=n_boot, seed=seed)
    for sel, extra in got.items():
        results[sel].update(extra)
    return {"method": "percentile bootstrap over seeds, each selector's seeds resampled "
                      "independently", "level": level, "n_boot": n_boot, "seed": seed,
            "missed_target": "censored at the run's budget (its rollouts consumed or rounds "
                             "run): a value with censored seeds is a bound (n_censored)",
            "ceiling": ceiling, "ceiling_baseline": baseline or "uniform"}


def ci_cell(e: dict | None, spec: str, suffix: str = "") -> str:
    """A markdown cell: the value, its interval and how many seeds were censored."""
    if not e or e.get("value") is None:
        return "—"
    text = format(e["value"], spec) + suffix
    if e.get("ci_low") is not None:
        text += f" [{format(e['ci_low'], spec)}, {format(e['ci_high'], spec)}]"
    if e.get("n_censored"):
        text += f" ({e['n_censored']} censored)"
    return text


def intervals_table(res: dict) -> list[str]:
    """Markdown lines: each selector's main figures with their bootstrap intervals."""
    note = res.get("intervals")
    sels = res["selectors"]
    if not note or not any("rollouts_to_target_ci" in e for e in sels.values()):
        return []
    bases = sorted({b for e in sels.values() for b in e.get("speedup_vs", {})},
                   key=lambda b: (b != res.get("baseline"), b))
    head = (["selector", f"rollouts to {res['main_target']}"]
            + [f"speedup vs {b}" for b in bases]
            + [f"ceiling share (rounds; {note['ceiling']} = 1)", "AUC"])
    lines = ["", f"Bootstrap {note['level']:.0%} intervals over seeds (percentile, "
                 f"{note['n_boot']:,} resamples, each selector's seeds resampled "
                 f"independently). A seed that missed the main target is censored at its "
                 f"budget (its rollouts or rounds run) and counted: a figure with censored "
                 f"seeds is a bound (rollouts: a lower bound).", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for sel, e in sels.items():
        row = [f"`{sel}`", ci_cell(e.get("rollouts_to_target_ci"), ",.0f")]
        row += [ci_cell(e.get("speedup_vs", {}).get(b), ".2f", "x") for b in bases]
        row += [ci_cell(e.get("ceiling_share"), ".2f"), ci_cell(e.get("auc_ci"), ".3f")]
        lines.append("| " + " | ".join(row) + " |")
    return lines
