"""`insight` command line: train, resume, audit, score, bench, deploy, sync-mlflow.

Heavy imports (torch, Prefect, MLflow) happen inside each command, so `insight score`
and `--help` stay fast and a command only pays for what it uses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from flows import env  # noqa: F401  (environment defaults before anything imports Prefect)
from insight.record.layout import db_path


def _parse_value(text: str):
    """`--set rollout.k=4`: values are YAML scalars (numbers, booleans, lists)."""
    import yaml
    return yaml.safe_load(text)


def _overrides(args) -> dict:
    out = {}
    for item in getattr(args, "set", None) or []:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = _parse_value(value)
    if getattr(args, "selector", None):
        out["selector.type"] = args.selector
    if getattr(args, "rounds", None) is not None:
        out["rounds"] = args.rounds
    if getattr(args, "seed", None) is not None:
        out["seed"] = args.seed
    return out


def default_run_dir(cfg) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.name}-{cfg.selector.type}-s{cfg.seed}-{stamp}"


def cmd_train(args) -> int:
    from insight.config import load_config
    from insight.record.run import check_config, load_run, open_or_create_run
    from tasks.run_lock import run_lock

    run_dir = Path(args.run_dir) if args.run_dir else None
    # An existing run with no new config continues under its own stored config.
    continues = run_dir is not None and db_path(run_dir).exists() \
        and args.config is None and not args.set and not args.selector and args.seed is None
    cfg = None if continues else load_config(args.config, _overrides(args))
    # A config mistake is refused before a run directory exists; the checked problems
    # (loaded, rendered, validated) are then used as they are, not loaded again.
    problems = check_config(cfg) if cfg is not None else None
    run_dir = run_dir or default_run_dir(cfg)
    # Lock before reading or writing anything of the run: a second `train` on a run
    # that is training must not store its config before it is refused.
    with run_lock(run_dir):
        if continues:
            stored = load_run(run_dir).config
            cfg = stored.model_copy(update={"rounds": args.rounds or stored.rounds})
        run = open_or_create_run(run_dir, cfg, allow_changed=args.allow_changed,
                                 problems=problems)
        return _train(run, args.rounds or cfg.rounds, getattr(args, "max_new_rounds", None))


def cmd_resume(args) -> int:
    from insight.record.run import check_run_dir, load_run, open_or_create_run
    from tasks.run_lock import run_lock

    check_run_dir(args.run_dir)  # a file or a missing run: one line, nothing created
    with run_lock(args.run_dir, create=False):
        run = load_run(args.run_dir)
        run = open_or_create_run(run.run_dir, run.config, allow_changed=False)
        return _train(run, args.rounds or run.config.rounds, args.max_new_rounds)


def _train(run, rounds: int, max_new_rounds: int | None) -> int:
    from flows.train import train_from_cli

    print(f"run {run.run_id} in {run.run_dir}  selector={run.config.selector.type} "
          f"k={run.config.rollout.k} B={run.config.rollout.batch_size} rounds={rounds}",
          flush=True)
    t0 = time.time()
    summary = train_from_cli(str(run.run_dir), rounds, max_new_rounds)
    summary["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(summary), flush=True)
    return 0


def cmd_sync_mlflow(args) -> int:
    from insight.record.run import load_run
    from tasks.tracking import sync_or_explain, tracking_uri

    run = load_run(args.run_dir)
    done = sync_or_explain(run, uri=args.tracking_uri)
    print(json.dumps({"run_id": run.run_id, "tracking_uri": tracking_uri(run, args.tracking_uri),
                      "rounds_logged": done}))
    return 0


def cmd_deploy(args) -> int:
    from flows.deploy import serve_training
    from insight.config import load_config
    from insight.record.run import load_run, open_or_create_run

    if not args.work_pool and (args.image or args.job_variable):
        raise ValueError("--image and --job-variable go with --work-pool")
    if args.work_pool:
        from flows.cli_deploy import job_variables
        job_variables(args.job_variable)  # a malformed one is refused before a run exists
    if db_path(args.run_dir).exists() and args.config is None:
        run = load_run(args.run_dir)
        run = open_or_create_run(run.run_dir, run.config)
    else:
        run = open_or_create_run(args.run_dir, load_config(args.config, _overrides(args)))
    if args.work_pool:
        from flows.cli_deploy import run_deploy_to_work_pool
        return run_deploy_to_work_pool(args, run)
    print(f"serving scheduled training of {run.run_id} ({run.run_dir}): "
          f"{args.rounds_per_run} rounds per flow run; Ctrl-C stops", flush=True)
    serve_training(run, cron=args.cron, interval=args.interval,
                   rounds_per_run=args.rounds_per_run, rounds=args.rounds)
    return 0


def cmd_audit(args) -> int:
    from flows.cli_audit import run_audit
    return run_audit(args)


def cmd_score(args) -> int:
    from flows.cli_score import run_score
    return run_score(args) or 0


def cmd_bench_overhead(args) -> int:
    from insight.report.bench_overhead import run_overhead_benchmark
    result = run_overhead_benchmark(n_prompts=args.n, k=args.k, repeats=args.repeats)
    print(json.dumps(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="insight", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train (or continue) a run; prints a JSON summary last")
    tr.add_argument("--config", help="YAML config (default: configs/tiny.yaml)")
    tr.add_argument("--run-dir", help="run directory (default: runs/<name>-<selector>-s<seed>-<time>)")
    tr.add_argument("--selector", help="override selector.type (insight, uniform, mopps, ...)")
    tr.add_argument("--rounds", type=int, help="train up to this many rounds")
    tr.add_argument("--seed", type=int, help="run seed")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override any config field, e.g. --set rollout.k=4 (repeatable)")
    tr.add_argument("--max-new-rounds", type=int, help="stop after this many new rounds")
    tr.add_argument("--allow-changed", action="store_true",
                    help="continue an existing run even though its config or data changed")
    tr.set_defaults(func=cmd_train)

    rs = sub.add_parser("resume", help="continue a run from its first uncommitted round")
    rs.add_argument("--run-dir", required=True)
    rs.add_argument("--rounds", type=int, help="train up to this many rounds")
    rs.add_argument("--max-new-rounds", type=int)
    rs.set_defaults(func=cmd_resume)

    au = sub.add_parser("audit", help="why were prompts (not) selected: a round or a prompt")
    from flows.cli_audit import add_audit_arguments
    add_audit_arguments(au)
    au.set_defaults(func=cmd_audit)

    rp = sub.add_parser("replay", help="counterfactual: what another selector would have "
                                       "picked in a recorded run (no new rollouts)")
    from flows.cli_replay import add_replay_arguments, run_replay
    add_replay_arguments(rp)
    rp.set_defaults(func=run_replay)

    dp = sub.add_parser("deploy", help="serve the training flow on a schedule (Prefect), or "
                                       "register it with a work pool (--work-pool)")
    dp.add_argument("--run-dir", required=True, help="run to advance (created if missing)")
    dp.add_argument("--config", help="YAML config for a new run")
    dp.add_argument("--set", action="append", metavar="KEY=VALUE")
    dp.add_argument("--selector")
    dp.add_argument("--seed", type=int)
    dp.add_argument("--cron", help='cron schedule, e.g. "0 * * * *"')
    dp.add_argument("--interval", type=float, help="schedule every N seconds instead of cron")
    dp.add_argument("--rounds-per-run", type=int, default=5, help="rounds each scheduled run trains")
    dp.add_argument("--rounds", type=int, help="total rounds to reach")
    from flows.cli_deploy import add_work_pool_arguments
    add_work_pool_arguments(dp)
    dp.set_defaults(func=cmd_deploy)

    sm = sub.add_parser("sync-mlflow", help="backfill MLflow from the run store")
    sm.add_argument("--run-dir", required=True)
    sm.add_argument("--tracking-uri", help="log to this MLflow instead of the run's own")
    sm.set_defaults(func=cmd_sync_mlflow)

    sc = sub.add_parser("score", help="score posteriors from a Parquet/CSV file")
    try:
        from flows.cli_score import add_score_arguments
        add_score_arguments(sc)
    except ImportError:  # pragma: no cover - the selection core is always installed
        pass
    sc.set_defaults(func=cmd_score)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    ov = bench.add_parser("overhead", help="selection overhead at 1M prompts vs a memory floor")
    ov.add_argument("--n", type=int, default=1_000_000)
    ov.add_argument("--k", type=int, default=16)
    ov.add_argument("--repeats", type=int, default=3)
    ov.set_defaults(func=cmd_bench_overhead)

    from flows.bench_compare import add_compare_arguments, run_compare
    cmp_ = bench.add_parser("compare", help="real training runs per selector and seed, "
                                            "side by side (rollouts to accuracy targets)")
    add_compare_arguments(cmp_)
    cmp_.set_defaults(func=run_compare)

    from flows.cli_simulate import add_simulate_arguments, run_simulate
    sim = bench.add_parser("simulate", help="SIMULATION: toy learning dynamics for selector "
                                            "sweeps (not a measurement)")
    add_simulate_arguments(sim)
    sim.set_defaults(func=run_simulate)

    from flows.cli_bench_gpu import add_bench_gpu_arguments, bench_gpu_main
    gpu = bench.add_parser("gpu", help="a round's time and memory on one GPU: random-weight "
                                       "0.5B Qwen2, B=64, k=8, 256 tokens, 3 rounds")
    add_bench_gpu_arguments(gpu)
    gpu.set_defaults(func=bench_gpu_main)
    return p


# Errors that end a command with one line and an exit status instead of a traceback
# (INSIGHT_DEBUG=1 shows it): (module, class name, exit status). Looked up by module so
# that `insight score` need not import Prefect or MLflow to recognise their errors; a
# module never imported cannot have raised its error.
_ONE_LINE_ERRORS = (
    ("insight.record.runlock", "RunLockedError", 3),     # another process trains this run
    ("flows.train", "TrainingFailed", 1),                # traceback is in the run's log
    ("tasks.tracking", "TrackingUnavailable", 2),        # MLflow unreachable or refusing
    ("insight.record.store", "RunDamagedError", 2),      # unreadable database, lost files
    ("insight.policy.vllm_engine", "VLLMUnavailable", 2),  # no vLLM, or it cannot start
    ("builtins", "NotADirectoryError", 2),               # a file given as a run directory
    ("builtins", "FileNotFoundError", 2),                # no run, no model, no input
    ("builtins", "ValueError", 2),                       # bad config, bad data
)


def _exit_status(err: BaseException) -> int | None:
    for module, name, status in _ONE_LINE_ERRORS:
        kind = getattr(sys.modules.get(module), name, None)
        if kind is not None and isinstance(err, kind):
            return status
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as err:
        status = _exit_status(err)
        if status is None or os.environ.get("INSIGHT_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
