"""Task data: generated verifiable tasks, dataset loading, validation and splitting.

Generated tasks (for the embedded, download-free default run):

``arithmetic``
    Prompt ``"47+385="``, answer ``"432"`` (canonical integer; negative for ``-``),
    completion expected ``"432"``. ``difficulty`` = number of digits of the larger operand
    (``min_digits..max_digits``); levels are sampled round-robin so they are balanced.

``countdown``
    Prompt ``"3,5,7:22="`` (numbers ``:`` target ``=``), answer one solution expression
    over the numbers, e.g. ``"3*5+7"``; the completion is an expression that uses each
    number exactly once with ``+ - * /`` and parentheses and equals the target exactly.
    Only solvable instances are generated (all expressions are enumerated).
    ``difficulty`` = number of numbers.

All generated prompts use only characters of :data:`ALPHABET`.

Loading (:mod:`insight.problems.local_data`): :func:`load_problems` reads ``.jsonl``, ``.json``, ``.csv``, ``.parquet`` and
directories written by ``datasets`` ``save_to_disk`` (read with pyarrow); every load is checked by :func:`validate_problems`, whose errors name the row,
the id and the field.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Sequence

import pyarrow as pa

__all__ = [
    "ALPHABET",
    "VERIFIER_NAMES",
    "Problem",
    "generate_arithmetic",
    "generate_countdown",
    "countdown_solutions",
    "train_eval_split",
    "validate_problems",
    "problems_to_arrow",
    "problems_from_arrow",
    "PROBLEM_SCHEMA",
]

#: Every character a generated prompt or a reference answer may contain.
#: Digits, the four operators, parentheses, "=", "," (countdown numbers), ":" (countdown
#: target) and space. No letters are needed by either task.
ALPHABET = "0123456789+-*/()=,: "

VERIFIER_NAMES = ("arithmetic", "countdown", "math")

_ARITH_OPS = ("+", "-", "*")
_MAX_TRIES_PER_LEVEL = 2000


@dataclass(frozen=True)
class Problem:
    prompt_id: str  # unique
    prompt: str  # text the policy sees, e.g. "47+385=" (non-empty)
    answer: str  # canonical answer, e.g. "432"
    source: str  # "arithmetic", "countdown", or the file path it came from
    difficulty: int  # graded level; -1 when unknown
    verifier: str  # "arithmetic" | "countdown" | "math"
    # What the policy is given, when the run renders prompts (chat template, system
    # prompt, instruction: insight.policy.prompts); None means `prompt` itself.
    rendered: str | None = None

    @property
    def model_input(self) -> str:
        """The text the policy generates from (and the update scores against)."""
        return self.prompt if self.rendered is None else self.rendered


# ------------------------------------------------------------------------ arithmetic


def _rand_with_digits(rng: random.Random, d: int) -> int:
    lo = 0 if d == 1 else 10 ** (d - 1)
    return rng.randint(lo, 10**d - 1)


def generate_arithmetic(
    n: int,
    seed: int,
    *,
    min_digits: int = 1,
    max_digits: int = 3,
    ops: tuple[str, ...] = ("+", "-"),
    id_prefix: str = "arith",
) -> list[Problem]:
    """``n`` distinct problems like ``"47+385="`` -> ``"432"``, deterministic in ``seed``.

    Difficulty level d (``min_digits <= d <= max_digits``) = digits of the larger operand;
    the other operand has a uniformly drawn digit count in 1..d, and the operand order is
    random. Levels are filled round-robin, so they are balanced (differ by at most one)
    unless a level runs out of distinct prompts (e.g. 1-digit ``+`` has only 100), in
    which case the remaining problems come from the other levels. Raises ValueError if
    ``n`` distinct prompts cannot be found.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
    if max_digits > 18:
        raise ValueError(f"max_digits must be <= 18, got {max_digits}")
    ops = tuple(ops)
    if not ops or any(op not in _ARITH_OPS for op in ops):
        raise ValueError(f"ops must be a non-empty subset of {_ARITH_OPS}, got {ops}")
    rng = random.Random(f"arithmetic:{seed}")
    levels = list(range(min_digits, max_digits + 1))
    exhausted: set[int] = set()
    seen: set[str] = set()
    items: list[tuple[str, str, int]] = []
    li = 0
    while len(items) < n:
        live = [d for d in levels if d not in exhausted]
        if not live:
            raise ValueError(
                f"cannot generate {n} distinct arithmetic prompts with digits "
                f"{min_digits}..{max_digits} and ops {ops}; got {len(items)}"
            )
        d = live[li % len(live)]
        li += 1
        for _ in range(_MAX_TRIES_PER_LEVEL):
            big = _rand_with_digits(rng, d)
            small = _rand_with_digits(rng, rng.randint(1, d))
            a, b = (big, small) if rng.random() < 0.5 else (small, big)
            op = rng.choice(ops)
            prompt = f"{a}{op}{b}="
            if prompt in seen:
                continue
            seen.add(prompt)
            value = a + b if op == "+" else a - b if op == "-" else a * b
            items.append((prompt, str(value), d))
            break
        else:
            exhausted.add(d)
    rng.shuffle(items)  # round-robin order would tie position to difficulty
    width = max(6, len(str(max(n - 1, 0))))
    return [
        Problem(f"{id_prefix}-{i:0{width}d}", p, ans, "arithmetic", d, "arithmetic")
        for i, (p, ans, d) in enumerate(items)
    ]


# ------------------------------------------------------------------------- countdown

# An expression during enumeration: (value, text, precedence); precedence 3 = atom,
# 2 = product/quotient, 1 = sum/difference.
_Expr = tuple[Fraction, str, int]


def _combine(x: _Expr, y: _Expr, op: str) -> _Expr | None:
    (xv, xs, xp), (yv, ys, yp) = x, y
    prec = 1 if op in "+-" else 2
    if op == "/" and yv == 0:
        return None
    value = xv + yv if op == "+" else xv - yv if op == "-" else xv * yv if op == "*" else xv / yv
    left = f"({xs})" if xp < prec else xs
    # right operand of the non-associative - and / needs parens at equal precedence too
    right = f"({ys})" if yp < prec or (yp == prec and op in "-/") else ys
    return value, f"{left}{op}{right}", prec


def _reachable(numbers: Sequence[int]) -> dict[Fraction, str]:
    """Every value reachable using all ``numbers`` exactly once -> one expression for it."""
    k = len(numbers)
    table: dict[int, dict[Fraction, _Expr]] = {}
    for i, v in enumerate(numbers):
        table[1 << i] = {Fraction(v): (Fraction(v), str(v), 3)}
    for mask in range(1, 1 << k):
        if mask in table:
            continue
        out: dict[Fraction, _Expr] = {}
        sub = (mask - 1) & mask
        while sub:
            rest = mask ^ sub
            ops = "+-*/" if sub < rest else "-/"  # + and * are symmetric: one order suffices
            for x in table[sub].values():
                for y in table[rest].values():
                    for op in ops:
                        e = _combine(x, y, op)
                        if e is not None and e[0] not in out:
                            out[e[0]] = e
            sub = (sub - 1) & mask
        table[mask] = out
    return {v: e[1] for v, e in table[(1 << k) - 1].items()}


def countdown_solutions(numbers: Sequence[int], target: int) -> str | None:
    """One expression using each of ``numbers`` exactly once that equals ``target``."""
    return _reachable(list(numbers)).get(Fraction(target))


def generate_countdown(
    n: int,
    seed: int,
    *,
    n_numbers: int = 3,
    max_number: int = 9,
    id_prefix: str = "cd",
    max_target: int | None = None,
) -> list[Problem]:
    """``n`` distinct, solvable countdown problems, deterministic in ``seed``.

    Numbers are drawn uniformly from 1..max_number (repeats allowed); the target is drawn
    uniformly from the distinct positive integers reachable using every number exactly
    once with ``+ - * /``. Prompt ``"3,5,7:22="``; answer a solution such as ``"3*5+7"``
    (verifier "countdown" reads the numbers and target back from it). ``max_target``
    bounds the target (e.g. 100 keeps 4-number targets small); None = no bound.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 2 <= n_numbers <= 5:
        raise ValueError(f"n_numbers must be in 2..5, got {n_numbers}")
    if not 1 <= max_number <= 999:
        raise ValueError(f"max_number must be in 1..999, got {max_number}")
    if max_target is not None and max_target < 1:
        raise ValueError(f"max_target must be >= 1, got {max_target}")
    top = math.inf if max_target is None else max_target
    rng = random.Random(f"countdown:{seed}")
    seen: set[tuple[tuple[int, ...], int]] = set()
    problems: list[Problem] = []
    width = max(6, len(str(max(n - 1, 0))))
    misses = 0
    cache: dict[tuple[int, ...], list[tuple[int, str]]] = {}
    while len(problems) < n:
        if misses > 50 * n + 1000:
            raise ValueError(
                f"cannot generate {n} distinct countdown problems with n_numbers={n_numbers}, "
                f"max_number={max_number}; got {len(problems)}"
            )
        numbers = tuple(rng.randint(1, max_number) for _ in range(n_numbers))
        key = tuple(sorted(numbers))
        if key not in cache:
            reach = _reachable(key)
            cache[key] = sorted(
                (int(v), e) for v, e in reach.items() if v.denominator == 1 and 0 < v <= top
            )
        targets = cache[key]
        if not targets:
            misses += 1
            continue
        target, solution = targets[rng.randrange(len(targets))]
        if (key, target) in seen:
            misses += 1
            continue
        seen.add((key, target))
        prompt = ",".join(map(str, numbers)) + f":{target}="
        problems.append(
            Problem(f"{id_prefix}-{len(problems):0{width}d}", prompt, solution, "countdown",
                    n_numbers, "countdown")
        )
    return problems


# -------------------------------------------------------------------------- splitting


def train_eval_split(
    problems: Sequence[Problem], eval_fraction: float, seed: int
) -> tuple[list[Problem], list[Problem]]:
    """Deterministic split; problems with the same prompt text always land together.

    Stratified by difficulty: within each level, ``round(eval_fraction * groups)`` prompt
    groups (drawn with ``seed``) go to eval. Both outputs keep the input order.
    """
    if not 0.0 <= eval_fraction <= 1.0 or math.isnan(eval_fraction):
        raise ValueError(f"eval_fraction must be in [0, 1], got {eval_fraction}")
    groups: dict[str, int] = {}  # prompt -> difficulty of its first occurrence
    for p in problems:
        groups.setdefault(p.prompt, p.difficulty)
    by_level: dict[int, list[str]] = {}
    for prompt, level in groups.items():
        by_level.setdefault(level, []).append(prompt)
    rng = random.Random(f"split:{seed}")
    eval_prompts: set[str] = set()
    for level in sorted(by_level):
        prompts = sorted(by_level[level])
        rng.shuffle(prompts)
        eval_prompts.update(prompts[: round(eval_fraction * len(prompts))])
    train = [p for p in problems if p.prompt not in eval_prompts]
    held = [p for p in problems if p.prompt in eval_prompts]
    return train, held


# ------------------------------------------------------------------------- validation


def validate_problems(problems: Iterable[Problem]) -> None:
    """Raise ValueError naming row index, id and field of every bad row (first 20).

    Checks: each row is a Problem; prompt_id, prompt, answer non-empty strings; ids
    unique; source a string; difficulty an int; verifier known; and the answer is a
    usable reference for its verifier (canonical integer for "arithmetic", a solution
    or ``"numbers:target"`` spec for "countdown").
    """
    from insight.problems.verifiers import check_reference

    errors: list[str] = []
    first_row: dict[str, int] = {}
    for i, p in enumerate(problems):
        if not isinstance(p, Problem):
            errors.append(f"row {i}: expected Problem, got {type(p).__name__}")
            continue
        pid = p.prompt_id
        where = f"row {i} (prompt_id={pid!r})"
        for field in ("prompt_id", "prompt", "answer"):
            value = getattr(p, field)
            if not isinstance(value, str):
                errors.append(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
            elif not value.strip():
                errors.append(f"{where}: field {field!r} is empty")
        if isinstance(pid, str) and pid.strip():
            if pid in first_row:
                errors.append(
                    f"{where}: field 'prompt_id' duplicates row {first_row[pid]}"
                )
            else:
                first_row[pid] = i
        if not isinstance(p.source, str):
            errors.append(f"{where}: field 'source' must be a string")
        if isinstance(p.difficulty, bool) or not isinstance(p.difficulty, int):
            errors.append(f"{where}: field 'difficulty' must be an int, got {p.difficulty!r}")
        if p.verifier not in VERIFIER_NAMES:
            errors.append(
                f"{where}: field 'verifier' is unknown: {p.verifier!r} (known: {list(VERIFIER_NAMES)})"
            )
        elif isinstance(p.answer, str) and p.answer.strip():
            try:
                check_reference(p.verifier, p.answer)
            except ValueError as exc:
                errors.append(f"{where}: field 'answer' invalid for verifier {p.verifier!r}: {exc}")
        if len(errors) >= 20:
            break
    if errors:
        more = " (stopped after 20)" if len(errors) >= 20 else ""
        raise ValueError("invalid problems" + more + ":\n  " + "\n  ".join(errors))


# ---------------------------------------------------------------------------- arrow

PROBLEM_SCHEMA = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("prompt", pa.string()),
        ("answer", pa.string()),
        ("source", pa.string()),
        ("difficulty", pa.int64()),
        ("verifier", pa.string()),
    ]
)


def problems_to_arrow(problems: Sequence[Problem]) -> pa.Table:
    return pa.table(
        {
            "prompt_id": [p.prompt_id for p in problems],
            "prompt": [p.prompt for p in problems],
            "answer": [p.answer for p in problems],
            "source": [p.source for p in problems],
            "difficulty": [p.difficulty for p in problems],
            "verifier": [p.verifier for p in problems],
        },
        schema=PROBLEM_SCHEMA,
    )


def problems_from_arrow(table: pa.Table) -> list[Problem]:
    """Inverse of :func:`problems_to_arrow`; validates. ``difficulty`` defaults to -1."""
    names = set(table.column_names)
    missing = [c for c in ("prompt_id", "prompt", "answer", "source", "verifier") if c not in names]
    if missing:
        raise ValueError(f"arrow table is missing column(s) {missing}; has {sorted(names)}")
    cols = {c: table.column(c).to_pylist() for c in PROBLEM_SCHEMA.names if c in names}
    if "difficulty" not in cols:
        cols["difficulty"] = [-1] * table.num_rows
    problems = [
        Problem(
            prompt_id=cols["prompt_id"][i],
            prompt=cols["prompt"][i],
            answer=cols["answer"][i],
            source=cols["source"][i],
            difficulty=-1 if cols["difficulty"][i] is None else int(cols["difficulty"][i]),
            verifier=cols["verifier"][i],
        )
        for i in range(table.num_rows)
    ]
    validate_problems(problems)
    return problems


# --------------------------------------------------------------------------- loading

