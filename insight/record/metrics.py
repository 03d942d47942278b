"""Per-round health metrics, computed from the store (so they can be recomputed and
backfilled into MLflow later from the record alone).

The one that matters most for data selection: the share of zero-advantage groups, i.e.
groups whose k rollouts all failed or all succeeded. Their gradient is exactly zero, so
every rollout spent on them is wasted compute. It is reported split into all-0 and all-1.
"""

from __future__ import annotations

from insight.record.store import RunStore


def round_metrics(db: RunStore, run_id: str, round_: int, train_stats: dict | None = None) -> dict:
    groups = db.sql("""
        SELECT prompt_id, gen_batch, count(*) AS k, sum(success::INT) AS s,
               avg(reward) AS r, stddev_pop(reward) AS sd, bool_and(kept) AS kept
        FROM rollouts WHERE run_id = ? AND round = ? GROUP BY prompt_id, gen_batch""",
        [run_id, round_]).to_pylist()
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
    sel = db.sql("""SELECT avg(score) AS mean, min(score) AS lo, max(score) AS hi,
                           avg(mi) AS mi, avg(weight) AS w, avg(mean) AS m
                    FROM selections WHERE run_id = ? AND round = ? AND selected""",
                 [run_id, round_]).to_pylist()[0]
    m.update({"score_mean": sel["mean"], "score_min": sel["lo"], "score_max": sel["hi"],
              "selected_mi_mean": sel["mi"], "selected_weight_mean": sel["w"],
              "selected_posterior_mean": sel["m"]})
    prev = db.scalar("SELECT coalesce(sum(rollouts_consumed), 0) FROM rounds WHERE run_id = ? "
                     "AND status = 'committed' AND round < ?", [run_id, round_])
    m["rollouts_total"] = int(prev) + rollouts
    ev = db.sql("SELECT accuracy, greedy_accuracy FROM evals WHERE run_id = ? AND round = ?",
                [run_id, round_]).to_pylist()
    if ev:
        m["heldout_accuracy"] = ev[0]["accuracy"]
        if ev[0]["greedy_accuracy"] is not None:
            m["heldout_greedy_accuracy"] = ev[0]["greedy_accuracy"]
    for row in db.sql("SELECT stage, seconds, wall_seconds FROM stages WHERE run_id = ? "
                      "AND round = ?", [run_id, round_]).to_pylist():
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
        evals = db.sql("SELECT e.round, e.accuracy, e.greedy_accuracy FROM evals e JOIN rounds r "
                       "USING (run_id, round) WHERE e.run_id = ? AND r.status = 'committed' "
                       "ORDER BY e.round", [run.run_id]).to_pylist()
        agg = db.sql("SELECT coalesce(sum(rollouts_consumed), 0) AS rollouts, "
                     "avg(CAST(json_extract(metrics_json, '$.zero_adv_share') AS DOUBLE)) AS z "
                     "FROM rounds WHERE run_id = ? AND status = 'committed' AND round > 0",
                     [run.run_id]).to_pylist()[0]
        stage = db.sql("SELECT stage, avg(seconds) AS s, avg(wall_seconds - seconds) AS o "
                       "FROM stages WHERE run_id = ? GROUP BY stage ORDER BY stage",
                       [run.run_id]).to_pylist()
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
