"""`insight score`: its arguments, and the glue from them to `insight.report.score_io.score_file`.

The library takes plain keyword arguments; this module only turns a command line into
that call (selectors repeatable or comma separated) and prints the output path.
"""

from __future__ import annotations

import argparse

from insight.selection.registry import NAMES as SELECTORS
from insight.report.score_io import score_file


def add_score_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `insight score`."""
    parser.add_argument("input", help="Parquet or CSV with prompt_id and alpha, beta "
                                      "(or successes, trials)")
    parser.add_argument("output", help="output file (.parquet, or .csv)")
    parser.add_argument("--selector", "-s", action="append", dest="selectors",
                        metavar="NAME", help=f"selector(s) to score, repeatable or comma "
                        f"separated: {', '.join(SELECTORS)} (default: insight)")
    parser.add_argument("--k", type=int, default=8, help="rollouts per prompt (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random draws and ties")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="mark the top B of each selector as selected")
    parser.add_argument("--a0", type=float, default=None, help="prior alpha for counts input")
    parser.add_argument("--b0", type=float, default=None, help="prior beta for counts input")
    parser.add_argument("--weight", choices=["power", "gaussian"], default=None,
                        help="difficulty weight of insight selectors (default power)")
    parser.add_argument("--gamma", type=float, default=None, help="power weight exponent")
    parser.add_argument("--tau", type=float, default=None, help="target success rate")
    parser.add_argument("--sigma", type=float, default=None, help="gaussian weight width")
    return parser


def run_score(args: argparse.Namespace) -> int:
    """Run `insight score` from parsed arguments; prints the output path. Returns 0."""
    names: list[str] = []
    for item in args.selectors or ["insight"]:
        names.extend(s.strip() for s in item.split(",") if s.strip())
    params = {p: getattr(args, p) for p in ("weight", "gamma", "tau", "sigma")
              if getattr(args, p, None) is not None}
    out = score_file(args.input, args.output, names, args.k, seed=args.seed,
                     a0=args.a0, b0=args.b0, batch_size=args.batch_size, **params)
    print(out)
    return 0
