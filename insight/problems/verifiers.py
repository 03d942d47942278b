"""Verifiers: score a completion against a reference answer, safely.

A verifier never runs model output. Expressions go through the restricted, bounded
evaluator in :mod:`insight.problems.safe_math`, math answers also through the whitelisted,
time-limited symbolic checker in :mod:`insight.problems.symbolic`; everything else is plain string
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
    For datasets with a numeric (or short symbolic) final answer. An answer is right only
    if its WHOLE final answer is equivalent to the reference: RL optimises exactly what
    this rewards, so ``\\sqrt{42}``, ``42x``, ``42!``, ``42i``, ``142``, ``41 or 42`` are
    all wrong against ``42`` (tests/test_reward_hacking.py lists ~100 such answers).

    The final answer is the last ``\\boxed{...}`` (or ``\\fbox{...}``) if any, else the
    sentence after the last ``####`` or ``answer is``, else the last number in the text
    with the rest of its sentence. No answer can be read (reward 0, ``error`` set) when
    the last box is unclosed, when boxes are offered as alternatives (``\\boxed{41} or
    \\boxed{42}``) or a number follows the answer in its sentence (``\\boxed{42} or 43``,
    "The answer is 42. Or 43."), or when the last number is part of an expression or a
    list ("\\sqrt{42}", "root of 42", "41 or 42", "40, 41, 42"). A later box that
    corrects an earlier one in prose counts ("first \\boxed{1}, then \\boxed{42}").
    The same extraction is applied to the reference if it contains ``\\boxed`` or
    ``####`` (GSM8K style), otherwise the whole reference is the answer.

    A trailing unit may follow the value: ``\\text{..}``/``\\mathrm{..}`` words
    (``42\\,\\mathrm{cm}^2``) and, in prose only, plain words ("42 apples"). Inside a box
    (TeX math mode) bare letters are variables, so ``\\boxed{42 m}`` is ``42*m``. A unit
    is 1-4 words of letters, one-letter words only for SI units (``m``, ``g``, ``s`` ...),
    and never a word that changes or hedges the value ("squared", "million", "or
    more"). When both sides have a unit, the units must match.

    Both values are normalized (``$``, ``\\left``/``\\right``, spacing commands,
    ``\\text{...}``, thousands commas, ``\\frac{a}{b}``/``\\dfrac``, ``\\cdot``/
    ``\\times``, ``^``, a trailing ``\\%`` or ``^\\circ``, a leading ``x =``) and, when
    both read as numbers through the safe evaluator, compared exactly (``0.5 == 1/2 ==
    \\frac{1}{2}``; ``2e3`` is not read: in math notation it is ``2*e*3``). Otherwise
    equal normalized strings match, and as a last step :mod:`insight.problems.symbolic` tries to
    prove the two equal with SymPy (``2\\sqrt{3} == \\sqrt{12}``, ``x+1 == 1+x``,
    ``\\sqrt{1764} == 42``): it reads them through a whitelisted syntax tree, never with
    ``eval``, and checks in a separate process killed after ``SYMBOLIC_TIMEOUT_S``. A
    proof gives ``reward 1``; no proof, or an answer outside its small grammar, is wrong;
    a timeout (or a failed worker) is wrong with ``error`` set (``"symbolic check timed
    out"``).

    HF's ``math-verify`` was measured as a replacement on the same hostile and legitimate
    lists (scripts/compare_math_graders.py) and not adopted: see that script's docstring.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence

from insight.problems import safe_math, symbolic
from insight.problems.safe_math import SafeMathError

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
    success: bool  # is_success(reward) at the default threshold
    error: str | None  # None when the completion was checked normally (right or wrong)


def is_success(reward: float, threshold: float = 1.0) -> bool:
    """THE definition of a successful completion, for training rollouts (the posterior's
    evidence, DAPO's filter) and held-out evaluation alike: its reward reaches
    `rollout.success_threshold` (1.0: only a fully correct answer counts)."""
    return bool(reward >= threshold)


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
#
# Strictness (reward hacking): RL optimises exactly what this rewards, so an answer is
# right only when its WHOLE final answer reads as a value equal to the reference. Nothing
# is read "around" the right number: \sqrt{42}, 42x, 42!, 42i, 41 or 42, 142 are wrong.
# The only text allowed beside the value is a trailing unit (``42 \text{ cm}``, "42
# apples" in prose) made of plain words that cannot change the value (see _NOT_UNITS),
# and decorations that the datasets use (``\$``, a trailing ``\%`` or ``^\circ``).
# TeX's two modes decide what a bare word is: inside ``\boxed{}`` (math mode) letters are
# variables, so ``\boxed{42 m}`` is 42*m; in prose (after "answer is", "####", or a last
# number) words are words, so "The answer is 42 apples." is 42.
#
# HF's math-verify was measured as an alternative grader on tests/test_reward_hacking.py
# (scripts/compare_math_graders.py; numbers in the docstring there); see the module doc.

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS_RE = re.compile(r"answer\s+is\s*:?", re.IGNORECASE)
_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?", re.ASCII)
# a sentence ends at a period followed by a space or the end (not the one in 4.2)
_SENTENCE_END_RE = re.compile(r"\.(?=\s|$)")
_DIGIT_RE = re.compile(r"\d")
# what may separate two boxes that are alternatives, not a correction ("\boxed{1} or \boxed{2}")
_ALTERNATIVE_BOXES_RE = re.compile(
    r"\}\s*\$*\s*(?:[,;]|or|and|\\[lv]or|\\vee|\\q?quad|\\text\s*\{\s*(?:or|and|,)?\s*\})?\s*\$*\s*$"
)
# words right before a last number that make it part of something else ("root of 42",
# "41 or 42", "from 40 to 42", "not 42")
_NOT_AN_ANSWER_BEFORE = frozenset(
    "or nor and to than not of plus minus times over by between from except about around "
    "approximately approx roughly nearly almost least most maybe perhaps either sqrt root "
    "log ln exp sin cos tan factorial mod modulo".split()
)
# words that change or hedge the value, so never a unit ("42 squared", "42 \text{ or more}")
_NOT_UNITS = _NOT_AN_ANSWER_BEFORE | frozenset(
    "squared cubed power th million millions billion billions trillion thousand thousands "
    "hundred hundreds dozen dozens half halves third thirds quarter quarters tenth tenths "
    "hundredth hundredths thousandth thousandths more less fewer greater smaller above below "
    "under at no negative inverse reciprocal base repeating recurring i j e pi inf infinity "
    "infty if when where with without ish".split()
)
# one-letter units (m, g, s ...); any other single letter reads as a variable (42 x, 42 i)
_ONE_LETTER_UNITS = frozenset("mgslhLNJWVAK")
_TEXT_UNIT_RE = re.compile(
    r"\\(?:text|textrm|textbf|textnormal|mathrm|mbox)\s*\{([^{}]*)\}"
    r"\s*(?:\^\s*(?:[23]|\{\s*[23]\s*\}))?\s*$"
)
_PROSE_UNIT_RE = re.compile(r"(?<=[\d.$%}])\s+([A-Za-z]+(?:\s*[ /]\s*[A-Za-z]+){0,3})\s*$")
_MAX_UNIT_WORDS = 4
#: How far before an answer the hedge checks look (bounds their regex work on long text).
_LOOKBACK_CHARS = 100


class _NoAnswer(ValueError):
    """The completion's final answer cannot be read unambiguously (the message says why)."""


@dataclass(frozen=True)
class _Answer:
    text: str
    prose: bool  # read from running text: trailing words are words, not variables


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the ``}`` that closes a group opened just before ``start``; None if none."""
    depth = 1
    for i in range(start, len(text)):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _first_sentence(line: str) -> tuple[str, str]:
    """(the line up to its first sentence end, the rest of the line)."""
    m = _SENTENCE_END_RE.search(line)
    return (line, "") if m is None else (line[: m.start()], line[m.end() :])


def _boxed_answer(text: str) -> _Answer | None:
    """The last ``\\boxed{...}``; raises when it is unclosed or one of several alternatives."""
    last = None
    for m in _BOXED_RE.finditer(text):
        last = m
    if last is None:
        return None
    end = _closing_brace(text, last.end())
    if end is None:
        raise _NoAnswer("unclosed \\boxed{")
    before = text[: last.start()]
    # the tail only: the pattern is linear per start, but the completion may be 100 kB
    if _BOXED_RE.search(before) and _ALTERNATIVE_BOXES_RE.search(before[-_LOOKBACK_CHARS:]):
        raise _NoAnswer("several boxed answers")
    rest_of_sentence = _first_sentence(text[end + 1 :].split("\n", 1)[0])[0]
    if _DIGIT_RE.search(rest_of_sentence):  # "\boxed{42} or 43", "\boxed{42} (or 43)"
        raise _NoAnswer("another number next to the boxed answer")
    return _Answer(text[last.end() : end].strip(), prose=False)


def _marked_answer(text: str) -> _Answer | None:
    """The sentence after the last ``####`` or "answer is"; None if there is none."""
    cut = text.rfind("####")
    if cut >= 0:
        tail = text[cut + 4 :]
    else:
        last = None
        for m in _ANSWER_IS_RE.finditer(text):
            last = m
        if last is None:
            return None
        tail = text[last.end() :]
    sentence, rest = _first_sentence(tail.strip().split("\n", 1)[0])
    if not sentence.strip():
        return None
    if _DIGIT_RE.search(rest):  # "The answer is 42. Or maybe 43."
        raise _NoAnswer("another number after the final answer")
    return _Answer(sentence.strip(), prose=True)


def _last_number_answer(text: str) -> _Answer | None:
    """The last number with the rest of its sentence, unless it is part of an expression
    or of a list ("\\sqrt{42}", "log 42", "root of 42", "41 or 42", "40, 41, 42")."""
    last = None
    for m in _NUMBER_RE.finditer(text):
        last = m
    if last is None:
        return None
    before = text[: last.start()]
    if before and (before[-1].isalpha() or before[-1] in "\\^_{}()'"):
        return None
    before = before[-_LOOKBACK_CHARS:].rstrip(" \t$")  # bounded: regexes below end in $
    word = re.search(r"(\\?)([A-Za-z]+)$", before)
    if word and (word[1] or word[2].lower() in _NOT_AN_ANSWER_BEFORE):
        return None
    if re.search(r"\d\s*[,;]?$", before):
        return None
    sentence = _first_sentence(text[last.end() :].split("\n", 1)[0])[0]
    return _Answer((last.group(0) + sentence).strip(), prose=True)


def _find_answer(text: str) -> _Answer | None:
    boxed = _boxed_answer(text)
    if boxed is not None:
        return boxed
    return _marked_answer(text) or _last_number_answer(text)


def extract_final_answer(text: str) -> str | None:
    """The final answer in a free-form solution, or None if none can be read unambiguously."""
    try:
        found = _find_answer(text)
    except _NoAnswer:
        return None
    return None if found is None else found.text


def _unit(text: str) -> str | None:
    """``text`` as a normalized unit, or None if it is not plainly one."""
    words = [w for w in re.split(r"[\s/]+", text.strip()) if w]
    if not 1 <= len(words) <= _MAX_UNIT_WORDS:
        return None
    for w in words:
        if not (w.isascii() and w.isalpha()) or w.lower() in _NOT_UNITS:
            return None
        if len(w) == 1 and w not in _ONE_LETTER_UNITS:
            return None
    return " ".join(words).lower()


def _split_unit(answer: _Answer) -> tuple[str, str | None]:
    """(the value's text, its trailing unit or None)."""
    text = answer.text
    patterns = (_TEXT_UNIT_RE, _PROSE_UNIT_RE) if answer.prose else (_TEXT_UNIT_RE,)
    for pattern in patterns:
        m = pattern.search(text)
        if m is not None and m.start() > 0:
            unit = _unit(m.group(1))
            if unit is not None:
                return text[: m.start()].rstrip(" ~"), unit
    return text, None


_TEXT_RE = re.compile(r"\\(?:text|textbf|textrm|textnormal|mathrm|mbox)\s*\{([^{}]*)\}")
_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_FRAC_SHORT_RE = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)", re.ASCII)
_SQRT_RE = re.compile(r"\\sqrt")
_THOUSANDS_RE = re.compile(r"(?<![\d.])(\d{1,3}(?:,\d{3})+)(?![\d,])", re.ASCII)
_LONE_ATOM_RE = re.compile(
    r"(?<![A-Za-z0-9)\\])\(([0-9]+(?:\.[0-9]+)?|[A-Za-z])\)(?![A-Za-z0-9(])", re.ASCII
)
# decorations, dropped only at the end: "42\%" is 42, "\%42" and "4\%2" are not read
_TRAILING_DECORATION_RE = re.compile(r"(?:\\?%|\^\s*\{?\s*\\circ\s*\}?|\\degree|\u00b0)\s*$")
# a digit followed by e/E: Python's 2e3, but 2*e*3 in math notation, so neither
_E_NOTATION_RE = re.compile(r"\d[eE]")
_DROP = ("\\$", "\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "$", "\\displaystyle")


def normalize_math_answer(ans: str) -> str:
    """Canonical text of a short answer (see module doc); lower-cased, no spaces."""
    s = ans.strip().replace("\u2212", "-")  # unicode minus sign
    for token in _DROP:
        s = s.replace(token, "")
    for _ in range(3):  # nested \text{\text{..}} is rare; bounded anyway
        s = _TEXT_RE.sub(r"\1", s)
    s = _TRAILING_DECORATION_RE.sub("", s.strip())
    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("{,}", ",")
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
    if _E_NOTATION_RE.search(norm):
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
    try:
        found = _find_answer(completion)
    except _NoAnswer as exc:
        return _fail(f"parse error: {exc}")
    if found is None:
        return _fail("parse error: no final answer found")
    if len(found.text) > MAX_ANSWER_CHARS:
        return _fail("parse error: final answer too long")
    reference = _Answer(_reference_answer(answer)[: 4 * MAX_ANSWER_CHARS], prose=True)
    pred_text, pred_unit = _split_unit(found)
    ref_text, ref_unit = _split_unit(reference)
    if pred_unit is not None and ref_unit is not None and pred_unit != ref_unit:
        return _WRONG  # 10 m is not 10 cm
    pred_norm, ref_norm = normalize_math_answer(pred_text), normalize_math_answer(ref_text)
    if not pred_norm:
        return _fail("parse error: empty final answer")
    ref_num, pred_num = _as_number(ref_norm), _as_number(pred_norm)
    if ref_num is not None and pred_num is not None:
        return _OK if pred_num == ref_num else _WRONG
    if pred_norm == ref_norm:
        return _OK
    verdict = symbolic.compare(pred_norm, ref_norm, timeout_s=SYMBOLIC_TIMEOUT_S)
    if verdict.equal:
        return _OK
    return _WRONG if verdict.error is None else _fail(verdict.error)


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
