"""One table, with bootstrap intervals, over runs that several `insight bench compare`
out directories hold: variants of a selector that differ by `--set` options (a prior, an
objective) run as separate comparisons, and the baselines they are measured against.

    python scripts/bench_combine.py --main-target +0.025 \\
        "insight+grouped-EB=runs/B,runs/B2" "uniform=runs/U" "mopps=runs/M"

Each argument is LABEL=DIR[,DIR...]; every DIR/results.json's per-run analyses are pooled
under LABEL (one entry per seed). Labels named `uniform` and `mopps` are the baselines of
the speedups and `dynamic-sampling` the ceiling of the ceiling share, as in `bench
compare`. The runs must share their setting (config, rounds, evaluation): this script
does not check it, the comparisons that wrote the directories did. Prints markdown.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from insight.report.bench_power import censored, ci_cell as cell, comparison_intervals


def pooled_runs(dirs: list[str]) -> list[dict]:
    runs = []
    for d in dirs:
        runs += json.loads((Path(d) / "results.json").read_text())["runs"]
    return sorted(runs, key=lambda r: r["seed"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("groups", nargs="+", metavar="LABEL=DIR[,DIR...]")
    ap.add_argument("--main-target", default="+0.025")
    args = ap.parse_args()
    runs = {}
    for g in args.groups:
        label, _, dirs = g.partition("=")
        runs[label] = pooled_runs(dirs.split(","))
    main_t = args.main_target
    rollouts, rounds, counts, auc = {}, {}, {}, {}
    for label, rs in runs.items():
        rollouts[label], n_r = censored([r["rollouts_to_target"][main_t] for r in rs],
                                        [r["rollouts_consumed"] for r in rs])
        rounds[label], n_s = censored([r["rounds_to_target"][main_t] for r in rs],
                                      [r["rounds"] for r in rs])
        counts[label] = (n_r, n_s)
        auc[label] = [r["auc"] for r in rs]
    ci = comparison_intervals(rollouts, rounds, counts, auc, baselines=("uniform", "mopps"))
    print(f"| variant | seeds | rollouts to {main_t} [95% CI] | vs uniform | vs MoPPS | "
          f"ceiling share (rounds) | rounds to {main_t} | final acc | AUC | zero-adv share |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, rs in runs.items():
        e, sv = ci[label], ci[label]["speedup_vs"]
        print(f"| {label} | {','.join(str(r['seed']) for r in rs)} | "
              f"{cell(e['rollouts_to_target_ci'], ',.0f')} | {cell(sv.get('uniform'), '.2f', 'x')} | "
              f"{cell(sv.get('mopps'), '.2f', 'x')} | {cell(e.get('ceiling_share'), '.2f')} | "
              f"{np.mean(rounds[label]):.1f} | {np.mean([r['final_accuracy'] for r in rs]):.3f} | "
              f"{cell(e.get('auc_ci'), '.3f')} | {np.mean([r['zero_adv_share'] for r in rs]):.2f} |")
    print()
    for label, rs in runs.items():
        per_seed = [None if r["rollouts_to_target"][main_t] is None
                    else round(r["rollouts_to_target"][main_t]) for r in rs]
        print(f"- {label}: rollouts to {main_t} per seed {per_seed}")


if __name__ == "__main__":
    main()
