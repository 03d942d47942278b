"""`insight audit`: its arguments, and the glue from them to `insight.report.audit`'s queries
and `insight.report.audit_text`'s reports.

The library answers with tables and text; this module only turns a command line into
those calls and a bad run directory, round or prompt id into one error line (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from insight.report import audit
from insight.report.audit_text import (DEFAULT_TABLE_ROWS, never_selected_report, prompt_report,
                                round_report)


def add_audit_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `insight audit`."""
    parser.add_argument("--run-dir", required=True, type=Path,
                        help="run directory (reads its published Parquet only; safe while "
                             "the run is training)")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--round", type=int, metavar="R",
                      help="every candidate scored in round R, in rank order")
    what.add_argument("--prompt", metavar="ID",
                      help="one prompt's selection history and posterior path")
    what.add_argument("--never-selected", action="store_true",
                      help="training prompts never selected, and why")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="fixed-width table (default) or JSON")
    parser.add_argument("--limit", type=int, metavar="N", default=None,
                        help=f"rows to show (table default {DEFAULT_TABLE_ROWS}, JSON default "
                             "all; 0 = all). For --prompt: the most recent N rounds")
    return parser


def run_audit(args: argparse.Namespace, out=None, err=None) -> int:
    """Run `insight audit`; returns the exit status (0 ok, 2 bad run dir/round/prompt)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        text = audit_text(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"insight audit: error: {exc}", file=err)
        return 2
    print(text, file=out)
    return 0


def audit_text(args: argparse.Namespace) -> str:
    """The text `insight audit` prints for parsed arguments (one of --round, --prompt,
    --never-selected)."""
    run_dir = args.run_dir
    shape = dict(as_json=args.format == "json", limit=args.limit)
    if args.round is not None:
        return round_report(run_dir, args.round, audit.round_candidates(run_dir, args.round),
                            **shape)
    if args.prompt is not None:
        return prompt_report(run_dir, audit.prompt_history(run_dir, args.prompt), **shape)
    return never_selected_report(run_dir, audit.never_selected(run_dir), **shape)
