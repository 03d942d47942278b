"""How noisy is a config's held-out evaluation? The standard error of one avg@n evaluation.

    python scripts/eval_noise.py --config configs/bench-wide.yaml [--checkpoint DIR] [--draws 5]

A benchmark's target step (+0.05 held-out accuracy, say) means something only if one
evaluation's sampling noise is well under it. With the held-out prompts fixed, the noise
of avg@n is the sampling of completions: Var = sum_i p_i (1 - p_i) / n / N^2 over the N
prompts. This evaluates the policy (the config's starting checkpoint unless
--checkpoint) once with the config's evaluation settings, estimates that standard error
from the per-prompt success counts (p_i (1 - p_i) estimated without bias as
s_i (n - s_i) / (n (n - 1))), and checks it against the spread of `--draws`
evaluations with different sampling seeds. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

from insight.config import load_config
from insight.policy.generation import evaluate_accuracy
from insight.policy.model import load_policy
from insight.record.run import build_problems


def analytic_standard_error(per_problem: list[dict]) -> float:
    """Sampling standard error of avg@n over fixed prompts, from per-prompt counts."""
    n_prompts = len(per_problem)
    var = 0.0
    for row in per_problem:
        s, n = row["successes"], row["n"]
        if n > 1:
            var += s * (n - s) / (n * (n - 1)) / n
    return (var ** 0.5) / n_prompts


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--checkpoint", help="policy to evaluate (default: the config's)")
    ap.add_argument("--draws", type=int, default=5, help="evaluations with different seeds")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    _, held_out = build_problems(cfg)
    held_out = [dataclasses.replace(p, prompt=p.model_input) for p in held_out]
    model, tok = load_policy(args.checkpoint or cfg.resolved_policy_path())
    kw = dict(n_samples=cfg.eval.n_samples, temperature=cfg.eval.temperature,
              max_new_tokens=cfg.rollout.max_new_tokens, top_p=cfg.rollout.top_p)
    runs = [evaluate_accuracy(model, tok, held_out, seed=s, **kw) for s in range(args.draws)]
    accs = [r["accuracy"] for r in runs]
    print(json.dumps({
        "n_prompts": len(held_out), "n_samples": cfg.eval.n_samples,
        "accuracy_per_draw": [round(a, 4) for a in accs],
        "standard_error_analytic": round(analytic_standard_error(runs[0]["per_problem"]), 5),
        "standard_error_across_draws": round(statistics.stdev(accs), 5) if len(accs) > 1 else None,
    }))


if __name__ == "__main__":
    main()
