"""Training on a schedule: `insight deploy` serves the training flow as a Prefect
deployment whose every scheduled run trains a few more rounds of the same run.

Each scheduled flow run resumes from the first uncommitted round (the store says where
the last one stopped) and trains at most `rounds_per_run` rounds. Overlap is refused
twice over: the deployment's concurrency limit of 1 cancels a new run while one is in
flight, and the run directory's training lock refuses a second process outright.
"""

from __future__ import annotations

from flows import env  # noqa: F401
from flows.train import train_flow
from insight.record.run import Run


def deployment_name(run: Run) -> str:
    return f"insight-{run.run_id}"


def serve_training(run: Run, *, cron: str | None = None, interval: float | None = None,
                   rounds_per_run: int = 5, rounds: int | None = None) -> None:
    """Block serving the schedule (Ctrl-C stops it). Against a Prefect server when
    PREFECT_API_URL is set, else against the local ephemeral API."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    if (cron is None) == (interval is None):
        raise ValueError("give exactly one of --cron or --interval")
    train_flow.serve(
        name=deployment_name(run),
        cron=cron,
        interval=interval,
        parameters={"run_dir": str(run.run_dir), "rounds": rounds or run.config.rounds,
                    "max_new_rounds": rounds_per_run},
        global_limit=ConcurrencyLimitConfig(limit=1,
                                            collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        description=f"Scheduled training of {run.run_id} ({run.run_dir}), "
                    f"{rounds_per_run} rounds per flow run",
        tags=["insight", run.config.selector.type],
    )
