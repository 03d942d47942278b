"""Fit the learning-dynamics SIMULATOR to the recorded bench-wide runs and check what it
predicts on held-out selectors and held-out settings (issue 12, item 5).

Why a script: the fit needs the recorded runs (results.json, and the run stores for the
initial per-level success rates), which live outside the package; the method is in
`insight.report.simulate_fit`. Output: a JSON file and a markdown table on stdout.
Everything simulated is a SIMULATION.

    python scripts/fit_simulator.py --wide-runs ../bench/runs-wide/runs \
        --out docs/benchmarks/simulator-fit.json

Fit: the uniform and dynamic-sampling curves of bench-wide (the two selectors that do not
use the posterior). Held out: InSight and MoPPS on bench-wide; every selector of
bench-mixed (docs/benchmarks/compare-mixed.json) and of the tiny default
(compare-default.json), world adapted from their configs and runs, in two modes:
"transfer" keeps every fitted parameter; "rate from uniform" refits transfer_lr alone to
that setting's uniform curve (their accuracy is greedy, bench-wide's sampled, so the
speed of learning cannot carry over) and leaves the other selectors to be predicted.
Each check is at the setting's main target and its smallest one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from insight.report import simulate_fit as F

ROOT = Path(__file__).resolve().parents[1]
FIT_SELECTORS = ("uniform", "dynamic-sampling")
ALL_SELECTORS = ("insight", "uniform", "mopps", "dynamic-sampling", "difficulty")


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _config(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / name).read_text())


def build_settings(args) -> dict[str, F.Setting]:
    """bench-wide (levels from the first rounds of its recorded runs when given, else
    from its uniform runs' summary), bench-mixed and tiny (from their summaries)."""
    res = _load(Path(args.docs) / "compare-wide.json")
    kw = {}
    if args.wide_runs:
        shares, stats, n_train, n_eval = F.recorded_level_data(
            Path(args.wide_runs), through_round=args.initial_rounds)
        kw = dict(level_shares=shares, level_groups=stats, n_prompts=n_train,
                  n_heldout=n_eval)
    settings = {"bench-wide": F.setting_from_results("bench-wide", res,
                                                      _config("bench-wide.yaml"), **kw)}
    for name, cfg in (("bench-mixed", "bench-mixed.yaml"), ("tiny", "tiny.yaml")):
        path = Path(args.docs) / f"compare-{'mixed' if name == 'bench-mixed' else 'default'}.json"
        settings[name] = F.setting_from_results(name, _load(path), _config(cfg))
    return settings


def fmt_ci(ci) -> str:
    return "—" if not ci or ci[0] is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def _dyn(d) -> str:
    d = F.Dynamics(**d) if isinstance(d, dict) else d  # also from a saved JSON
    return (f"transfer_lr={d.transfer_lr:.3g}, transfer_width={d.transfer_width:.3g}, "
            f"step={d.step}, lr={d.lr:g}")


def _order(order: list[str], missed: list[str]) -> str:
    """An ordering, with the selectors whose every run missed the target (their place is
    only a bound) listed after it, in no order."""
    got = [s for s in order if s not in missed]
    parts = [" < ".join(got)] if got else []
    if missed:
        parts.append(f"every run missed: {', '.join(sorted(missed))}")
    return "; ".join(parts)


def _row(c: dict, sel: str) -> str:
    """One selector's line of the per-selector table (a speedup of a selector, or of the
    baseline, whose every simulated run missed is no prediction: shown as a bound)."""
    r = c["selectors"][sel]
    cen = lambda n: f" ({n} missed)" if n else ""
    missed = sel in c["sim_all_missed"] or "uniform" in c["sim_all_missed"]
    sim_sp = f"{r['sim_speedup']:.2f}x" + (" (bound)" if missed else "")
    inside = {None: "—", True: "yes", False: "no"}[r["speedup_in_real_ci"]]
    return (f"| {c['setting']}, {c['mode']} (+{c['gain']:g}) | `{sel}` | {r['role']} | "
            f"{r['sim_rollouts']:,.0f}{cen(r['sim_censored'])} | "
            f"{r['real_rollouts']:,.0f}{cen(r['real_censored'])} | {sim_sp} | "
            f"{r['real_speedup']:.2f}x {fmt_ci(r['real_speedup_ci'])} | {inside} | "
            f"{r['curve_rmse']:.4f} |")


def markdown(fitted: dict, checks: list[dict]) -> str:
    lines = [f"SIMULATION fit on {fitted['fitted_on']['setting']} "
             f"({', '.join(fitted['fitted_on']['selectors'])}; sim seeds "
             f"{fitted['fitted_on']['seeds']}): {_dyn(fitted['dynamics'])}; "
             f"curve RMSE {fitted['error']:.4f} (accuracy)", ""]
    for c in checks:
        if c["mode"] == "rate from uniform" and c["gain"] == c["main_gain"]:
            lines.append(f"{c['setting']}, rate from uniform: {_dyn(c['dynamics'])} "
                         f"(uniform curve RMSE {c['selectors']['uniform']['curve_rmse']:.4f})")
    lines += ["", "| setting, mode (target) | selector | role | SIMULATION rollouts "
              "| real rollouts | SIMULATION speedup | real speedup [95% CI] | in CI | curve RMSE |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in checks:
        if c["gain"] != c["main_gain"]:
            continue
        lines += [_row(c, sel) for sel in c["order_real"]]
    lines += ["", "| setting, mode | target | real order (fewest rollouts first) | SIMULATION "
              "order | Kendall tau | speedups in real CI | real-resolved sides right |",
              "|---|---|---|---|---|---|---|"]
    for c in checks:
        lines.append(f"| {c['setting']}, {c['mode']} | +{c['gain']:g} | "
                     f"{_order(c['order_real'], c['real_all_missed'])} | "
                     f"{_order(c['order_sim'], c['sim_all_missed'])} | "
                     f"{c['kendall_tau']:.2f} | {c['ratios_in_ci']} | {c['resolved']} |")
    return "\n".join(lines)


def run_checks(st: F.Setting, dyn: F.Dynamics, mode: str, fitted_sels, n_seeds: int
               ) -> list[dict]:
    """The setting's selectors simulated once (seeds 100, 101, ...: not the fit's) and
    checked at its main and its smallest target."""
    sels = [s for s in ALL_SELECTORS if s in st.real]
    seeds = range(100, 100 + n_seeds)
    sims = {s: F.simulate(st, dyn, s, seeds) for s in sels}
    gains = sorted({st.main_gain, min(st.real["uniform"].to_target)})
    out = []
    for g in gains:
        c = F.check(st, dyn, sels, seeds, gain=g, fitted=fitted_sels, sims=sims, mode=mode)
        c["main_gain"] = st.main_gain
        out.append(c)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks"),
                    help="dir with compare-wide.json, compare-mixed.json, compare-default.json")
    ap.add_argument("--wide-runs", default=None,
                    help="bench-wide's recorded runs (<selector>-s<seed>/ dirs): the initial "
                         "per-level success rates come from their first rounds")
    ap.add_argument("--initial-rounds", type=int, default=8,
                    help="rounds of the recorded runs that measure the initial success rates")
    ap.add_argument("--fit-seeds", type=int, default=4)
    ap.add_argument("--check-seeds", type=int, default=10,
                    help="simulation seeds per selector in the check (seeds 100, 101, ...)")
    ap.add_argument("--polish", type=int, default=30, help="Nelder-Mead evaluations")
    ap.add_argument("--out", default=None, help="write the full result as JSON here")
    ap.add_argument("--render", default=None,
                    help="only print the markdown of a JSON written by --out")
    ap.add_argument("--dynamics", default=None,
                    help="skip the fit: transfer_lr,transfer_width,step,lr (e.g. a previous fit)")
    args = ap.parse_args(argv)

    if args.render:
        saved = _load(Path(args.render))
        print(markdown(saved["fit"], saved["checks"]))
        return 0
    t0 = time.time()
    settings = build_settings(args)
    wide = settings["bench-wide"]
    log = lambda m: print(m, file=sys.stderr)
    if args.dynamics:
        tlr, width, step, lr = args.dynamics.split(",")
        dyn = F.Dynamics(float(tlr), float(width), step, float(lr))
        fitted = {"dynamics": dyn, "grid": [], "fitted_on": {
            "setting": "bench-wide", "selectors": list(FIT_SELECTORS), "seeds": "given"},
            "error": F.fit_error(wide, dyn, FIT_SELECTORS, range(args.fit_seeds))}
    else:
        fitted = F.fit(wide, FIT_SELECTORS, range(args.fit_seeds), polish_iters=args.polish,
                       log=log)
        dyn = fitted["dynamics"]
    log(f"dynamics: {dyn}")
    checks = []
    for name, st in settings.items():
        modes = [("fitted", dyn, FIT_SELECTORS)] if name == "bench-wide" else [
            ("transfer", dyn, ()),
            ("rate from uniform", F.calibrate_rate(st, dyn, range(args.fit_seeds))[0],
             ("uniform",))]
        for mode, d, fitted_sels in modes:
            checks += run_checks(st, d, mode, fitted_sels, args.check_seeds)
            log(f"checked {name}, {mode}")
    table = markdown(fitted, checks)
    print(table)
    if args.out:
        Path(args.out).write_text(F.dumps({
            "label": F.LABEL, "fit": fitted, "checks": checks,
            "worlds": {n: {"levels": s.levels, "n_prompts": s.n_prompts,
                           "n_heldout": s.n_heldout, "batch_size": s.batch_size, "k": s.k,
                           "rounds": s.rounds, "main_gain": s.main_gain}
                       for n, s in settings.items()},
            "seconds": time.time() - t0, "markdown": table}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
