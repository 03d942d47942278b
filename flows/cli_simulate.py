"""`insight bench simulate`: the SIMULATION sweep's arguments, and the glue from them to
`insight.report.simulate` / `insight.report.simulate_sweep` (progress lines, the table, the files).

The library takes a `SimConfig`, `Variant`s and seeds; this module turns a command line
into those (lists are comma- or space-separated; `--grid KEY=V1,V2` sweeps any other
selector field) and a bad flag into one line on stderr (exit 2).
"""

from __future__ import annotations

import os
import sys

from insight.report.simulate import DEFAULT_SELECTORS, DISCLAIMER, LABEL, SimConfig
from insight.report.simulate_sweep import expand_grid, results_table, sweep, write_outputs


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.replace(",", " ").split()]


def _pool_ratios(text: str) -> list[float | None]:
    return [None if v.lower() in ("none", "all", "0") else float(v) for v in _strs(text)]


def _half_lives(text: str) -> list[float | None]:
    return [None if v.lower() in ("none", "off") else float(v) for v in _strs(text)]


def _strs(text: str) -> list[str]:
    return [v for v in text.replace(",", " ").split() if v]


def add_simulate_arguments(parser) -> None:
    """Arguments of `insight bench simulate` (lists are comma- or space-separated)."""
    d = SimConfig()
    g = parser.add_argument_group(f"{LABEL} (toy model, not a measurement)")
    g.add_argument("--out", default="runs/simulation",
                   help="output directory for simulation.json/.md/.png (default: %(default)s)")
    g.add_argument("--selectors", type=_strs, default=list(DEFAULT_SELECTORS),
                   help="selector types to compare (default: %s)" % ",".join(DEFAULT_SELECTORS))
    g.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default: %(default)s)")
    g.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="parallel processes (default: %(default)s)")
    sw = parser.add_argument_group("grid (each applies to the selectors that have it)")
    sw.add_argument("--lam", type=_floats, help="posterior forgetting factors, e.g. 1,0.9")
    sw.add_argument("--a0", type=_floats, help="prior alpha values")
    sw.add_argument("--b0", type=_floats, help="prior beta values")
    sw.add_argument("--prior", type=_strs,
                    help="fixed, empirical-bayes, grouped-empirical-bayes (needs --n-groups) "
                         "and/or feature-knn")
    sw.add_argument("--group-shrinkage", dest="group_shrinkage", type=_floats,
                    help="grouped prior: weight of the population prior, in prompts (default 20)")
    sw.add_argument("--half-life", dest="half_life", type=_half_lives,
                    help="time-aware forgetting: evidence half-life in rounds, e.g. none,10,30")
    sw.add_argument("--objective", type=_strs,
                    help="insight's objective: mi, mixed and/or mi+mixed")
    sw.add_argument("--mixed-weight", dest="mixed_weight", type=_floats,
                    help="weight of P(0 < s < k) in objective mi+mixed (default 1)")
    sw.add_argument("--decay", type=_strs, help="observed and/or all")
    sw.add_argument("--gamma", type=_floats, help="weight sharpness (power weight)")
    sw.add_argument("--sigma", type=_floats, help="gaussian weight width")
    sw.add_argument("--weight", type=_strs, help="weight family: power and/or gaussian")
    sw.add_argument("--tau", type=_floats, help="target success rate")
    sw.add_argument("--pool-ratio", dest="pool_ratio", type=_pool_ratios,
                    help="candidate pool = pool_ratio * B, e.g. none,8,16 (none: whole pool)")
    sw.add_argument("--max-num-gen-batches", dest="max_num_gen_batches", type=int,
                    help="dynamic-sampling cap on generation batches per round "
                         "(selector default: 10)")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                    help="any other selector field to sweep (repeatable)")
    w = parser.add_argument_group("simulated world")
    for name, help_ in (
            ("n_prompts", "training pool size"), ("n_heldout", "held-out prompts"),
            ("n_groups", "difficulty labels for the grouped prior (0: none)"),
            ("batch_size", "B, groups trained per round"), ("k", "rollouts per group"),
            ("budget", "rollouts per run")):
        w.add_argument("--" + name.replace("_", "-"), dest=name, type=int,
                       default=getattr(d, name), help=f"{help_} (default: %(default)s)")
    for name, help_ in (
            ("logit_mean", "mean initial success logit ('normal')"),
            ("logit_std", "spread of initial logits ('normal')"),
            ("beta_a", "Beta a of initial success rates ('beta')"),
            ("beta_b", "Beta b of initial success rates ('beta')"),
            ("lr", "own-prompt step per unit signal"),
            ("transfer_lr", "shared-skill step (generalization)"),
            ("transfer_width", "generalization kernel width, logits"),
            ("drift", "per-round random walk of per-prompt logits"),
            ("group_noise", "how loosely a label tracks difficulty, logits"),
            ("feature_noise", "noise of the feature prior's features, logits")):
        w.add_argument("--" + name.replace("_", "-"), dest=name, type=float,
                       default=getattr(d, name), help=f"{help_} (default: %(default)s)")
    w.add_argument("--difficulty", choices=("normal", "beta"), default=d.difficulty)
    w.add_argument("--signal", choices=("std", "var"), default=d.signal,
                   help="GRPO (std-normalized) or Dr. GRPO signal (default: %(default)s)")
    w.add_argument("--step", choices=("sgd", "normalized"), default=d.step,
                   help="step size proportional to summed signal, or Adam-like normalized")
    w.add_argument("--target-gains", dest="target_gains", type=_floats,
                   default=list(d.target_gains),
                   help="targets = initial held-out accuracy + each gain "
                        "(default: 0.05,0.1,0.15,0.2)")
    w.add_argument("--targets", type=_floats, help="absolute accuracy targets (override gains)")


def sim_config_from_args(args) -> SimConfig:
    """The simulated world from the parsed flags (every SimConfig field that is one)."""
    names = [f for f in SimConfig.__dataclass_fields__ if hasattr(args, f)]
    kw = {f: getattr(args, f) for f in names}
    for f in ("target_gains", "targets"):
        if kw.get(f) is not None:
            kw[f] = tuple(kw[f])
    return SimConfig(**kw)


def grid_from_args(args) -> dict[str, list]:
    """The sweep grid: the named list flags that were given, then each --grid KEY=V1,V2
    (values read as int, float, true/false or text)."""
    grid: dict[str, list] = {}
    for key in ("lam", "a0", "b0", "prior", "decay", "gamma", "sigma", "weight", "tau",
                "pool_ratio", "group_shrinkage", "half_life", "objective", "mixed_weight"):
        val = getattr(args, key, None)
        if val:
            grid[key] = list(val)
    for item in getattr(args, "grid", []) or []:
        if "=" not in item:
            raise ValueError(f"--grid expects KEY=V1,V2, got {item!r}")
        key, vals = item.split("=", 1)
        grid[key.strip().replace("-", "_")] = [_parse_scalar(v) for v in _strs(vals)]
    return grid


def _parse_scalar(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def run_simulate(args) -> int:
    """`insight bench simulate`: run the sweep, print progress and the table, write
    OUT/simulation.{json,md,png}. Returns a process exit code."""
    try:
        sim = sim_config_from_args(args)
        base = {}
        if getattr(args, "max_num_gen_batches", None) is not None:
            base["dynamic-sampling"] = {"max_num_gen_batches": args.max_num_gen_batches}
        variants = expand_grid(args.selectors, grid_from_args(args), base=base)
        if sim.n_groups == 0 and any(v.posterior.get("prior") == "grouped-empirical-bayes"
                                     for v in variants):
            raise ValueError("--prior grouped-empirical-bayes needs labelled prompts: "
                             "add --n-groups G (e.g. 5)")
    except Exception as err:  # bad flags: one clear line, no traceback
        print(f"simulate: {err}", file=sys.stderr)
        return 2
    seeds = list(range(args.seeds))
    total = len(variants) * len(seeds)
    print(f"{LABEL}: {len(variants)} variant(s) x {len(seeds)} seed(s) = {total} runs, "
          f"budget {sim.budget:,} rollouts each, {args.workers} worker(s)", flush=True)

    def progress(done, total_, res):
        s = res["summary"]
        print(f"  [{done:>3}/{total_}] {res['variant']:<40} seed {res['seed']}: "
              f"acc {s['initial_accuracy']:.3f} -> {s['final_accuracy']:.3f}, "
              f"zero-adv {s['zero_adv_share']:.2f}", flush=True)

    result = sweep(sim, variants, seeds, workers=max(1, args.workers), progress=progress)
    command = "insight bench simulate " + " ".join(sys.argv[3:]) \
        if len(sys.argv) > 2 and sys.argv[1:3] == ["bench", "simulate"] else ""
    paths = write_outputs(result, args.out, command=command)
    print()
    print(f"{LABEL} results ({DISCLAIMER})")
    print(results_table(result))
    print(f"\nwrote {paths['json']}, {paths['md']}, {paths['png']} "
          f"in {result['seconds']:.1f}s")
    return 0
