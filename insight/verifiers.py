"""Verifiers: score a completion against a reference answer, safely.

A verifier never runs model output. Expressions go through the restricted, bounded
evaluator in :mod:`insight.safe_math`, math answers also through the whitelisted,
time-limited symbolic checker in :mod:`insight.symbolic`; everything else is plain string
handling with bounded lengths and linear-time regexes. :func:`verify` never raises because
of the *completion*: malformed or hostile text gives ``reward 0`` with ``error`` set. It
does raise ``ValueError`` for programming/data errors: an unknown verifier name or a
reference answer that the verifier cannot read (``validate_problems`` catches those up
front).

Verifiers (``completion`` is the model's text after the prompt, EOS stripped):

``arithmetic``
    The reference is a canonical integer (``"432"``, ``"-17"``). After stripping
    surrounding whitespace the completion must be an integer in canonical form:
    ASCII digits, an optional leading ``-``, **no** leading ``+``, **no** leading zeros
    (``"0"`` is fine, ``"007"`` and ``"-0"`` are not), nothing else (``"432abc"``,
    ``"432 "``-inside, ``"4 32"`` fail). Unicode digits (``"٤٣٢"``) are not accepted.
    Rationale: the policy must emit exactly the canonical string it is trained on.

``countdown``
    The reference is either a solution expression (``"3*5+7"``; the numbers are its
    literals and the target its value) or a spec ``"3,5,7:22"`` (numbers ``:`` target).
    The completion must be an expression over ``0-9 + - * / ( )`` and spaces that uses
    **each given number exactly once** (as a multiset) and evaluates exactly (Fractions,
    so ``6/4*2`` is fine with intermediate 3/2) to the target. No unary minus/plus, no
    decimals, no ``**``, no concatenating digits into new numbers (``35`` is not ``3,5``).

``math``
    For datasets with a numeric (or short symbolic) final answer. The final answer is
    extracted from the completion: the last ``\\boxed{...}`` (or ``\\fbox{...}``) if any,
    else the text after the last ``####`` or ``answer is``, else the last number in the
    text. The same extraction is applied to the reference if it contains ``\\boxed`` or
    ``####`` (GSM8K style), otherwise the whole reference is the answer. Both are
    normalized (``$``, ``\\left``/``\\right``, spacing commands, ``\\text{...}``, thousands
    commas, ``\\frac{a}{b}``/``\\dfrac``, ``\\cdot``/``\\times``, ``^``) and, when both read
    as numbers through the safe evaluator, compared exactly (``0.5 == 1/2 ==
    \\frac{1}{2}``); a numeric reference also matches a prediction that holds exactly
    one number (``"42 apples"``, ``"x = 42"``). Otherwise equal normalized strings match,
    and as a last step :mod:`insight.symbolic` tries to prove the two answers equal with
    SymPy (``2\\sqrt{3} == \\sqrt{12}``, ``x+1 == 1+x``, ``(x+1)^2 == x^2+2x+1``): it reads
    them through a whitelisted syntax tree, never with ``eval``, and checks in a separate
    process killed after ``SYMBOLIC_TIMEOUT_S``. A proof gives ``reward 1``; no proof, or
    an answer outside its small grammar, is wrong; a timeout (or a failed worker) is
    wrong with ``error`` set (``"symbolic check timed out"``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence

from insight import safe_math, symbolic
from insight.safe_math import SafeMathError

__all__ = [
    "VerifyResult",
    "verify",
    "verify_batch",
    "VERIFIERS",
    "MAX_COMPLETION_CHARS",
    "check_reference",
    "parse_countdown_reference",
    "extract_final_answer",
    "normalize_math_answer",
]

#: Completions longer than this are rejected unread (reward 0, error "completion too long").
MAX_COMPLETION_CHARS = 100_000
#: Longest expression / number the arithmetic and countdown verifiers will look at.
MAX_EXPRESSION_CHARS = 200
#: Longest extracted final answer the math verifier will normalize.
MAX_ANSWER_CHARS = 200
#: Wall-clock budget for evaluating one expression (a backstop; the limits in
#: safe_math already bound the work structurally).
EXPRESSION_TIMEOUT_S = 0.5
#: Wall-clock budget for the symbolic (SymPy) equivalence check of one math answer.
SYMBOLIC_TIMEOUT_S = symbolic.DEFAULT_TIMEOUT_S


@dataclass(frozen=True)
class VerifyResult:
    reward: float  # in [0, 1]
    success: bool
    error: str | None  # None when the completion was checked normally (right or wrong)


_OK = VerifyResult(1.0, True, None)
_WRONG = VerifyResult(0.0, False, None)


def _fail(error: str) -> VerifyResult:
    return VerifyResult(0.0, False, error)


# ------------------------------------------------------------------------- arithmetic

_CANONICAL_INT_RE = re.compile(r"-?(?:0|[1-9][0-9]*)", re.ASCII)


def _check_arithmetic_reference(answer: str) -> None:
    if not isinstance(answer, str) or _CANONICAL_INT_RE.fullmatch(answer) is None or answer == "-0":
        raise ValueError(f"arithmetic reference answer is not a canonical integer: {answer!r}")


def _verify_arithmetic(completion: str, answer: str) -> VerifyResult:
    _check_arithmetic_reference(answer)
    text = completion.strip()
    if not text:
        return _fail("parse error: empty completion")
    if len(text) > MAX_EXPRESSION_CHARS:
        return _fail("parse error: completion too long for an integer")
    if _CANONICAL_INT_RE.fullmatch(text) is None or text == "-0":
        return _fail(f"parse error: not a canonical integer: {text[:40]!r}")
    return _OK if text == answer else _WRONG


# -------------------------------------------------------------------------- countdown

_COUNTDOWN_CHARS_RE = re.compile(r"[0-9+\-*/() ]*", re.ASCII)
_COUNTDOWN_SPEC_RE = re.compile(r"\s*(\d+(?:\s*,\s*\d+)*)\s*:\s*(-?\d+)\s*", re.ASCII)


def parse_countdown_reference(answer: str) -> tuple[tuple[int, ...], Fraction]:
    """(numbers, target) from a countdown reference: ``"3*5+7"`` or ``"3,5,7:22"``."""
    if not isinstance(answer, str):
        raise ValueError(f"countdown reference answer must be a string, got {type(answer).__name__}")
    m = _COUNTDOWN_SPEC_RE.fullmatch(answer)
    if m is not None:
        numbers = tuple(int(x) for x in m.group(1).split(","))
        return numbers, Fraction(int(m.group(2)))
    try:
        target = _countdown_value(answer)
        numbers = tuple(int(x) for x in safe_math.literals(answer))
    except SafeMathError as exc:
        raise ValueError(f"countdown reference answer is unreadable: {answer!r} ({exc})") from None
    return numbers, target


def _countdown_value(expr: str) -> Fraction:
    if _COUNTDOWN_CHARS_RE.fullmatch(expr) is None:
        bad = next(c for c in expr if _COUNTDOWN_CHARS_RE.fullmatch(c) is None)
        raise SafeMathError(f"disallowed character {bad!r}")
    return safe_math.evaluate(
        expr,
        ops=safe_math.ARITH_OPS,
        allow_unary=False,
        allow_float=False,
        max_len=MAX_EXPRESSION_CHARS,
        timeout=EXPRESSION_TIMEOUT_S,
    )


def _verify_countdown(completion: str, answer: str) -> VerifyResult:
    numbers, target = parse_countdown_reference(answer)
    text = completion.strip()
    if not text:
        return _fail("parse error: empty completion")
    if len(text) > MAX_EXPRESSION_CHARS:
        return _fail("parse error: expression too long")
    try:
        value = _countdown_value(text)
        used = [int(x) for x in safe_math.literals(text)]
    except SafeMathError as exc:
        msg = str(exc)
        if msg in ("timeout", "exponent too large", "result too large", "division by zero"):
            return _fail(msg)
        return _fail(msg if msg.startswith("parse error") else f"parse error: {msg}")
    if Counter(used) != Counter(numbers):
        return _fail(
            f"wrong numbers: used {sorted(used)}, must use each of {sorted(numbers)} exactly once"
        )
    return _OK if value == target else _WRONG


# ------------------------------------------------------------------------------- math

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS_RE = re.compile(r"answer\s+is\s*:?", re.IGNORECASE)
_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?", re.ASCII)


def _boxed_content(text: str) -> str | None:
    """Content of the last balanced ``\\boxed{...}``; None if there is none."""
    last = None
    for m in _BOXED_RE.finditer(text):
        last = m
    if last is None:
        return None
    depth = 1
    start = last.end()
    for i in range(start, len(text)):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None  # unbalanced: treat as no box


def extract_final_answer(text: str) -> str | None:
    """The final answer in a free-form solution, or None if nothing answer-like is found."""
    boxed = _boxed_content(text)
    if boxed is not None:
        return boxed.strip()
    cut = text.rfind("####")
    tail = None
    if cut >= 0:
        tail = text[cut + 4 :]
    else:
        last = None
        for m in _ANSWER_IS_RE.finditer(text):
            last = m
        if last is not None:
            tail = text[last.end() :]
    if tail is not None:
        line = tail.strip().split("\n", 1)[0].strip()
        line = line.rstrip(".").strip()
        if line:
            return line
    last_num = None
    for m in _NUMBER_RE.finditer(text):
        last_num = m
    return last_num.group(0) if last_num is not None else None


_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_FRAC_SHORT_RE = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)", re.ASCII)
_SQRT_RE = re.compile(r"\\sqrt")
_THOUSANDS_RE = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+)(?![\d,])", re.ASCII)
_LONE_ATOM_RE = re.compile(
    r"(?<![A-Za-z0-9)\\])\(([0-9]+(?:\.[0-9]+)?|[A-Za-z])\)(?![A-Za-z0-9(])", re.ASCII
)
_DROP = ("\\$", "\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "$", "\\displaystyle")


def normalize_math_answer(ans: str) -> str:
    """Canonical text of a short answer (see module doc); lower-cased, no spaces."""
    s = ans.strip().replace("\u2212", "-")  # unicode minus sign
    for token in _DROP:
        s = s.replace(token, "")
    for _ in range(3):  # nested \text{\text{..}} is rare; bounded anyway
        s = _TEXT_RE.sub(r"\1", s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\degree", "")
    s = s.replace("\\cdot", "*").replace("\\times", "*")
    for _ in range(5):  # innermost fractions first; bounded
        new = _FRAC_RE.sub(r"(\1)/(\2)", s)
        new = _FRAC_SHORT_RE.sub(r"(\1)/(\2)", new)
        if new == s:
            break
        s = new
    s = _THOUSANDS_RE.sub(lambda m: m.group(1).replace(",", ""), s)
    s = s.replace("{", "(").replace("}", ")").replace("^", "**")
    s = "".join(s.split())
    # "x^{2}" and "x^2", "\\frac{3}{4}" and "3/4": drop parens around a lone number/letter
    s = _LONE_ATOM_RE.sub(r"\1", s)
    s = s.rstrip(".")
    if s.startswith("x=") or s.startswith("y="):
        s = s[2:]
    return s.lower()


def _as_number(norm: str) -> Fraction | None:
    if not norm or len(norm) > MAX_ANSWER_CHARS or _SQRT_RE.search(norm):
        return None
    try:
        return safe_math.evaluate(norm, max_len=MAX_ANSWER_CHARS, timeout=EXPRESSION_TIMEOUT_S)
    except SafeMathError:
        return None


def _reference_answer(answer: str) -> str:
    if _BOXED_RE.search(answer) or "####" in answer:
        extracted = extract_final_answer(answer)
        if extracted is not None:
            return extracted
    return answer.strip()


def _verify_math(completion: str, answer: str) -> VerifyResult:
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"math reference answer must be a non-empty string: {answer!r}")
    pred = extract_final_answer(completion)
    if pred is None:
        return _fail("parse error: no final answer found")
    if len(pred) > MAX_ANSWER_CHARS:
        return _fail("parse error: final answer too long")
    ref_norm = normalize_math_answer(_reference_answer(answer)[: 4 * MAX_ANSWER_CHARS])
    pred_norm = normalize_math_answer(pred)
    if not pred_norm:
        return _fail("parse error: empty final answer")
    ref_num = _as_number(ref_norm)
    if ref_num is not None:
        pred_num = _as_number(pred_norm)
        if pred_num is not None:
            return _OK if pred_num == ref_num else _WRONG
        if _only_number(pred) == ref_num:
            return _OK
    if pred_norm == ref_norm:
        return _OK
    verdict = symbolic.compare(pred_norm, ref_norm, timeout_s=SYMBOLIC_TIMEOUT_S)
    if verdict.equal:
        return _OK
    return _WRONG if verdict.error is None else _fail(verdict.error)


def _only_number(pred: str) -> Fraction | None:
    """The value of the one number in a non-numeric answer ("42 apples", "x=42", "10 cm")."""
    nums = _NUMBER_RE.findall(pred.replace("\u2212", "-"))
    return _as_number(normalize_math_answer(nums[0])) if len(nums) == 1 else None


# ---------------------------------------------------------------------------- registry

VERIFIERS: dict[str, Callable[[str, str], VerifyResult]] = {
    "arithmetic": _verify_arithmetic,
    "countdown": _verify_countdown,
    "math": _verify_math,
}


def check_reference(verifier: str, answer: str) -> None:
    """Raise ValueError if ``answer`` is not a usable reference for ``verifier``."""
    if verifier not in VERIFIERS:
        raise ValueError(f"unknown verifier {verifier!r}; known: {sorted(VERIFIERS)}")
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"reference answer must be a non-empty string: {answer!r}")
    if verifier == "arithmetic":
        _check_arithmetic_reference(answer)
    elif verifier == "countdown":
        parse_countdown_reference(answer)


def verify(verifier: str, completion: str, answer: str) -> VerifyResult:
    """Score ``completion`` against ``answer``. Never raises because of the completion."""
    fn = VERIFIERS.get(verifier)
    if fn is None:
        raise ValueError(f"unknown verifier {verifier!r}; known: {sorted(VERIFIERS)}")
    if not isinstance(completion, str):
        return _fail(f"parse error: completion is {type(completion).__name__}, not str")
    if len(completion) > MAX_COMPLETION_CHARS:
        return _fail(f"completion too long ({len(completion)} > {MAX_COMPLETION_CHARS} characters)")
    try:
        return fn(completion, answer)
    except ValueError:
        # a bad *reference* is a data error and must surface; re-check to tell it apart
        check_reference(verifier, answer)
        return _fail("internal error: ValueError")
    except (RecursionError, MemoryError) as exc:
        return _fail(f"internal error: {type(exc).__name__}")
    except Exception as exc:  # noqa: BLE001 - a verifier bug must not kill a training round
        return _fail(f"internal error: {type(exc).__name__}: {exc}"[:200])


def verify_batch(
    verifier_names: str | Sequence[str], completions: Sequence[str], answers: Sequence[str]
) -> list[VerifyResult]:
    """Verify many completions; ``verifier_names`` may be a single name for all rows."""
    n = len(completions)
    if len(answers) != n:
        raise ValueError(f"got {n} completions but {len(answers)} answers")
    if isinstance(verifier_names, str):
        names: Sequence[str] = [verifier_names] * n
    else:
        names = verifier_names
        if len(names) != n:
            raise ValueError(f"got {n} completions but {len(names)} verifier names")
    return [verify(v, c, a) for v, c, a in zip(names, completions, answers)]
