"""Training as a Prefect deployment whose every run trains a few more rounds of the
same run: served from this process (`insight deploy`, `flow.serve`), or registered with a
work pool whose workers run it (`insight deploy --work-pool NAME`, `flow.deploy`).

Each flow run resumes from the first uncommitted round (the store says where the last
one stopped) and trains at most `rounds_per_run` rounds. Overlap is refused twice over:
the deployment's concurrency limit of 1 cancels a new run while one is in flight, and
the run directory's training lock refuses a second process outright.
"""

from __future__ import annotations

from flows import env  # noqa: F401
from flows.train import flow_for, train_flow
from insight.record.run import Run


def deployment_name(run: Run) -> str:
    return f"insight-{run.run_id}"


def _parameters(run: Run, rounds: int | None, rounds_per_run: int) -> dict:
    return {"run_dir": str(run.run_dir), "rounds": rounds or run.config.rounds,
            "max_new_rounds": rounds_per_run}


def _one_at_a_time():
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    return ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)


def serve_training(run: Run, *, cron: str | None = None, interval: float | None = None,
                   rounds_per_run: int = 5, rounds: int | None = None) -> None:
    """Block serving the schedule (Ctrl-C stops it). Against a Prefect server when
    PREFECT_API_URL is set, else against the local ephemeral API."""
    if (cron is None) == (interval is None):
        raise ValueError("give exactly one of --cron or --interval")
    # the run's task runner (Ray when orchestration.task_runner says so)
    flow_for(str(run.run_dir)).serve(
        name=deployment_name(run),
        cron=cron,
        interval=interval,
        parameters=_parameters(run, rounds, rounds_per_run),
        global_limit=_one_at_a_time(),
        description=f"Scheduled training of {run.run_id} ({run.run_dir}), "
                    f"{rounds_per_run} rounds per flow run",
        tags=["insight", run.config.selector.type],
    )


# The flow is loaded by module path from the installed package, not from a file of a
# checkout: a process worker needs `insight-rlvr` installed, a Docker work pool an image
# that has it (docker/Dockerfile, docker/Dockerfile.gpu), and no code storage is pulled.
ENTRYPOINT = "flows.train.train_flow"


def deploy_to_work_pool(run: Run, *, work_pool: str, image: str | None = None,
                        job_variables: dict | None = None, cron: str | None = None,
                        interval: float | None = None, rounds_per_run: int = 5,
                        rounds: int | None = None) -> str:
    """Register the training of `run` with a work pool (`flow.deploy`) and return the
    deployment's id; the pool's workers run it, on its schedule if one is given (at most
    one of cron and interval), else when someone runs the deployment. `image` is the
    image a Docker (or Kubernetes) pool starts, used as it is: nothing is built or
    pushed. The run directory must be the same path for the workers (a shared volume).
    Needs a Prefect server (PREFECT_API_URL) where the pool exists."""
    from prefect.deployments.runner import EntrypointType

    if cron is not None and interval is not None:
        raise ValueError("give at most one of --cron or --interval")
    deployment_id = train_flow.deploy(
        name=deployment_name(run),
        work_pool_name=work_pool,
        image=image,
        build=False,
        push=False,
        job_variables=job_variables or {},
        cron=cron,
        interval=interval,
        parameters=_parameters(run, rounds, rounds_per_run),
        concurrency_limit=_one_at_a_time(),
        description=f"Training of {run.run_id} ({run.run_dir}), "
                    f"{rounds_per_run} rounds per flow run",
        tags=["insight", run.config.selector.type],
        entrypoint_type=EntrypointType.MODULE_PATH,
        print_next_steps=False,
        ignore_warnings=True,
    )
    return str(deployment_id)
