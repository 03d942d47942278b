"""Measure our math grader against HF's math-verify on the reward-hacking lists.

    python scripts/compare_math_graders.py [--math-verify-python /tmp/mv/bin/python]

Why: math-verify was a candidate replacement for the ``math`` verifier; it is adopted only
if it is clearly stricter on hostile answers without rejecting equivalent ones, AND can
run safely. The lists are the ones tests/test_reward_hacking.py pins: HOSTILE_MATH (every
answer must score 0) and LEGITIMATE_MATH (every one must score 1). It prints false
accepts (hostile scored 1) and false rejects (legitimate scored 0) per grader.

math-verify is not a project dependency: install it into a separate venv
(``python3 -m venv /tmp/mv && /tmp/mv/bin/pip install math-verify``). It runs there, in a
child process with a wall-clock limit, once with its default extraction (LaTeX and plain
expressions) and once with LaTeX extraction only.

Measured with math-verify 0.9.0 (sympy 1.14), 110 hostile / 43 legitimate answers
(about 70 s on a busy 2-core machine, nearly all of it math-verify):

    grader                      false accepts   false rejects
    insight (this repo)           0 / 110          0 / 43
    math-verify (default)        27 / 110          3 / 43
    math-verify (LaTeX only)     16 / 110         10 / 43

The lists were written together with our grader, so they favour it; the gap is still
large. Not adopted: math-verify accepts units as variables (``\\boxed{42 m}``), value-
changing words (``42\\text{ million}``, ``42 squared``), a set ``\\{42\\}``, ``4200\\%``,
boxed alternatives and prose with several numbers ("41 or 42", "between 41 and 42");
it rejects ``\\fbox{42}``, ``\\boxed{42.}`` and a corrected box. And it cannot run as
the house rules require: its default expression extraction reads model output with
SymPy's ``parse_expr``, which calls ``eval``, and its timeout is ``signal.alarm``, which
works only in a main thread (not in Prefect's task threads).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from insight.problems.verifiers import verify  # noqa: E402
from tests.test_reward_hacking import HOSTILE_MATH, LEGITIMATE_MATH  # noqa: E402

#: Runs inside the math-verify venv; reads [[completion, reference], ...] on stdin.
_CHILD = r"""
import json, sys
from math_verify import parse, verify, LatexExtractionConfig, ExprExtractionConfig
latex_only = sys.argv[1] == "latex"
config = [LatexExtractionConfig()] if latex_only else [LatexExtractionConfig(), ExprExtractionConfig()]
out = []
for completion, reference in json.load(sys.stdin):
    try:
        gold = parse("$" + reference + "$", extraction_config=config)
        pred = parse(completion, extraction_config=config)
        out.append(bool(verify(gold, pred)))
    except Exception:
        out.append(False)
json.dump(out, sys.stdout)
"""


def _math_verify(python: str, mode: str, pairs: list) -> list[bool]:
    done = subprocess.run(
        [python, "-c", _CHILD, mode], input=json.dumps(pairs), capture_output=True,
        text=True, timeout=600, check=True,
    )
    return json.loads(done.stdout)


def _ours(pairs: list) -> list[bool]:
    return [verify("math", completion, reference).success for completion, reference in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--math-verify-python", default="/tmp/mv/bin/python")
    args = parser.parse_args()
    graders = {
        "insight (this repo)": _ours,
        "math-verify (default)": lambda p: _math_verify(args.math_verify_python, "default", p),
        "math-verify (LaTeX only)": lambda p: _math_verify(args.math_verify_python, "latex", p),
    }
    print(f"{'grader':26s}  false accepts   false rejects")
    for name, grade in graders.items():
        on_hostile, on_legit = grade(HOSTILE_MATH), grade(LEGITIMATE_MATH)
        accepts = [c for (c, _), ok in zip(HOSTILE_MATH, on_hostile) if ok]
        rejects = [c for (c, _), ok in zip(LEGITIMATE_MATH, on_legit) if not ok]
        print(f"{name:26s}  {len(accepts):3d} / {len(HOSTILE_MATH)}      "
              f"{len(rejects):3d} / {len(LEGITIMATE_MATH)}")
        for c in accepts:
            print(f"    accepts  {c!r}")
        for c in rejects:
            print(f"    rejects  {c!r}")


if __name__ == "__main__":
    main()
