"""`insight deploy --work-pool NAME`: the options that register the training flow with a
Prefect work pool instead of serving it from this process (flows/deploy.py)."""

from __future__ import annotations

import json


def add_work_pool_arguments(p) -> None:
    p.add_argument("--work-pool", metavar="NAME",
                   help="register the flow with this Prefect work pool (process, docker, ...) "
                        "and return, instead of serving it from this process; needs "
                        "PREFECT_API_URL and the pool to exist")
    p.add_argument("--image", help="with --work-pool: the image a Docker or Kubernetes pool "
                                   "runs, used as it is (e.g. insight-rlvr:gpu)")
    p.add_argument("--job-variable", action="append", metavar="KEY=VALUE",
                   help="with --work-pool: a job variable of the pool's base job template, "
                        "value as YAML, e.g. --job-variable 'volumes=[\"runs:/runs\"]' "
                        "(repeatable)")


def job_variables(items: list[str] | None) -> dict:
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--job-variable expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run_deploy_to_work_pool(args, run) -> int:
    from flows.deploy import deploy_to_work_pool

    deployment_id = deploy_to_work_pool(
        run, work_pool=args.work_pool, image=args.image,
        job_variables=job_variables(args.job_variable), cron=args.cron,
        interval=args.interval, rounds_per_run=args.rounds_per_run, rounds=args.rounds)
    print(json.dumps({"deployment_id": deployment_id, "work_pool": args.work_pool,
                      "run_id": run.run_id, "run_dir": str(run.run_dir),
                      "rounds_per_run": args.rounds_per_run}), flush=True)
    return 0
