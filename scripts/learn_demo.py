"""Plain-Python GRPO loop (no Prefect, no store): does the tiny policy learn?

    python scripts/learn_demo.py [--init checkpoints/tiny-arith] [--rounds 60] ...

Each round: a uniform random batch of B prompts from the train pool, k sampled
completions each, verification, group-relative advantages, one GRPO policy update.
Every --eval-every rounds the held-out split is evaluated. The run ends with initial vs
final held-out accuracy, wall time and a per-stage time split.

Held-out accuracy (the number the product's acceptance test uses): avg@n, the mean
success of n sampled completions per held-out problem at the training temperature, with
the same sampling seed at every evaluation (common random numbers); greedy accuracy is
reported beside it. The held-out split is disjoint from the train pool
(insight.problems.datasets.train_eval_split).

--via-disk saves policy + Adam state to a fresh directory every round and reloads it, as
the orchestrated pipeline does, to include that cost.

Defaults are the tuned ones (from checkpoints/tiny-arith, 2 threads, ~0.35 s of compute
per round on an idle 2-core machine): 1-2 digit +/- problems, B=32 prompts x k=8,
temperature 1, Adam lr 2e-4, one optimizer step per round, clip (0.2, 0.28), no KL,
max_new_tokens 6; held-out = 10% of a 4000-problem pool (~400 problems), avg@4.
Measured: +14.6 to +16.4 points avg@4 after 80 rounds over three seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from insight.problems.datasets import generate_arithmetic, train_eval_split  # noqa: E402
from insight.policy.generation import evaluate_accuracy, generate_rollouts  # noqa: E402
from insight.policy.grpo import (  # noqa: E402
    load_trainer_state,
    make_optimizer,
    make_policy_batch,
    policy_update,
    save_trainer_state,
    zero_advantage_share,
)
from insight.policy.model import load_policy  # noqa: E402
from insight.problems.verifiers import verify  # noqa: E402

DEFAULTS = dict(
    init=str(ROOT / "checkpoints" / "tiny-arith"),
    seed=0,
    rounds=80,
    batch_prompts=32,
    k=8,
    temperature=1.0,
    top_p=1.0,
    max_new_tokens=6,
    lr=2e-4,
    epochs=1,
    mini_batch_size=0,
    micro_batch_size=256,  # sequences per forward; B*k = 256 fits in one
    clip_eps=0.2,
    clip_eps_high=0.28,
    kl_coef=0.0,
    max_grad_norm=1.0,
    normalize_std=True,
    pool_size=4000,
    eval_fraction=0.1,
    min_digits=1,
    max_digits=2,
    ops="+-",
    eval_every=20,
    eval_samples=4,
    eval_max_problems=400,
    threads=2,
)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for key, val in DEFAULTS.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(val, bool):
            ap.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=val)
        else:
            ap.add_argument(flag, type=type(val), default=val)
    ap.add_argument("--via-disk", action="store_true", help="save/reload policy+Adam every round")
    ap.add_argument("--json-out", default="", help="write the summary JSON here")
    ap.add_argument("--save-final", default="", help="save the final policy + Adam state here")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    t_start = time.time()
    problems = generate_arithmetic(
        a.pool_size, a.seed, min_digits=a.min_digits, max_digits=a.max_digits,
        ops=tuple(a.ops), id_prefix="arith",
    )
    train, held = train_eval_split(problems, a.eval_fraction, a.seed)
    held = held[: a.eval_max_problems]
    model, tok = load_policy(a.init)
    opt = make_optimizer(model, a.lr)
    rng = random.Random(f"learn_demo:{a.seed}")
    tmp = tempfile.TemporaryDirectory(prefix="learn_demo_") if a.via_disk else None
    print(
        f"train pool {len(train)}, held-out {len(held)}, digits {a.min_digits}-{a.max_digits} "
        f"ops {a.ops}; B={a.batch_prompts} k={a.k} T={a.temperature} lr={a.lr} "
        f"epochs={a.epochs} clip=({a.clip_eps},{a.clip_eps_high}) max_new_tokens={a.max_new_tokens}",
        flush=True,
    )

    def evaluate(tag: str) -> dict:
        t0 = time.time()
        s = evaluate_accuracy(model, tok, held, n_samples=a.eval_samples, temperature=a.temperature,
                              top_p=a.top_p, seed=12345, max_new_tokens=a.max_new_tokens)
        g = evaluate_accuracy(model, tok, held, greedy=True, seed=0, max_new_tokens=a.max_new_tokens)
        by_level: dict[int, list[float]] = {}
        for p, r in zip(held, s["per_problem"]):
            by_level.setdefault(p.difficulty, []).append(r["successes"] / r["n"])
        res = {
            "avg": s["accuracy"],
            "greedy": g["accuracy"],
            "by_level": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_level.items())},
            "seconds": time.time() - t0,
        }
        print(f"  [eval {tag}] avg@{a.eval_samples} T={a.temperature}: {res['avg']:.4f}  "
              f"greedy: {res['greedy']:.4f}  by level {res['by_level']}  ({res['seconds']:.1f}s)",
              flush=True)
        return res

    timings = {"generate": 0.0, "verify": 0.0, "update": 0.0, "eval": 0.0, "disk": 0.0}
    evals = [(0, evaluate("initial"))]
    timings["eval"] += evals[-1][1]["seconds"]
    history = []
    for r in range(1, a.rounds + 1):
        if a.via_disk:
            t0 = time.time()
            d = Path(tmp.name) / f"round-{r - 1:04d}"
            save_trainer_state(d, model, tok, opt)
            model, tok, opt = load_trainer_state(d, a.lr)
            timings["disk"] += time.time() - t0
        batch = rng.sample(train, a.batch_prompts)
        t0 = time.time()
        groups = generate_rollouts(
            model, tok, [p.prompt for p in batch], a.k, temperature=a.temperature, top_p=a.top_p,
            max_new_tokens=a.max_new_tokens, seed=a.seed * 1_000_003 + r,
        )
        t1 = time.time()
        rewards = torch.tensor(
            [[verify(p.verifier, ro.completion, p.answer).reward for ro in g] for p, g in zip(batch, groups)]
        )
        t2 = time.time()
        pb = make_policy_batch(
            tok, [p.prompt for p in batch], [[ro.completion_token_ids for ro in g] for g in groups],
            rewards, normalize_std=a.normalize_std,
        )
        st = policy_update(
            model, opt, pb, micro_batch_size=a.micro_batch_size,
            mini_batch_size=a.mini_batch_size or None, epochs=a.epochs, clip_eps=a.clip_eps,
            clip_eps_high=a.clip_eps_high, kl_coef=a.kl_coef, max_grad_norm=a.max_grad_norm,
            shuffle_seed=r if a.mini_batch_size else None,
        )
        t3 = time.time()
        timings["generate"] += t1 - t0
        timings["verify"] += t2 - t1
        timings["update"] += t3 - t2
        za = zero_advantage_share(rewards)
        row = {"round": r, "reward": float(rewards.mean()), "zero_adv": za,
               "gen_s": t1 - t0, "update_s": t3 - t2, **{k: st[k] for k in ("clip_frac", "grad_norm", "steps")}}
        history.append(row)
        print(f"round {r:4d}  reward {row['reward']:.3f}  zero-adv {za:.2f}  clip {st['clip_frac']:.3f}  "
              f"gnorm {st['grad_norm']:.2f}  gen {t1 - t0:.2f}s  upd {t3 - t2:.2f}s", flush=True)
        if r % a.eval_every == 0 or r == a.rounds:
            evals.append((r, evaluate(f"round {r}")))
            timings["eval"] += evals[-1][1]["seconds"]
    wall = time.time() - t_start
    init, final = evals[0][1], evals[-1][1]
    summary = {
        "config": vars(a),
        "initial": init,
        "final": final,
        "gain_avg": final["avg"] - init["avg"],
        "gain_greedy": final["greedy"] - init["greedy"],
        "best_avg": max(e["avg"] for _, e in evals),
        "rounds": a.rounds,
        "wall_seconds": wall,
        "timings": timings,
        "per_round_seconds": {k: v / max(1, a.rounds) for k, v in timings.items()},
        "mean_zero_adv": sum(h["zero_adv"] for h in history) / max(1, len(history)),
        "evals": [{"round": rr, **{k: v for k, v in e.items() if k != "seconds"}} for rr, e in evals],
        "history": history,
    }
    print(
        f"\nheld-out avg@{a.eval_samples} (T={a.temperature}): {init['avg']:.4f} -> {final['avg']:.4f} "
        f"({100 * summary['gain_avg']:+.1f} points); greedy {init['greedy']:.4f} -> {final['greedy']:.4f} "
        f"({100 * summary['gain_greedy']:+.1f})\n"
        f"{a.rounds} rounds, wall {wall:.1f}s; per round: "
        + ", ".join(f"{k} {v:.3f}s" for k, v in summary["per_round_seconds"].items())
        + f"; mean zero-advantage share {summary['mean_zero_adv']:.2f}",
        flush=True,
    )
    if a.save_final:
        save_trainer_state(a.save_final, model, tok, opt, extra={"rounds": a.rounds})
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(summary, indent=2, default=str))
    if tmp is not None:
        tmp.cleanup()
    return summary


if __name__ == "__main__":
    main()
