"""SIMULATION sweeps: every variant on every seed, their summary, and the files written.

THIS IS A SIMULATION, NOT A MEASUREMENT (see `insight.report.simulate`, the toy model and one
run). This module runs that model over a grid of selector configurations and seeds
(`expand_grid`, `sweep`), aggregates the runs per variant with speedups against uniform
(`summarize`), and writes what `insight bench simulate` leaves behind: a Markdown table
(`results_table`), simulation.json/.md/.png (`write_outputs`, `plot`). Every output
carries the SIMULATION label.
"""

from __future__ import annotations

import itertools
import json
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from insight.selection.registry import get as selector_spec, parse_selector_config
from insight.report.simulate import (DISCLAIMER, LABEL, POSTERIOR_KEYS, SimConfig, Variant,
                              posterior_params, run_simulation)


# --------------------------------------------------------------------------- sweeps
def expand_grid(selectors: Sequence[str], grid: dict[str, Sequence[Any]] | None = None,
                base: dict[str, dict[str, Any]] | None = None) -> list[Variant]:
    """Variants for each selector type x the grid values that apply to it.

    A grid key applies to a selector when it is a field of that selector's config (e.g.
    gamma, sigma, pool_ratio, weight, temperature) or a posterior key (lam, a0, b0, decay,
    prior) and the selector reads the posterior. Keys that apply to no selector are an
    error (a typo must not silently sweep nothing). `base` gives fixed fields per type.
    """
    grid = {k: list(v) for k, v in (grid or {}).items() if v is not None and len(v)}
    used: set[str] = set()
    variants: list[Variant] = []
    for sel_type in selectors:
        fixed = dict((base or {}).get(sel_type, {}))
        fields = set(type(parse_selector_config({"type": sel_type, **fixed})).model_fields)
        keys = []
        for key in grid:
            if key in POSTERIOR_KEYS:
                if selector_spec(sel_type).uses_posterior:
                    keys.append(key)
            elif key in fields and key != "type":
                keys.append(key)
        used.update(keys)
        for combo in itertools.product(*(grid[k_] for k_ in keys)):
            sel = {"type": sel_type, **fixed}
            postp: dict[str, Any] = {}
            for key, val in zip(keys, combo):
                (postp if key in POSTERIOR_KEYS else sel)[key] = val
            parse_selector_config(sel)  # fail fast, naming the field
            posterior_params(Variant(sel, postp))
            variants.append(Variant(sel, postp))
    unused = set(grid) - used
    if unused:
        raise ValueError(f"grid key(s) {sorted(unused)} apply to none of the selectors "
                         f"{list(selectors)}")
    return variants


def _run_job(job):
    sim, variant, seed = job
    return run_simulation(sim, variant, seed)


def sweep(sim: SimConfig, variants: Sequence[Variant], seeds: Iterable[int], *,
          workers: int = 1, progress=None) -> dict[str, Any]:
    """Run every variant on every seed. Deterministic whatever `workers` is. `progress`,
    if given, is called with (done, total, run_result) after each run."""
    seeds = list(seeds)
    jobs = [(sim, v, s) for v in variants for s in seeds]
    runs: list[dict] = []
    t0 = time.perf_counter()
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for i, res in enumerate(pool.map(_run_job, jobs, chunksize=1)):
                runs.append(res)
                if progress:
                    progress(i + 1, len(jobs), res)
    else:
        for i, job in enumerate(jobs):
            runs.append(_run_job(job))
            if progress:
                progress(i + 1, len(jobs), runs[-1])
    return {"label": LABEL, "disclaimer": DISCLAIMER, "sim": _sim_dict(sim),
            "seeds": seeds, "variants": [v.name for v in variants], "runs": runs,
            "aggregate": summarize(runs), "seconds": time.perf_counter() - t0}


def _sim_dict(sim: SimConfig) -> dict[str, Any]:
    d = asdict(sim)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def summarize(runs: Sequence[dict], baseline: str = "uniform") -> list[dict[str, Any]]:
    """Per variant, over seeds: final and mean accuracy, zero-advantage share, rollouts to
    each target (mean over the seeds that reached it, and how many did), and the speedup
    against the baseline selector type = baseline rollouts / variant rollouts, as the
    geometric mean of per-seed ratios over the seeds where both reached the target."""
    by_variant: dict[str, list[dict]] = {}
    for r in runs:
        by_variant.setdefault(r["variant"], []).append(r)
    base_runs = [r for r in runs if r["type"] == baseline]
    # speedups need exactly one baseline variant (one run per seed)
    one_base = len({r["variant"] for r in base_runs}) == 1
    base_by_seed = {r["seed"]: r for r in base_runs} if one_base else {}
    out = []
    for name, rs in by_variant.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        sm = [r["summary"] for r in rs]
        n_t = len(sm[0]["rollouts_to_target"])
        row: dict[str, Any] = {
            "variant": name, "type": rs[0]["type"], "seeds": len(rs),
            "final_accuracy": _mean_sd([s["final_accuracy"] for s in sm]),
            "mean_accuracy": _mean_sd([s["mean_accuracy"] for s in sm]),
            "initial_accuracy": _mean_sd([s["initial_accuracy"] for s in sm]),
            "zero_adv_share": _mean_sd([s["zero_adv_share"] for s in sm
                                        if s["zero_adv_share"] is not None]),
            "extra_rollouts": _mean_sd([s["extra_rollouts"] for s in sm]),
            "signal_per_1k_rollouts": _mean_sd([s["signal_per_1k_rollouts"] for s in sm]),
            "prompts_touched": _mean_sd([s["prompts_touched"] for s in sm]),
            "targets": [], "select_seconds": float(sum(s["select_seconds"] for s in sm)),
        }
        for t in range(n_t):
            vals = [s["rollouts_to_target"][t] for s in sm]
            hit = [v for v in vals if v is not None]
            entry = {"gain_or_target": (None if not sm else sm[0]["targets"][t]),
                     "reached": f"{len(hit)}/{len(vals)}",
                     "rollouts": _mean_sd(hit) if hit else None, "speedup": None}
            ratios = []
            for r in rs:
                b = base_by_seed.get(r["seed"])
                if b is None:
                    continue
                bv, v = b["summary"]["rollouts_to_target"][t], r["summary"]["rollouts_to_target"][t]
                if bv is not None and v is not None and v > 0:
                    ratios.append(bv / v)
            if ratios:
                entry["speedup"] = float(np.exp(np.mean(np.log(ratios))))
                entry["speedup_seeds"] = len(ratios)
            row["targets"].append(entry)
        out.append(row)
    return out


def _mean_sd(vals: Sequence[float]) -> dict[str, float] | None:
    if not len(vals):
        return None
    v = np.asarray(vals, dtype=float)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


# --------------------------------------------------------------------------- outputs
def results_table(result: dict[str, Any]) -> str:
    """Markdown table of the aggregate (one row per variant)."""
    agg = result["aggregate"]
    sim = result["sim"]
    gains = sim["targets"] if sim.get("targets") else [f"+{g:g}" for g in sim["target_gains"]]
    head = ["variant", "final acc", "mean acc", "zero-adv share", "extra rollouts",
            "signal / 1k rollouts", "prompts touched"]
    head += [f"rollouts to {g} (reached) / speedup vs uniform" for g in gains]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in agg:
        cells = [row["variant"], _pm(row["final_accuracy"], 3), _pm(row["mean_accuracy"], 3),
                 _pm(row["zero_adv_share"], 2), _pm(row["extra_rollouts"], 0),
                 _pm(row["signal_per_1k_rollouts"], 1), _pm(row["prompts_touched"], 0)]
        for t in row["targets"]:
            if t["rollouts"] is None:
                cells.append(f"never ({t['reached']})")
            else:
                sp = f" / {t['speedup']:.2f}x" if t["speedup"] is not None else ""
                cells.append(f"{t['rollouts']['mean']:,.0f} ({t['reached']}){sp}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pm(ms: dict | None, digits: int) -> str:
    if ms is None:
        return "-"
    return f"{ms['mean']:.{digits}f} ± {ms['sd']:.{digits}f}"


def write_outputs(result: dict[str, Any], out_dir: str | Path, *,
                  command: str = "") -> dict[str, Path]:
    """simulation.json (everything), simulation.md (table + model summary) and
    simulation.png (held-out accuracy and zero-advantage share vs rollouts, mean and
    min-max band over seeds). All three say SIMULATION."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "simulation.json", "md": out / "simulation.md",
             "png": out / "simulation.png"}
    paths["json"].write_text(json.dumps(result, indent=1, default=_json_default))
    sim = result["sim"]
    md = [f"# {LABEL}: selector sweep on a toy model of RLVR learning dynamics", "",
          f"**{DISCLAIMER}**", "",
          "Model: per-prompt success = sigmoid(difficulty + shared skill(difficulty) + "
          "own offset); a group with s of k successes pushes its prompt by lr*signal and "
          "the shared skill near its difficulty by transfer_lr/B*signal*kernel; signal = "
          "GRPO gradient on the success logit, zero for all-0/all-1 groups. Held-out "
          "accuracy = expected success over held-out prompts of the same distribution.", "",
          f"Seeds: {result['seeds']}. Rollout budget per run: {sim['budget']:,}. "
          f"Speedup = uniform's rollouts / variant's rollouts to the same target, "
          f"geometric mean over seeds.", ""]
    if command:
        md += [f"Command: `{command}`", ""]
    md += [results_table(result), "", "## Simulated world", "", "```",
           json.dumps(sim, indent=1), "```", ""]
    paths["md"].write_text("\n".join(md))
    plot(result, paths["png"])
    return paths


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def plot(result: dict[str, Any], path: str | Path) -> None:
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    budget = result["sim"]["budget"]
    grid = np.linspace(0, budget, 200)
    by_variant: dict[str, list[dict]] = {}
    for r in result["runs"]:
        by_variant.setdefault(r["variant"], []).append(r)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for name, rs in by_variant.items():
        accs, zs = [], []
        for r in rs:
            x = np.asarray(r["curves"]["rollouts"], float)
            accs.append(np.interp(grid, x, np.asarray(r["curves"]["heldout_accuracy"], float),
                                  right=np.nan))
            z = np.asarray([np.nan if v is None else v for v in r["curves"]["zero_adv_share"]])
            zs.append(np.interp(grid, x[1:], _smooth(z[1:]), left=np.nan, right=np.nan))
        accs, zs = np.array(accs), np.array(zs)
        with warnings.catch_warnings():  # grid points before the first round are all NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            line, = ax1.plot(grid, np.nanmean(accs, 0), label=name, lw=1.6)
            ax1.fill_between(grid, np.nanmin(accs, 0), np.nanmax(accs, 0),
                             color=line.get_color(), alpha=0.15, lw=0)
            ax2.plot(grid, np.nanmean(zs, 0), color=line.get_color(), lw=1.2, label=name)
    ax1.set_xlabel("rollouts consumed (all generated rollouts count)")
    ax1.set_ylabel("held-out accuracy (expected success rate)")
    ax1.set_title(f"{LABEL}: held-out accuracy vs rollouts\n(mean over "
                  f"{len(result['seeds'])} seeds, band = min-max)", fontsize=10)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7, loc="lower right")
    ax2.set_xlabel("rollouts consumed")
    ax2.set_ylabel("share of zero-advantage groups (smoothed)")
    ax2.set_title(f"{LABEL}: zero-advantage share of generated groups", fontsize=10)
    ax2.set_ylim(0, 1)
    ax2.grid(alpha=0.3)
    fig.suptitle(f"{LABEL} — toy model of RLVR dynamics, not a measurement",
                 fontsize=12, color="darkred")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _smooth(z: np.ndarray, w: int = 9) -> np.ndarray:
    """Centered moving average over up to w rounds (shorter at the ends, no zero padding)."""
    z = np.asarray(z, dtype=float)
    if len(z) < 2:
        return z
    ok = np.isfinite(z)
    kern = np.ones(min(w, len(z)))
    num = np.convolve(np.where(ok, z, 0.0), kern, mode="same")
    den = np.convolve(ok.astype(float), kern, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den
