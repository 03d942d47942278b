"""Where a comparison's rollouts went, prompt by prompt: how many prompts each run
touched, how often it came back to one, and how its waste moved over the run.

    python scripts/bench_revisits.py runs-wide [--rounds 56] [--windows 8]

For each run under ``D/runs/``: prompts touched, groups per prompt (share of touched
prompts picked once, twice, three times or more; the most picks), groups spent on
prompts never solved in the run's earlier groups ("second looks" at a prompt that
failed k/k before), and the zero-advantage share per window of rounds. Then the mean per
selector. Read-only; prints one JSON object. This is what explains a selector's
savings (or their absence) when the rollouts-to-target table alone cannot.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from insight.record.store import RunStore


def run_revisits(run_dir: Path, rounds: int, window: int) -> dict:
    """The figures of one run from its store (generated groups, kept or not)."""
    with RunStore(run_dir, read_only=True) as db:
        run = db.get_run()
        groups = db.prompt_groups_by_round(run["run_id"], rounds) if run else []
    if not groups:
        return {}
    picks: dict[str, int] = defaultdict(int)
    failed_before: set[str] = set()
    second_looks = 0
    zero_by_window: dict[int, list[int]] = defaultdict(list)
    for g in groups:
        pid = g["prompt_id"]
        second_looks += pid in failed_before
        if g["s"] == 0:
            failed_before.add(pid)
        picks[pid] += 1
        zero_by_window[(g["round"] - 1) // window].append(int(g["s"] in (0, g["n"])))
    touched = len(picks)
    counts = list(picks.values())
    return {
        "selector": run["selector"], "seed": int(run["seed"]), "groups": len(groups),
        "prompts_touched": touched,
        "share_picked_once": sum(c == 1 for c in counts) / touched,
        "share_picked_twice": sum(c == 2 for c in counts) / touched,
        "share_picked_3_plus": sum(c >= 3 for c in counts) / touched,
        "max_picks": max(counts),
        "groups_on_prompts_failed_before": second_looks,
        "zero_adv_by_window": [round(sum(v) / len(v), 3) for _, v in sorted(zero_by_window.items())],
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="a `bench compare --out` directory")
    ap.add_argument("--rounds", type=int, default=10**9, help="only rounds up to this one")
    ap.add_argument("--windows", type=int, default=8, help="rounds per zero-adv window")
    args = ap.parse_args(argv)
    per_run = [r for d in sorted((Path(args.out) / "runs").iterdir()) if d.is_dir()
               for r in [run_revisits(d, args.rounds, args.windows)] if r]  # skip unstarted runs
    by_sel: dict[str, list[dict]] = defaultdict(list)
    for r in per_run:
        by_sel[r["selector"]].append(r)
    mean = {}
    for sel, rs in by_sel.items():
        keys = [k for k, v in rs[0].items() if isinstance(v, (int, float)) and k != "seed"]
        mean[sel] = {k: round(sum(r[k] for r in rs) / len(rs), 3) for k in keys}
        width = min(len(r["zero_adv_by_window"]) for r in rs)
        mean[sel]["zero_adv_by_window"] = [
            round(sum(r["zero_adv_by_window"][i] for r in rs) / len(rs), 3) for i in range(width)]
        mean[sel]["n_runs"] = len(rs)
    print(json.dumps({"per_selector": mean, "runs": per_run}, indent=1))


if __name__ == "__main__":
    main()
