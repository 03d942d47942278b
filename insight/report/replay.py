"""Counterfactual replay: what another selector would have picked in a recorded run.

Why: a selector change costs a training run to evaluate. Its first-order effect can be
read off a run already recorded, with no new rollouts: in each committed round, score
the posterior the run had before that round with the other selector, take its batch, and
compare it with what was picked, by the overlap and by the expected number of
informative groups, sum_i P(0 < s_i < k), s_i ~ Beta-Binomial(k, a_i, b_i) under that
posterior (a group whose k rollouts all agree carries no GRPO gradient). It answers
"which prompts would it have spent the round on, and were they more promising by the
run's own belief"; what the policy would then have learnt is not replayed (the outcomes
of prompts the run never rolled out are unknown, so later posteriors stay the run's).

Inputs per round R, all from the published record (`insight.report.rescore`): the
posterior after R-1 (snapshot and deltas; empirical-Bayes view of unseen prompts when the
run used it), the seed `stage_seed(run seed, R, SELECT)` the select stage used, and, for
the run's own selector type, the state it saved after R-1, so replaying a run with its
own selector reproduces its picks exactly. Another stateful selector (uniform,
dynamic-sampling) starts fresh and observes its own picks as drawn. The first draw of a
round (generation batch 0) is compared; DAPO's refills are counted, not replayed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import betaln

from insight.record.published import (RunView, round_groups, selected_in_rounds,
                                      selector_states, with_view)
from insight.record.run import SELECT, stage_seed
from insight.report.rescore import PosteriorHistory, RecordedRun
from insight.selection.posterior import PosteriorState
from insight.selection.registry import get, make_selector, parse_selector_config


def mixed_group_probability(alpha, beta, k: int) -> np.ndarray:
    """P(0 < s < k) for s ~ Beta-Binomial(k, alpha, beta): the chance that a group of k
    rollouts is informative (neither all failures nor all successes). Closed form:
    1 - B(a, b + k) / B(a, b) - B(a + k, b) / B(a, b)."""
    a, b = np.asarray(alpha, np.float64), np.asarray(beta, np.float64)
    if k < 2:
        return np.zeros_like(a)
    none = np.exp(betaln(a, b + k) - betaln(a, b))
    every = np.exp(betaln(a + k, b) - betaln(a, b))
    return np.clip(1.0 - none - every, 0.0, 1.0)


def replay(run_dir: str | Path, selector: str, overrides: dict[str, Any] | None = None,
           *, include_picks: bool = True) -> dict[str, Any]:
    """Per committed round: the replayed selector's picks, the `overlap` with the recorded
    picks, and the expected informative groups of both sets; then a summary. `overrides`
    are the selector's config fields ({"gamma": 2.0}); `include_picks` False leaves the
    prompt id lists out (the counts stay)."""
    get(selector)  # an unknown name: one line listing the known selectors
    cfg = parse_selector_config({**(overrides or {}), "type": selector})
    return with_view(run_dir, None, lambda v: _replay(v, cfg, include_picks))


def _replay(view: RunView, cfg, include_picks: bool) -> dict[str, Any]:
    run = RecordedRun.read(view)
    rounds = [r for r in view.rounds if r > 0]
    if not rounds:
        raise ValueError(f"{view.run_dir} has no committed training round to replay yet")
    B, k = run.config.rollout.batch_size, run.config.rollout.k
    own = cfg.type == run.config.selector.type
    history = PosteriorHistory(view, run)
    # the small per-round tables in one scan each, not one per round
    states = selector_states(view, [r - 1 for r in rounds])
    picked = _by_round(selected_in_rounds(view, rounds))
    groups = _by_round(round_groups(view, rounds))
    fresh = make_selector(cfg)
    out = []
    for round_ in rounds:
        post = history.before(round_)
        selector = fresh
        if own:  # the state the run's selector saved after the round before
            selector = make_selector(cfg)
            if states.get(round_ - 1):
                selector.load_state_dict(json.loads(states[round_ - 1]))
        rng = np.random.default_rng(stage_seed(run.seed, round_, SELECT))
        picks = list(selector.select(post, B, k, rng).prompt_ids)
        if not own:
            fresh.observe(np.asarray(picks, dtype=object), np.zeros(len(picks)),
                          np.zeros(len(picks)))
        out.append(_round_row(round_, picked.get(round_, []), groups.get(round_, []), post,
                              picks, k, include_picks))
    return {"run_dir": str(view.run_dir), "run_id": run.run_id,
            "run_selector": run.config.selector.model_dump(mode="json"),
            "selector": cfg.model_dump(mode="json"), "batch_size": B, "k": k,
            "rounds": out, "summary": _summary(out)}


def _by_round(t) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for row in t.to_pylist():
        out.setdefault(row["round"], []).append(row)
    return out


def _round_row(round_: int, sel: list[dict], groups: list[dict], post: PosteriorState,
               picks: list[str], k: int, include_picks: bool) -> dict[str, Any]:
    first = [r["prompt_id"] for r in sel if r["gen_batch"] == 0]
    observed = sum(1 for g in groups if g["gen_batch"] == 0 and 0 < g["s"] < g["n"])

    def expected(ids: list[str]) -> float:
        if not ids:
            return 0.0
        idx = post.index_of(np.asarray(ids, dtype=object))
        return float(mixed_group_probability(post.alpha[idx], post.beta[idx], k).sum())

    row = {"round": round_, "n_picked": len(first), "n_replayed": len(picks),
           "overlap": len(set(first) & set(picks)),
           "expected_informative_picked": expected(first),
           "expected_informative_replayed": expected(picks),
           "observed_informative_picked": observed,
           "refill_picks": len(sel) - len(first)}
    if include_picks:
        row["picked"], row["replayed"] = first, picks
    return row


def _summary(rows: list[dict]) -> dict[str, Any]:
    picked = sum(r["expected_informative_picked"] for r in rows)
    replayed = sum(r["expected_informative_replayed"] for r in rows)
    n = sum(r["n_picked"] for r in rows)
    return {"rounds": len(rows), "picked": n,
            "mean_overlap": float(np.mean([r["overlap"] for r in rows])),
            "overlap_share": sum(r["overlap"] for r in rows) / n if n else None,
            "identical_rounds": sum(1 for r in rows
                                    if r["overlap"] == r["n_picked"] == r["n_replayed"]),
            "expected_informative_picked": picked,
            "expected_informative_replayed": replayed,
            "expected_informative_ratio": replayed / picked if picked else None,
            "observed_informative_picked": sum(r["observed_informative_picked"] for r in rows)}


def replay_text(result: dict[str, Any]) -> str:
    """A fixed-width table, one line per round, and the summary."""
    s = result["summary"]
    lines = [f"replay of {result['run_dir']} ({result['run_selector']['type']}) with "
             f"{json.dumps(result['selector'])}; B={result['batch_size']}, k={result['k']}",
             "E[informative] = sum of P(0 < s < k) under the posterior before the round",
             f"{'round':>6} {'overlap':>9} {'E[inf] picked':>14} {'E[inf] replay':>14} "
             f"{'observed':>9}"]
    for r in result["rounds"]:
        lines.append(f"{r['round']:>6} {r['overlap']:>4}/{r['n_picked']:<4} "
                     f"{r['expected_informative_picked']:>14.2f} "
                     f"{r['expected_informative_replayed']:>14.2f} "
                     f"{r['observed_informative_picked']:>9}")
    ratio = s["expected_informative_ratio"]
    lines.append(f"summary: {s['rounds']} rounds, overlap {s['overlap_share']:.1%} of picks "
                 f"({s['identical_rounds']} rounds identical); expected informative groups "
                 f"{s['expected_informative_picked']:.1f} picked vs "
                 f"{s['expected_informative_replayed']:.1f} replayed"
                 + (f" (x{ratio:.3f})" if ratio is not None else "")
                 + f"; {s['observed_informative_picked']} observed in the picked groups")
    return "\n".join(lines)
