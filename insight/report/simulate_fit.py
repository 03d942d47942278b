"""Fit the learning-dynamics SIMULATOR to recorded real runs, and check what it predicts.

Why: the simulator (`insight.report.simulate`) is only worth using for a sweep if, once
its free parameters are set from real runs, it predicts real runs it was *not* fitted
to. This module does the fit and the check, nothing else (issue 12, item 5).

* **The world** of a setting is not fitted: it is read off the real runs. Pool and
  held-out sizes, B, k and rounds come from the setting; the initial success rates come
  per difficulty level from the real groups (the level's success rate and the shares of
  its all-fail and all-success groups, matched exactly by a Beta distribution of p per
  level: the mean is the success rate, the concentration the spread that gives those
  zero-advantage shares at k rollouts; `fit_level`).
* **The dynamics** (`transfer_lr`, `transfer_width`, the step rule; `lr` optionally) are
  fitted by a grid search plus a Nelder-Mead polish, minimising the RMS gap between the
  simulated and the real held-out accuracy *gain* (accuracy minus the run's initial
  accuracy) against rollouts, over the FITTING selectors only. Gains, not levels: the
  real accuracy is sampled at temperature 1 on another prompt rendering than training
  groups, so its level is offset from the training success rates; the targets are
  relative to the initial accuracy anyway.
* **The check** runs the fitted simulator on held-out selectors and held-out settings
  (world adapted, dynamics kept) and compares with the real runs: the selectors'
  ordering by rollouts to the main target, and each selector's speedup over uniform
  against the real speedup's bootstrap interval (`insight.report.bench_power`, seeds
  censored at their budget exactly as in `results.json`).

Everything simulated here is a SIMULATION (see the simulator's docstring for its biases).
Framework-free: numpy, scipy and the simulator; the real data come in as plain dicts.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from insight.report import bench_power as BP
from insight.report import simulate as S

LABEL = S.LABEL


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class RealSelector:
    """What one selector's real runs measured: the mean gain curve over seeds, each
    seed's rollouts to each target gain (`to_target[gain]`, None = missed) and each seed's
    rollouts consumed."""

    curve_x: tuple[float, ...]
    curve_gain: tuple[float, ...]
    to_target: Mapping[float, tuple[float | None, ...]]
    budgets: tuple[float, ...]


@dataclass(frozen=True)
class Setting:
    """A benchmark setting as the simulator needs it: world, run length, main target,
    and the real selectors' measurements."""

    name: str
    n_prompts: int
    n_heldout: int
    batch_size: int
    k: int
    rounds: int
    levels: tuple[tuple[float, float, float], ...]   # (share, mean p, concentration)
    main_gain: float
    real: Mapping[str, RealSelector] = field(default_factory=dict)


@dataclass(frozen=True)
class Dynamics:
    """The simulator's free learning-dynamics parameters (what the fit sets)."""

    transfer_lr: float = 0.1
    transfer_width: float = 1.0
    step: str = "sgd"
    lr: float = 0.3


# --------------------------------------------------------------------------- the world
def betabinom_zero_shares(mean: float, conc: float, k: int) -> tuple[float, float]:
    """P(s = 0) and P(s = k) for s ~ BetaBinomial(k, mean * conc, (1 - mean) * conc)."""
    a, b = mean * conc, (1 - mean) * conc
    lb = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    p0 = math.exp(lb + math.lgamma(b + k) + math.lgamma(a) - math.lgamma(a + b + k))
    pk = math.exp(lb + math.lgamma(a + k) + math.lgamma(b) - math.lgamma(a + b + k))
    return p0, pk


def fit_level(success_rate: float, all_fail: float, all_success: float, k: int
              ) -> tuple[float, float]:
    """(mean, concentration) of a Beta distribution of per-prompt success rates whose
    k-rollout groups have the given success rate (exactly: the mean) and, as nearly as
    one parameter allows, the given all-fail and all-success shares (the concentration,
    by a log-spaced scan and a golden-section refinement). A level never solved gets
    mean 0: its concentration does not matter and is set to 1."""
    mean = float(success_rate)
    if mean <= 0 or mean >= 1:
        return (min(max(mean, 0.0), 1.0), 1.0)

    def loss(log_c: float) -> float:
        p0, pk = betabinom_zero_shares(mean, math.exp(log_c), k)
        return (p0 - all_fail) ** 2 + (pk - all_success) ** 2

    from scipy.optimize import minimize_scalar
    grid = np.linspace(math.log(0.05), math.log(1e4), 200)
    best = float(grid[int(np.argmin([loss(g) for g in grid]))])
    res = minimize_scalar(loss, bounds=(best - 0.1, best + 0.1), method="bounded")
    return mean, float(math.exp(res.x))


def level_stats(groups: Iterable[tuple[int, int, int]]) -> dict[int, dict[str, float]]:
    """Per level, from (successes, rollouts, level) groups: `groups`, `success_rate`,
    `all_fail`, `all_success` (the shares `fit_level` matches)."""
    by: dict[int, list[tuple[int, int]]] = {}
    for s, n, lv in groups:
        by.setdefault(int(lv), []).append((int(s), int(n)))
    out = {}
    for lv, gs in sorted(by.items()):
        s = np.array([g[0] for g in gs], dtype=float)
        n = np.array([g[1] for g in gs], dtype=float)
        out[lv] = {"groups": len(gs), "success_rate": float(s.sum() / n.sum()),
                   "all_fail": float(np.mean(s == 0)), "all_success": float(np.mean(s == n))}
    return out


def world_levels(shares: Mapping[int, float], stats: Mapping[int, Mapping[str, float]], k: int
                 ) -> tuple[tuple[float, float, float], ...]:
    """SimConfig.levels from the pool's level shares and the per-level group stats."""
    return tuple((float(shares[lv]),) + fit_level(stats[lv]["success_rate"],
                                                   stats[lv]["all_fail"],
                                                   stats[lv]["all_success"], k)
                 for lv in sorted(shares))


def sim_config(setting: Setting, dyn: Dynamics) -> S.SimConfig:
    """The simulator's config for a setting and a set of dynamics: the run ends after
    the setting's rounds (the real runs ran a fixed number of rounds, not a budget)."""
    return S.SimConfig(n_prompts=setting.n_prompts, n_heldout=setting.n_heldout,
                       batch_size=setting.batch_size, k=setting.k, budget=10**9,
                       max_rounds=setting.rounds, difficulty="levels", levels=setting.levels,
                       lr=dyn.lr, transfer_lr=dyn.transfer_lr,
                       transfer_width=dyn.transfer_width, step=dyn.step,
                       target_gains=(setting.main_gain,))


# --------------------------------------------------------------------------- simulate
def simulate(setting: Setting, dyn: Dynamics, selector: str, seeds: Sequence[int]
             ) -> list[dict[str, Any]]:
    """One SIMULATION run per seed of a selector (its default configuration) on the
    setting's world: per run `rollouts`, `gain` (arrays, index 0 = start) and `budget`
    (rollouts consumed); `to_target(run, gain)` reads a crossing off it."""
    sim = sim_config(setting, dyn)
    out = []
    for seed in seeds:
        r = S.run_simulation(sim, S.Variant({"type": selector}), int(seed))
        x = np.asarray(r["curves"]["rollouts"], dtype=float)
        acc = np.asarray(r["curves"]["heldout_accuracy"], dtype=float)
        out.append({"rollouts": x, "gain": acc - acc[0],
                    "budget": float(r["summary"]["rollouts"])})
    return out


def to_target(run: Mapping[str, Any], gain: float) -> float | None:
    """Rollouts at which a simulated run first gains `gain` (interpolated; None = never),
    the simulator's own crossing rule."""
    return S.rollouts_to_target(run["rollouts"], run["gain"], gain)


def mean_gain_at(runs: Sequence[dict], xs: Sequence[float]) -> np.ndarray:
    """Mean over runs of each run's gain curve, linearly interpolated at xs (a point
    beyond a run's last rollout is NaN: no extrapolation)."""
    xs = np.asarray(xs, dtype=float)
    vals = [np.where(xs <= r["rollouts"][-1], np.interp(xs, r["rollouts"], r["gain"]), np.nan)
            for r in runs]
    return np.mean(vals, axis=0)


def curve_rmse(runs: Sequence[dict], real: RealSelector) -> float:
    """RMS gap between the simulated mean gain and the real mean gain, at the real
    curve's points that the simulation covers (the start, gain 0 in both, left out)."""
    pred = mean_gain_at(runs, real.curve_x)
    ok = np.isfinite(pred) & (np.asarray(real.curve_x) > 0)
    if not ok.any():
        return float("inf")
    return float(np.sqrt(np.mean((pred[ok] - np.asarray(real.curve_gain)[ok]) ** 2)))


# --------------------------------------------------------------------------- fit
def fit_error(setting: Setting, dyn: Dynamics, selectors: Sequence[str],
              seeds: Sequence[int]) -> float:
    """The fit's objective: mean over the fitting selectors of the curve RMSE."""
    return float(np.mean([curve_rmse(simulate(setting, dyn, s, seeds), setting.real[s])
                          for s in selectors]))


DEFAULT_GRID = {"transfer_lr": (0.02, 0.05, 0.1, 0.2, 0.4),
                "transfer_width": (0.25, 0.5, 1.0, 2.0),
                "step": ("sgd", "normalized"),
                "lr": (0.3,)}


def fit(setting: Setting, selectors: Sequence[str], seeds: Sequence[int], *,
        grid: Mapping[str, Sequence] | None = None, polish_iters: int = 30,
        log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Fit the dynamics to the real gain curves of `selectors` on `setting`.

    A grid search (every combination of `grid`), then a Nelder-Mead polish of
    log(transfer_lr) and log(transfer_width) from the best grid point with the step rule
    and lr held (`polish_iters` simulator evaluations at most; 0 = no polish). Common
    random numbers (the same seeds everywhere) keep the objective smooth enough for it.
    Returns `dynamics` (the best), `error` (its objective, accuracy units) and `grid`
    (every grid point's error, for judging how well determined the fit is)."""
    g = dict(DEFAULT_GRID if grid is None else grid)
    rows = []
    for tlr, width, step, lr in itertools.product(g["transfer_lr"], g["transfer_width"],
                                                 g["step"], g["lr"]):
        dyn = Dynamics(float(tlr), float(width), str(step), float(lr))
        err = fit_error(setting, dyn, selectors, seeds)
        rows.append({**dyn.__dict__, "error": err})
        if log:
            log(f"grid {dyn} -> {err:.5f}")
    best_row = min(rows, key=lambda r: r["error"])
    best = Dynamics(best_row["transfer_lr"], best_row["transfer_width"], best_row["step"],
                    best_row["lr"])
    best_err = best_row["error"]
    if polish_iters > 0:
        best, best_err = _polish(setting, best, best_err, selectors, seeds, polish_iters)
    return {"dynamics": best, "error": best_err, "grid": rows,
            "fitted_on": {"setting": setting.name, "selectors": list(selectors),
                          "seeds": list(seeds)}}


def _polish(setting, start: Dynamics, start_err: float, selectors, seeds, iters: int
            ) -> tuple[Dynamics, float]:
    from scipy.optimize import minimize

    def obj(z):
        dyn = replace(start, transfer_lr=float(np.exp(z[0])), transfer_width=float(np.exp(z[1])))
        return fit_error(setting, dyn, selectors, seeds)

    z0 = np.log([start.transfer_lr, start.transfer_width])
    res = minimize(obj, z0, method="Nelder-Mead",
                   options={"maxfev": iters, "xatol": 0.02, "fatol": 1e-5,
                            "initial_simplex": [z0, z0 + [0.3, 0], z0 + [0, 0.3]]})
    if res.fun < start_err:
        return replace(start, transfer_lr=float(np.exp(res.x[0])),
                       transfer_width=float(np.exp(res.x[1]))), float(res.fun)
    return start, start_err


def calibrate_rate(setting: Setting, dyn: Dynamics, seeds: Sequence[int], *,
                   selector: str = "uniform", span: float = 20.0, iters: int = 14
                   ) -> tuple[Dynamics, float]:
    """`dyn` with transfer_lr refitted (within dyn.transfer_lr / span .. * span, bounded
    scalar search on its log) to one selector's real gain curve on `setting`; the rest
    of the dynamics kept. For a setting whose accuracy is measured differently (e.g.
    greedy instead of sampled) the speed of the curve cannot transfer, but the shape and
    the selectors' ratios still may: this fits the one scalar and leaves the ratios to
    be predicted."""
    from scipy.optimize import minimize_scalar

    def obj(z: float) -> float:
        d = replace(dyn, transfer_lr=float(np.exp(z)))
        return curve_rmse(simulate(setting, d, selector, seeds), setting.real[selector])

    z0 = math.log(dyn.transfer_lr)
    res = minimize_scalar(obj, bounds=(z0 - math.log(span), z0 + math.log(span)),
                          method="bounded", options={"maxiter": iters, "xatol": 0.02})
    return replace(dyn, transfer_lr=float(np.exp(res.x))), float(res.fun)


# --------------------------------------------------------------------------- check
def _speedups(to_target: Mapping[str, Sequence[float | None]],
              budgets: Mapping[str, Sequence[float]], baseline: str) -> dict[str, dict]:
    """Per selector: mean rollouts to target (misses censored at their budget, as in
    `results.json`) and the speedup over the baseline with its 95% bootstrap interval."""
    filled, counts = {}, {}
    for sel in to_target:
        filled[sel], n_c = BP.censored(list(to_target[sel]), list(budgets[sel]))
        counts[sel] = (n_c, n_c)
    ci = BP.comparison_intervals(filled, filled, counts, baselines=(baseline,))
    out = {}
    for sel in to_target:
        sp = ci[sel]["speedup_vs"].get(baseline)
        out[sel] = {"rollouts": float(np.mean(filled[sel])), "n_censored": counts[sel][0],
                    "n_seeds": len(filled[sel]),
                    "speedup": 1.0 if sel == baseline else sp["value"],
                    "speedup_ci": None if sel == baseline else (sp["ci_low"], sp["ci_high"])}
    return out


def ordering(stats: Mapping[str, dict]) -> list[str]:
    """Selectors from fewest to most rollouts to the target."""
    return sorted(stats, key=lambda s: stats[s]["rollouts"])


def _order_sign(vx: float, vy: float, bx: bool, by: bool) -> float:
    """Sign of (x - y) in rollouts to target, where a value flagged as a bound (every
    seed missed: the true value is at least it) is only known to be large. Two bounds,
    or a bound above a value that is larger still, give no order (0)."""
    if bx and by:
        return 0.0
    if bx:
        return 1.0 if vy < vx else 0.0
    if by:
        return -1.0 if vx < vy else 0.0
    return float(np.sign(vx - vy))


def kendall_tau(a: Mapping[str, float], b: Mapping[str, float],
                a_bounds: Iterable[str] = (), b_bounds: Iterable[str] = ()) -> float:
    """Kendall's tau-a between two scorings of the same items: (concordant - discordant)
    pairs / all pairs. A pair without an order in either (tied, or bounds that do not
    order it: `_order_sign`) counts as neither, so a simulation whose runs all missed the
    target predicts no order (tau 0) instead of the order of the selectors' budgets."""
    pairs = list(itertools.combinations(sorted(a), 2))
    if not pairs:
        return 1.0
    ab, bb = set(a_bounds), set(b_bounds)
    score = sum(_order_sign(a[x], a[y], x in ab, y in ab) * _order_sign(b[x], b[y], x in bb,
                                                                        y in bb)
                for x, y in pairs)
    return float(score / len(pairs))


def check(setting: Setting, dyn: Dynamics, selectors: Sequence[str], seeds: Sequence[int],
          *, gain: float | None = None, baseline: str = "uniform", fitted: Sequence[str] = (),
          sims: Mapping[str, list] | None = None, mode: str = "") -> dict[str, Any]:
    """Simulate `selectors` on `setting` with fixed dynamics (or take `sims`, from
    `simulate`) and compare with the real runs at a target gain (default the main one).

    Per selector: the SIMULATION's and the real rollouts to the target and speedup over
    the baseline (the real one with its bootstrap interval), whether the simulated
    speedup lies in that interval (None when the real interval is undefined or every
    simulated run of the selector or the baseline missed the target: then the simulation
    predicts no ratio), and the curve RMSE. Over the selectors: the orderings, Kendall's
    tau, and `resolved`: of the selectors whose real interval excludes 1 (the real runs
    resolve whether they beat the baseline), how many the simulation puts on that side."""
    gain = setting.main_gain if gain is None else float(gain)
    if sims is None:
        sims = {s: simulate(setting, dyn, s, seeds) for s in selectors}
    pred = _speedups({s: [to_target(r, gain) for r in sims[s]] for s in selectors},
                     {s: [r["budget"] for r in sims[s]] for s in selectors}, baseline)
    real = _speedups({s: list(setting.real[s].to_target[gain]) for s in selectors},
                     {s: list(setting.real[s].budgets) for s in selectors}, baseline)
    base_missed = pred[baseline]["n_censored"] == pred[baseline]["n_seeds"]
    rows, resolved = {}, []
    for s in selectors:
        lo_hi = real[s]["speedup_ci"]
        sim_missed = base_missed or pred[s]["n_censored"] == pred[s]["n_seeds"]
        inside = None if lo_hi is None or lo_hi[0] is None or sim_missed else \
            bool(lo_hi[0] <= pred[s]["speedup"] <= lo_hi[1])
        if lo_hi is not None and lo_hi[0] is not None and not lo_hi[0] <= 1.0 <= lo_hi[1]:
            resolved.append(not sim_missed
                            and (pred[s]["speedup"] > 1.0) == (lo_hi[0] > 1.0))
        rows[s] = {"role": "fitted" if s in fitted else "held out",
                   "sim_rollouts": pred[s]["rollouts"], "sim_censored": pred[s]["n_censored"],
                   "sim_speedup": pred[s]["speedup"],
                   "real_rollouts": real[s]["rollouts"], "real_censored": real[s]["n_censored"],
                   "real_speedup": real[s]["speedup"], "real_speedup_ci": lo_hi,
                   "speedup_in_real_ci": inside,
                   "curve_rmse": curve_rmse(sims[s], setting.real[s])}
    bounds = lambda st: [s for s in selectors if st[s]["n_censored"] == st[s]["n_seeds"]]
    tau = kendall_tau({s: pred[s]["rollouts"] for s in selectors},
                      {s: real[s]["rollouts"] for s in selectors}, bounds(pred), bounds(real))
    judged = [r["speedup_in_real_ci"] for s, r in rows.items()
              if s != baseline and r["speedup_in_real_ci"] is not None]
    return {"label": LABEL, "setting": setting.name, "mode": mode, "gain": gain,
            "dynamics": dyn, "sim_seeds": list(seeds), "selectors": rows,
            "order_sim": ordering(pred), "order_real": ordering(real),
            "sim_all_missed": bounds(pred), "real_all_missed": bounds(real),
            "order_match": tau == 1.0, "kendall_tau": tau,
            "ratios_in_ci": f"{sum(judged)}/{len(selectors) - 1}",
            "resolved": f"{sum(resolved)}/{len(resolved)}"}


# --------------------------------------------------------------------------- real data
def real_selector(entry: Mapping[str, Any]) -> RealSelector:
    """A selector's RealSelector from a `results.json` / compare-*.json selector entry
    (its mean curve, per-seed rollouts to every relative target, rollouts consumed)."""
    c = entry["curve"]
    y0 = c["mean"][0]
    to = {gain_of(key): tuple(None if v is None else float(v) for v in t["per_seed"])
          for key, t in entry["rollouts_to_target_all"].items()}
    budgets = entry["rollouts_consumed"]["per_seed"]
    return RealSelector(tuple(map(float, c["x"])), tuple(float(y) - y0 for y in c["mean"]),
                        to, tuple(float(b) for b in budgets))


def gain_of(key: str) -> float:
    """A relative target's key ("+0.025") as its gain."""
    return float(str(key).lstrip("+"))


def setting_from_results(name: str, results: Mapping[str, Any], config: Mapping[str, Any],
                         *, level_shares: Mapping[int, float] | None = None,
                         level_groups: Mapping[int, Mapping[str, float]] | None = None,
                         n_prompts: int | None = None, n_heldout: int | None = None
                         ) -> Setting:
    """A Setting from a comparison's results (`insight bench compare`'s results.json or
    docs/benchmarks/compare-*.json) and its config.

    The world's levels: by default the uniform selector's `groups_by_difficulty` over
    the whole run (its share of groups is the pool's level mix, uniform drawing evenly);
    these success rates include the run's learning, so they sit a little above the
    initial ones. Pass `level_shares` and `level_groups` (e.g. from the early rounds of
    the recorded runs, `level_stats`) to use measured initial rates instead."""
    main = results["main_target"]
    k = int(results["setup"]["k"][0])
    if level_groups is None or level_shares is None:
        gbd = {int(r["difficulty"]): r
               for r in results["selectors"]["uniform"]["groups_by_difficulty"]}
        level_shares = {lv: r["share"] for lv, r in gbd.items()}
        level_groups = gbd
    real = {sel: real_selector(e) for sel, e in results["selectors"].items()}
    return Setting(name=name,
                   n_prompts=int(n_prompts or config["data"]["n_train"]),
                   n_heldout=int(n_heldout or config["data"]["n_eval"]),
                   batch_size=int(results["setup"]["batch_size"][0]), k=k,
                   rounds=int(results["setup"]["rounds"]),
                   levels=world_levels(level_shares, level_groups, k),
                   main_gain=float(results["targets"][main]["value"]), real=real)


def recorded_level_data(runs_dir: str | Path, selectors: Sequence[str] = ("uniform",
                        "dynamic-sampling"), through_round: int = 4
                        ) -> tuple[dict[int, float], dict[int, dict[str, float]], int, int]:
    """From recorded runs (`<runs_dir>/<selector>-s<seed>/`): the pool's level shares,
    per-level stats of the groups generated in the first `through_round` rounds by
    selectors that draw uniformly (uniform; dynamic sampling's generation batches), i.e.
    the initial policy's success rates, and the pool and held-out sizes."""
    from insight.record.store import RunStore
    groups: list[tuple[int, int, int]] = []
    shares: dict[int, float] = {}
    n_train = n_eval = 0
    for run_dir in sorted(Path(runs_dir).iterdir()):
        if not any(run_dir.name.startswith(f"{s}-s") for s in selectors):
            continue
        with RunStore(run_dir, read_only=True) as st:
            rid = st.get_run()["run_id"]
            if not shares:
                lv = st.prompt_rows(rid, "train").column("difficulty").to_pylist()
                n_train = len(lv)
                n_eval = st.prompt_rows(rid, "eval").num_rows
                shares = {int(v): lv.count(v) / n_train for v in sorted(set(lv))}
            groups += [(int(g["s"]), int(g["n"]), int(g["difficulty"]))
                       for g in st.prompt_groups_by_round(rid, through_round)]
    return shares, level_stats(groups), n_train, n_eval


def to_jsonable(obj: Any) -> Any:
    """Dataclasses and numpy scalars as plain JSON values."""
    if isinstance(obj, Dynamics):
        return dict(obj.__dict__)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(to_jsonable(obj), indent=1)
