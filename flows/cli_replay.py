"""`insight replay`: its arguments, and the glue to `insight.report.replay`.

Reads only the run's published Parquet, so it is safe while the run trains. A bad run
directory, selector or field is one error line (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_replay_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `insight replay`."""
    parser.add_argument("--run-dir", required=True, type=Path,
                        help="recorded run (its published Parquet; safe while it trains)")
    parser.add_argument("--selector", required=True,
                        help="the selector to replay the run's rounds with (a registry name)")
    parser.add_argument("--set", action="append", metavar="selector.FIELD=VALUE",
                        help="a field of the replayed selector's config, e.g. "
                             "--set selector.gamma=2 (repeatable)")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="a table per round and a summary (default), or JSON")
    parser.add_argument("--no-picks", action="store_true",
                        help="JSON without the per-round prompt id lists (counts only)")
    return parser


def selector_overrides(items: list[str] | None) -> dict:
    """`--set selector.gamma=2` -> {"gamma": 2}; values are YAML scalars."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.startswith("selector.") or key == "selector.type":
            raise ValueError(f"--set expects selector.FIELD=VALUE (the selector is "
                             f"--selector), got {item!r}")
        out[key.removeprefix("selector.")] = yaml.safe_load(value)
    return out


def run_replay(args: argparse.Namespace, out=None) -> int:
    """Run `insight replay`; returns the exit status."""
    from pydantic import ValidationError

    from insight.report.replay import replay, replay_text

    out = out or sys.stdout
    try:
        result = replay(args.run_dir, args.selector, selector_overrides(args.set),
                        include_picks=not args.no_picks)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(x) for x in first["loc"][1:] or first["loc"])
        raise ValueError(f"selector {args.selector!r}: {loc}: {first['msg']}") from None
    print(json.dumps(result) if args.format == "json" else replay_text(result), file=out)
    return 0
