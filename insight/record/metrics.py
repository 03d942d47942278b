"""Per-round health metrics, computed from the store (so they can be recomputed and
backfilled into MLflow later from the record alone).

The one that matters most for data selection: the share of zero-advantage groups, i.e.
groups whose k rollouts all failed or all succeeded. Their gradient is exactly zero, so
every rollout spent on them is wasted compute. It is reported split into all-0 and all-1.

The queries are `RunStore`'s named ones; this module keeps the arithmetic over them.
"""

from __future__ import annotations

from insight.record.store import RunStore


def round_metrics(db: RunStore, run_id: str, round_: int, train_stats: dict | None = None) -> dict:
    groups = db.group_outcomes(run_id, round_)
    if not groups:
        raise RuntimeError(f"round {round_} has no rollouts")
    n_groups = len(groups)
    rollouts = sum(g["k"] for g in groups)
    zero = [g for g in groups if (g["sd"] or 0.0) == 0.0]
    kept = [g for g in groups if g["kept"]]
    m = {
        "rollouts": rollouts,
        "groups": n_groups,
        "kept_groups": len(kept),
        "reward_mean": sum(g["r"] * g["k"] for g in groups) / rollouts,
        "success_rate": sum(g["s"] for g in groups) / rollouts,
        "trained_reward_mean": (sum(g["r"] * g["k"] for g in kept) / max(1, sum(g["k"] for g in kept))),
        "zero_adv_share": len(zero) / n_groups,
        "all_fail_share": sum(1 for g in zero if g["s"] == 0) / n_groups,
        "all_success_share": sum(1 for g in zero if g["s"] == g["k"]) / n_groups,
        "extra_rollouts": rollouts - sum(g["k"] for g in kept),
    }
    sel = db.selected_score_stats(run_id, round_)
    m.update({"score_mean": sel["mean"], "score_min": sel["lo"], "score_max": sel["hi"],
              "selected_mi_mean": sel["mi"], "selected_weight_mean": sel["w"],
              "selected_posterior_mean": sel["m"]})
    prev = db.rollouts_committed_before(run_id, round_)
    m["rollouts_total"] = int(prev) + rollouts
    ev = db.eval_row(run_id, round_)
    if ev is not None:
        m["heldout_accuracy"] = ev["accuracy"]
        if ev["greedy_accuracy"] is not None:
            m["heldout_greedy_accuracy"] = ev["greedy_accuracy"]
    for row in db.stage_times(run_id, round_):
        m[f"seconds_{row['stage']}"] = row["seconds"]
        if row["wall_seconds"] is not None:
            m[f"overhead_{row['stage']}"] = max(0.0, row["wall_seconds"] - row["seconds"])
    for key, val in (train_stats or {}).items():
        if isinstance(val, (int, float)):
            m[f"train_{key}"] = float(val)
    return {k: (float(v) if v is not None else None) for k, v in m.items()}


def format_progress(round_: int, target: int, m: dict) -> str:
    """The one line a person watches per round."""
    acc = m.get("heldout_accuracy")
    acc_s = f"  held-out {acc:.3f}" if acc is not None else ""
    secs = sum(v for k, v in m.items() if k.startswith("seconds_") and v is not None)
    return (f"round {round_:3d}/{target}  reward {m['reward_mean']:.3f}  "
            f"zero-adv {m['zero_adv_share']:.2f} (all-0 {m['all_fail_share']:.2f}, "
            f"all-1 {m['all_success_share']:.2f})  rollouts {int(m['rollouts_total'])}"
            f"{acc_s}  {secs:.1f}s")


def summarize(run) -> dict:
    """The JSON summary `insight train` prints last: what a script needs to compare runs.

    `final_accuracy` is the last *evaluated* committed round's, which need not be the last
    round (evaluation runs every `eval.every` rounds and at the configured last one; a run
    resumed past it ends between evaluations), so `final_accuracy_round` says which."""
    with RunStore(run.run_dir) as db:
        rounds = db.committed_rounds(run.run_id)
        evals = db.committed_evals(run.run_id)
        agg = db.summary_aggregates(run.run_id)
        stage = db.stage_time_means(run.run_id)
    first, last = (evals[0], evals[-1]) if evals else ({}, {})
    return {
        "run_id": run.run_id,
        "run_dir": str(run.run_dir),
        "selector": run.config.selector.type,
        "seed": run.config.seed,
        "rounds": max(rounds) if rounds else 0,
        "rollouts": int(agg["rollouts"]),
        "initial_accuracy": first.get("accuracy"),
        "final_accuracy": last.get("accuracy"),
        "final_accuracy_round": last.get("round"),
        "initial_greedy_accuracy": first.get("greedy_accuracy"),
        "final_greedy_accuracy": last.get("greedy_accuracy"),
        "zero_adv_share_mean": agg["z"],
        "stage_seconds_mean": {s["stage"]: s["s"] for s in stage},
        "stage_overhead_seconds_mean": {s["stage"]: s["o"] for s in stage},
    }
