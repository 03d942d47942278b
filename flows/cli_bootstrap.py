"""Rebuild the tiny policy's supervised warm start (the shipped checkpoints/tiny-arith):

    python -m flows.cli_bootstrap --out checkpoints/tiny-arith --seed 0 --threads 1 [--steps N]

The training is `insight.policy.bootstrap.bootstrap`; this module only turns the command line
into its `BootstrapConfig` (defaults are the config's, so the shipped recipe needs no
flags but --out) and sets torch's thread count when asked.
"""

from __future__ import annotations

import argparse

from flows import env  # noqa: F401  (offline defaults before transformers is imported)


def build_parser() -> argparse.ArgumentParser:
    from insight.policy import bootstrap as warm_start

    ap = argparse.ArgumentParser(prog="python -m flows.cli_bootstrap",
                                 description=warm_start.__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="checkpoint directory to write")
    ap.add_argument("--seed", type=int, default=0)
    d = warm_start.BootstrapConfig()
    ap.add_argument("--steps", type=int, default=d.steps)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    ap.add_argument("--min-digits", type=int, default=d.min_digits)
    ap.add_argument("--max-digits", type=int, default=d.max_digits)
    ap.add_argument("--ops", default="".join(d.ops), help='e.g. "+-"')
    ap.add_argument("--eval-problems", type=int, default=d.eval_problems)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    return ap


def main(argv: list[str] | None = None) -> int:
    import torch

    from insight.policy.bootstrap import BootstrapConfig, bootstrap

    a = build_parser().parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = BootstrapConfig(
        seed=a.seed, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
        label_smoothing=a.label_smoothing,
        min_digits=a.min_digits, max_digits=a.max_digits, ops=tuple(a.ops),
        eval_problems=a.eval_problems,
    )
    bootstrap(cfg, out=a.out, device=a.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
