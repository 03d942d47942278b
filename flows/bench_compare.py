"""`insight bench compare`: data efficiency of selectors, measured by real training runs.

    insight bench compare --config configs/tiny.yaml \\
        --selectors insight,uniform,mopps,dynamic-sampling,difficulty --seeds 3 --out D

One run per (selector, seed) through the training flow (`flows.train.train_flow`), every
run with the same config: model, data, k, batch size, rounds, evaluation schedule, and
run seed s for every selector. Runs live in ``D/runs/<selector>-s<seed>``; running the
command again with the same ``--out`` skips finished runs and continues unfinished ones
(the training flow resumes from the first uncommitted round), and a run whose setup
changed is refused, not spliced. Then ``insight.report.bench_analysis`` turns the runs' stores
into ``D/results.json``, ``D/results.md`` and ``D/curves.png``.

Execution: ``--workers 1`` trains the runs one after another in this process (one Prefect
API for all); ``--workers N`` trains N runs at a time in N spawned worker processes that
share one Prefect API server started here (or the one PREFECT_API_URL names). Each
worker pins its math libraries to cpu_count // N threads; torch follows the config's
``policy.threads``. MLflow tracking is off for bench runs unless ``--tracking``: the
store is the record, and ``insight sync-mlflow --run-dir D/runs/<run>`` backfills later.
With ``--tracking`` the runs log to one store (``D/mlflow.db`` unless
``--set tracking.tracking_uri=...``), nested under one parent run that gets the results
(flows/bench_tracking.py).

CPU default (configs/tiny.yaml, k=8, B=32, 2 cores): 5 selectors x 3 seeds x 30 rounds,
held-out evaluation every 3 rounds, 2 workers, dynamic sampling's refills adding the most.
Measured on the shared 2-core machine: the 60-round comparison of docs/benchmarks.md
(15 runs, eval every 5) took 34 min; 2 workers give ~1.6x the throughput of one process
once started (startup ~45 s: Prefect server, torch import in each worker).
``configs/bench-mixed.yaml`` is a second setting whose pool holds prompts the policy
never solves (docs/benchmarks.md section 1b; 80 rounds took 40 min).
``configs/bench-wide.yaml`` is the large-pool setting (section 1e): B = 16 from 2,048
prompts, one shared evaluation draw seed; run it with 5 seeds or more, since
``results.json`` carries bootstrap intervals over seeds (``insight.report.bench_power``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flows import env  # noqa: F401  (Prefect/MLflow defaults before their import)
from insight.report import bench_analysis as ba

DEFAULT_SELECTORS = ("insight", "uniform", "mopps", "dynamic-sampling", "difficulty")
DEFAULT_SEEDS = 3
DEFAULT_ROUNDS = 30       # see the module docstring for what the default costs
DEFAULT_EVAL_EVERY = 3
DEFAULT_BASELINE = "uniform"
RUNS_DIR = "runs"
MANIFEST = "compare.json"


@dataclass
class RunSpec:
    """One training run of the comparison; plain data, so it pickles to a worker."""

    selector: str
    seed: int
    run_dir: str
    config: str | None
    overrides: dict = field(default_factory=dict)
    rounds: int = DEFAULT_ROUNDS

    @property
    def name(self) -> str:
        return f"{self.selector}-s{self.seed}"


# ------------------------------------------------------------------------------------
# planning
# ------------------------------------------------------------------------------------
def parse_seeds(text: str | int) -> list[int]:
    """``3`` means seeds 0, 1, 2; ``"0,4,7"`` lists them."""
    s = str(text).strip()
    if "," in s:
        seeds = [int(x) for x in s.split(",") if x.strip()]
    else:
        n = int(s)
        if n < 1:
            raise ValueError(f"--seeds: need at least one seed, got {n}")
        seeds = list(range(n))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: duplicate seeds in {text!r}")
    return seeds


def parse_selectors(text: str) -> list[str]:
    from insight.selection.registry import parse_selector_config
    names = [s.strip() for s in str(text).split(",") if s.strip()]
    if not names:
        raise ValueError("--selectors: none given")
    for name in names:
        try:
            parse_selector_config(name)
        except Exception:  # noqa: BLE001 - pydantic's message lists the valid names
            raise ValueError(f"--selectors: unknown selector {name!r}") from None
    if len(set(names)) != len(names):
        raise ValueError(f"--selectors: duplicate names in {text!r}")
    return names


def plan_runs(out: str | Path, config: str | None, selectors, seeds, *, rounds: int,
              eval_every: int | None, sets: dict | None = None,
              tracking: bool = False) -> list[RunSpec]:
    """Every (selector, seed) run with its config overrides. The selector override comes
    first (it resets the selector section), the user's ``--set`` values next, and the
    comparison's own fields last, so they are identical across selectors."""
    specs = []
    for seed in seeds:
        for sel in selectors:
            over = {"selector.type": sel, **(sets or {}), "seed": int(seed), "rounds": int(rounds),
                    "tracking.enabled": bool(tracking)}
            if tracking and "tracking.tracking_uri" not in over:
                # one store for the whole benchmark, so its runs nest under one parent
                from flows.bench_tracking import shared_tracking_uri
                over["tracking.tracking_uri"] = shared_tracking_uri(out)
            if eval_every:
                over["eval.every"] = int(eval_every)
            specs.append(RunSpec(sel, int(seed), str(Path(out) / RUNS_DIR / f"{sel}-s{seed}"),
                                 None if config is None else str(config), over, int(rounds)))
    return specs


def _load_cfg(spec: RunSpec):
    from insight.config import load_config
    return load_config(spec.config, spec.overrides)


def prepare_run(spec: RunSpec) -> int:
    """Create the run or reopen it (refusing a changed setup); the rounds still to train."""
    from insight.record.run import open_or_create_run
    from insight.record.store import RunStore

    run = open_or_create_run(spec.run_dir, _load_cfg(spec))
    with RunStore(run.run_dir) as db:
        done = db.last_committed_round(run.run_id)
        has_initial = 0 in db.committed_rounds(run.run_id)
    return max(0, spec.rounds - done) if has_initial else spec.rounds


# ------------------------------------------------------------------------------------
# training (in this process or in a worker)
# ------------------------------------------------------------------------------------
def train_one(spec: RunSpec, progress: bool = False) -> dict:
    """Train one run to its target round through the Prefect flow; the flow's summary
    plus the wall time of this call."""
    from flows.train import flow_for
    from insight.record.run import open_or_create_run

    run = open_or_create_run(spec.run_dir, _load_cfg(spec))
    t0 = time.perf_counter()
    summary = flow_for(str(run.run_dir))(str(run.run_dir), rounds=spec.rounds,
                                         progress=progress)
    summary["call_seconds"] = time.perf_counter() - t0
    return summary


def _init_worker(environ: dict) -> None:
    os.environ.update(environ)


def _worker_environ(workers: int, api_url: str | None) -> dict:
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    environ = {k: threads for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                    "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")}
    if api_url:
        environ["PREFECT_API_URL"] = api_url
    return environ


def _shared_prefect_api():
    """The API URL workers should share: the configured one, or a temporary server
    started here (returned so it can be stopped)."""
    from prefect.settings import PREFECT_API_URL
    url = PREFECT_API_URL.value()
    if url:
        return url, None
    from prefect.server.api.server import SubprocessASGIServer
    server = SubprocessASGIServer()
    server.start()
    return server.api_url, server


# ------------------------------------------------------------------------------------
# reading finished runs
# ------------------------------------------------------------------------------------
def read_run_record(run_dir: str | Path, rounds: int | None = None) -> dict:
    """A run's curve and per-round metrics from its store, committed rounds only (and
    only up to `rounds`), in the shape `bench_analysis.analyze` takes."""
    from insight.record.store import RunStore

    with RunStore(run_dir, read_only=True) as db:
        run = db.get_run()
        if run is None:
            raise FileNotFoundError(f"no run in {run_dir}")
        rid = run["run_id"]
        rows = db.committed_round_metrics(rid)
        evals = db.committed_evals(rid)
        by_level = db.group_outcomes_by_difficulty(rid, rounds)
        walls = db.round_wall_seconds(rid)
    if rounds is not None:
        rows = [r for r in rows if r["round"] <= rounds]
        evals = [e for e in evals if e["round"] <= rounds]
    cum, total = {}, 0
    per_round = []
    for r in rows:
        total += int(r["rollouts_consumed"] or 0)
        cum[r["round"]] = total
        if r["round"] == 0:
            continue
        m = json.loads(r["metrics_json"] or "{}")
        per_round.append({
            "round": r["round"], "rollouts": int(r["rollouts_consumed"] or 0),
            "rollouts_total": total,
            **{k: m.get(k) for k in ("zero_adv_share", "all_fail_share", "all_success_share",
                                     "extra_rollouts", "seconds_select", "reward_mean")},
            "seconds_round": walls.get(r["round"]),
        })
    cfg = json.loads(run["config_json"])
    return {
        "selector": run["selector"], "seed": int(run["seed"]), "run_id": rid,
        "run_dir": str(run_dir),
        "rounds_done": max(cum) if cum else -1,
        "evals": [{"round": e["round"], "rollouts": cum.get(e["round"], 0),
                   "accuracy": e["accuracy"], "greedy_accuracy": e["greedy_accuracy"]}
                  for e in evals if e["round"] in cum],
        "rounds": per_round,
        "wall_seconds": sum(w for rd, w in walls.items() if w is not None and rd in cum),
        "k": cfg["rollout"]["k"], "batch_size": cfg["rollout"]["batch_size"],
        # Where the generated groups went, per prompt difficulty level (when the dataset
        # has levels): the first thing to look at when a selector saves less than hoped.
        "groups_by_difficulty": by_level,
    }


# ------------------------------------------------------------------------------------
# the comparison
# ------------------------------------------------------------------------------------
def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """One line per finished run, with an ETA from the seconds per trained round so far."""

    def __init__(self, total_runs: int, rounds_left: dict[str, int], workers: int, say):
        self.total = total_runs
        self.left = dict(rounds_left)
        self.workers = workers
        self.say = say
        self.t0 = time.perf_counter()
        self.finished = 0
        self.trained_rounds = 0
        self.trained_seconds = 0.0

    def skipped(self, spec: RunSpec) -> None:
        self.finished += 1
        self.say(f"[{self.finished:>2}/{self.total}] {spec.name:<22} already finished "
                 f"({spec.rounds} rounds), skipped")

    def done(self, spec: RunSpec, summary: dict | None, error: str | None, target_level) -> None:
        self.finished += 1
        n = self.left.pop(spec.name, 0)
        elapsed = time.perf_counter() - self.t0
        if summary is not None:
            self.trained_rounds += n
            self.trained_seconds += summary.get("call_seconds", 0.0)
        rate = self.trained_seconds / self.trained_rounds if self.trained_rounds else None
        remaining = sum(self.left.values())
        eta = rate * remaining / max(1, min(self.workers, len(self.left))) if rate else None
        if not self.left:
            eta = 0.0
        head = f"[{self.finished:>2}/{self.total}] {spec.name:<22}"
        if error is not None:
            first = error.strip().splitlines()[0] if error.strip() else error
            more = " (full error in results.json)" if first != error.strip() else ""
            self.say(f"{head} FAILED: {first}{more}  | elapsed {_hms(elapsed)}, "
                     f"ETA {_hms(eta)}")
            return
        ia, fa = summary.get("initial_accuracy"), summary.get("final_accuracy")
        hit = summary.get("_target_hit")
        hit_s = ""
        if target_level is not None:
            hit_s = (f"  target {target_level:.3f} @ {hit:,.0f} rollouts" if hit is not None
                     else f"  target {target_level:.3f} not reached")
        acc = (f"acc {ia:.3f} -> {fa:.3f}" if ia is not None and fa is not None else "acc —")
        self.say(f"{head} {summary['rounds']} rounds  {summary['rollouts']:>7,} rollouts  "
                 f"{acc}{hit_s}  {_hms(summary.get('call_seconds'))}  "
                 f"| elapsed {_hms(elapsed)}, ETA {_hms(eta)}")


def _target_hit(run_dir: str, rounds: int, reference: float | None, target: ba.Target):
    """Rollouts at which one run crossed the main target (for the progress line)."""
    try:
        rec = read_run_record(run_dir, rounds)
        xs, ys = ba.run_curve(rec)
        level = target.level(reference if reference is not None else ys[0])
        return level, ba.first_crossing(xs, ys, level)
    except Exception:  # noqa: BLE001 - the progress line must never stop the bench
        return None, None


def compare(out: str | Path, config: str | None = None, selectors=DEFAULT_SELECTORS,
            seeds=range(DEFAULT_SEEDS), *, rounds: int = DEFAULT_ROUNDS,
            eval_every: int | None = DEFAULT_EVAL_EVERY, sets: dict | None = None,
            workers: int = 1, tracking: bool = False, targets=ba.DEFAULT_TARGETS,
            main_target=ba.DEFAULT_MAIN_TARGET, baseline: str | None = DEFAULT_BASELINE,
            train: bool = True, verbose: bool = False, say=None) -> dict:
    """Train (or resume) every run, then analyze and write the results. Returns the
    results dict (also in ``out/results.json``); ``results["failed_runs"]`` lists runs
    that did not finish."""
    say = say or (lambda line: print(line, flush=True))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    selectors, seeds = list(selectors), list(seeds)
    targets = ba.parse_targets(targets)
    main = ba.parse_target(main_target)
    specs = plan_runs(out, config, selectors, seeds, rounds=rounds, eval_every=eval_every,
                      sets=sets, tracking=tracking)
    manifest = {"config": config, "selectors": selectors, "seeds": seeds, "rounds": rounds,
                "eval_every": eval_every, "sets": sets or {}, "tracking": tracking,
                "runs": [asdict(s) for s in specs]}

    failed: dict[str, str] = {}
    t_start = time.perf_counter()
    parent = None        # the MLflow run the runs nest under (--tracking)
    if train:
        # Validate and create every run first: a bad config or a changed setup fails
        # here, before hours of training.
        left = {s.name: prepare_run(s) for s in specs}
        todo = [s for s in specs if left[s.name] > 0]
        if tracking:
            from flows.bench_tracking import PARENT_KEY, start_parent
            from insight.record.run import load_run
            parent = start_parent(out, out / MANIFEST, [load_run(s.run_dir) for s in specs],
                                  {"selectors": selectors, "seeds": seeds, "rounds": rounds,
                                   "config": config}, say)
            manifest[PARENT_KEY] = parent
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
        workers = max(1, min(int(workers), len(todo) or 1))
        say(f"bench compare: {len(specs)} runs ({len(selectors)} selectors x {len(seeds)} "
            f"seeds, {rounds} rounds, eval every {eval_every or 'config'}), "
            f"{len(specs) - len(todo)} already finished, {sum(left.values())} rounds to "
            f"train, {workers} worker{'s' if workers > 1 else ''} -> {out}")
        prog = Progress(len(specs), {s.name: left[s.name] for s in todo}, workers, say)
        # Round-0 accuracy of the runs no worker is writing (finished or skipped): the
        # reference of the target shown in the progress lines.
        initials: dict[str, float] = {}

        def note_initial(spec: RunSpec) -> float | None:
            try:
                rec = read_run_record(spec.run_dir, 0)
                if rec["evals"]:
                    initials[spec.name] = rec["evals"][0]["accuracy"]
            except Exception:  # noqa: BLE001 - the progress line must never stop the bench
                pass
            return sum(initials.values()) / len(initials) if initials else None

        for s in specs:
            if left[s.name] == 0:
                prog.skipped(s)
                note_initial(s)

        def finish(spec, summary, error):
            level = None
            if summary is not None:
                reference = note_initial(spec)
                level, summary["_target_hit"] = _target_hit(spec.run_dir, spec.rounds,
                                                            reference, main)
            else:
                failed[spec.name] = error
            prog.done(spec, summary, error, level)

        if workers == 1:
            for spec in todo:
                try:
                    summary = train_one(spec, progress=verbose)
                except KeyboardInterrupt:
                    raise
                except Exception as err:  # noqa: BLE001 - one failed run must not stop the rest
                    finish(spec, None, f"{type(err).__name__}: {err}")
                else:
                    finish(spec, summary, None)
        elif todo:
            _train_parallel(todo, workers, finish)

    records, incomplete = [], []
    for s in specs:
        try:
            rec = read_run_record(s.run_dir, s.rounds)
        except FileNotFoundError:
            incomplete.append({"run": s.name, "rounds_done": None})
            continue
        if rec["rounds_done"] < s.rounds or not rec["evals"]:
            incomplete.append({"run": s.name, "rounds_done": rec["rounds_done"]})
        else:
            records.append(rec)
    if not records:
        _end_parent(parent, specs, out, failed or {"*": "no finished run"}, say)
        raise RuntimeError(f"no finished run to analyze in {out / RUNS_DIR}"
                           + (f"; failed: {failed}" if failed else ""))
    res = ba.analyze(records, targets=targets, main_target=main,
                     baseline=baseline if baseline in selectors else None, selectors=selectors)
    k, b = {r["k"] for r in records}, {r["batch_size"] for r in records}
    res["setup"] = {"config": config, "rounds": rounds, "eval_every": eval_every,
                    "seeds": seeds, "selectors": selectors, "k": sorted(k),
                    "batch_size": sorted(b), "sets": sets or {},
                    "workers": workers if train else None,
                    "out": str(out)}
    res["incomplete_runs"] = incomplete
    res["failed_runs"] = failed
    res["bench_seconds"] = time.perf_counter() - t_start
    (out / "results.json").write_text(json.dumps(res, indent=2))
    (out / "results.md").write_text(ba.to_markdown(res) + _md_footer(res))
    ba.plot_curves(res, out / "curves.png")
    _end_parent(parent, specs, out, failed, say)
    return res


def _end_parent(parent, specs, out, failed, say) -> None:
    if parent is not None:
        from flows.bench_tracking import end_parent
        end_parent(parent, specs[0].overrides["tracking.tracking_uri"], out, failed, say)


def _md_footer(res: dict) -> str:
    s = res["setup"]
    config = s["config"] or "configs/tiny.yaml (default)"
    sets = "".join(f" `--set {k}={v}`" for k, v in (s.get("sets") or {}).items())
    lines = ["", f"Setup: config `{config}`{sets}, {s['rounds']} rounds, "
             f"k={','.join(map(str, s['k']))}, B={','.join(map(str, s['batch_size']))}, "
             f"held-out evaluation every {s['eval_every'] or 'config'} rounds, seeds "
             f"{s['seeds']}."
             + (f" Speedup: mean rollouts to the main target of `{res['baseline']}` divided "
                "by the selector's." if res.get("baseline") else "")]
    if res["incomplete_runs"]:
        lines.append(f"Not analyzed (unfinished or failed): "
                     f"{', '.join(r['run'] for r in res['incomplete_runs'])}.")
    return "\n".join(lines) + "\n"


def _train_parallel(todo: list[RunSpec], workers: int, finish) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    api_url, server = _shared_prefect_api()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                               initializer=_init_worker,
                               initargs=(_worker_environ(workers, api_url),))
    try:
        pending = {pool.submit(train_one, spec): spec for spec in todo}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                spec = pending.pop(fut)
                err = fut.exception()
                if err is None:
                    finish(spec, fut.result(), None)
                else:
                    finish(spec, None, f"{type(err).__name__}: {err}")
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if server is not None:
            server.stop()


# ------------------------------------------------------------------------------------
# command line glue (wired into `insight bench compare` by flows/cli.py)
# ------------------------------------------------------------------------------------
def add_compare_arguments(p) -> None:
    p.add_argument("--config", help="YAML config shared by every run (default: configs/tiny.yaml)")
    p.add_argument("--selectors", default=",".join(DEFAULT_SELECTORS),
                   help="comma-separated selectors (default: %(default)s)")
    p.add_argument("--seeds", default=str(DEFAULT_SEEDS),
                   help="number of seeds N (seeds 0..N-1) or a comma-separated list of seeds "
                        "('4,' is the single seed 4) (default: %(default)s)")
    p.add_argument("--out", required=True, help="output directory; re-running with it resumes")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                   help="training rounds per run (default: %(default)s)")
    p.add_argument("--eval-every", type=int, default=DEFAULT_EVAL_EVERY,
                   help="held-out evaluation every N rounds, and at the last "
                        "(default: %(default)s; 0 keeps the config's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field for every run (repeatable)")
    p.add_argument("--workers", type=int, default=None,
                   help="runs trained at a time, each in its own process (default: "
                        "2 when 2+ CPUs, else 1; 1 trains in this process)")
    p.add_argument("--targets", default=",".join(ba.DEFAULT_TARGETS),
                   help="accuracy targets: +D above the initial accuracy, or absolute "
                        "levels (default: %(default)s)")
    p.add_argument("--main-target", default=ba.DEFAULT_MAIN_TARGET,
                   help="target of `rollouts_to_target` (default: %(default)s)")
    p.add_argument("--baseline", default=DEFAULT_BASELINE,
                   help="selector the speedup is relative to (default: %(default)s)")
    p.add_argument("--tracking", action="store_true",
                   help="also log every run to MLflow, nested under one parent run "
                        "(in D/mlflow.db unless tracking.tracking_uri is set)")
    p.add_argument("--analyze-only", action="store_true",
                   help="train nothing; re-analyze the runs already in --out")
    p.add_argument("--verbose", action="store_true",
                   help="per-round progress lines too (with --workers 1)")


def default_workers() -> int:
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def run_compare(args) -> int:
    """`insight bench compare`: exit 0 when every run finished, 1 when some failed."""
    sets = parse_sets(args.set)
    res = compare(
        args.out, args.config, parse_selectors(args.selectors), parse_seeds(args.seeds),
        rounds=args.rounds, eval_every=args.eval_every or None, sets=sets,
        workers=args.workers if args.workers is not None else default_workers(),
        tracking=args.tracking, targets=args.targets, main_target=args.main_target,
        baseline=args.baseline or None, train=not args.analyze_only, verbose=args.verbose)
    out = Path(args.out)
    print((out / "results.md").read_text(), flush=True)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'curves.png'}", flush=True)
    return 1 if res["failed_runs"] or res["incomplete_runs"] else 0


def parse_sets(items: list[str] | None) -> dict:
    """``--set rollout.k=4``: values are YAML scalars, as for `insight train`."""
    import yaml
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="insight bench compare", description=__doc__.splitlines()[0])
    add_compare_arguments(p)
    return run_compare(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
