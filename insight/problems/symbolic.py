"""Symbolic equivalence of two short math answers, without evaluating either of them.

Why this exists: the ``math`` verifier compares final answers exactly as numbers (through
:mod:`insight.problems.safe_math`) or as normalized strings, so ``2\\sqrt{3}`` against
``\\sqrt{12}``, ``1+x`` against ``x+1`` or ``x^2+2x+1`` against ``(x+1)^2`` would be
scored wrong. SymPy can prove such pairs equal, but it may not see model output directly:
its string readers (``sympify``, ``parse_expr``) call ``eval``, and its ``simplify`` can
run for minutes or exhaust memory (DESIGN.md §6). So the work is split in two:

1. :func:`to_source`, in the calling process and without SymPy, reads the answer with a
   small tokenizer into Python syntax (``^`` -> ``**``, braces -> parentheses, implicit
   products such as ``2x``, ``3(x+1)``, ``2\\sqrt{3}`` made explicit), parses that with
   ``ast.parse`` (parsing, not evaluation) and checks the tree against a whitelist and
   against size limits. Anything else raises :class:`SafeMathError` with the reason.
2. Only the checked source strings go to a worker process, which checks them again,
   builds SymPy expressions from the tree node by node and decides: structurally equal,
   or clearly different values at one sample point (cheap, and where most wrong answers
   end), or else ``simplify(a - b) == 0``.
   A check that overruns its timeout is stopped by killing the worker (a thread could not
   be stopped, and ``signal.alarm`` only works in the main thread); the next call starts
   a fresh worker.

Accepted notation: decimal numbers (exact: ``0.5`` is ``1/2``); single-letter variables;
the constants ``pi``, ``e``, ``i`` (imaginary unit) and ``oo`` (also ``\\infty``); unary
``+ -``; binary ``+ - * / ^ **``; the functions ``sqrt sin cos tan log ln exp abs`` and
``\\frac{a}{b}``, with their LaTeX spellings (``\\sqrt``, ``\\ln``, ``\\pi``, ...). A
function takes its argument in braces or parentheses, or, as in TeX, one letter or one
digit (``\\sqrt3``, ``\\sin x``). Implicit products are read after a number, a name or
``)`` when followed by a name, a function or ``(``; a number after an operand (``x2``,
``2e3``, ``(x)2``) is rejected rather than guessed.

Limits, all checked before SymPy sees anything: ``safe_math.DEFAULT_MAX_LEN`` characters,
``safe_math.DEFAULT_MAX_NODES`` syntax nodes, :data:`MAX_DEPTH` levels of nesting, numeric
exponents with numerator and denominator of at most ``safe_math.DEFAULT_MAX_EXPONENT``,
and an upper bound on the size of every number SymPy might compute exactly (it evaluates
``Integer ** Integer`` eagerly, even in ``2**(x-x+99)``) of ``safe_math.DEFAULT_MAX_BITS``
bits. The worker's address space is capped as a last resort against expansions.
"""

from __future__ import annotations

import ast
import functools
import multiprocessing
import operator
import os
import re
import resource
import string
import threading
from dataclasses import dataclass
from fractions import Fraction

from insight.problems import safe_math
from insight.problems.safe_math import SafeMathError

__all__ = ["Verdict", "compare", "equivalent", "to_source", "DEFAULT_TIMEOUT_S", "MAX_DEPTH"]

DEFAULT_TIMEOUT_S = 2.0
#: Deepest nesting of operators and calls in an answer.
MAX_DEPTH = 32
#: A fresh worker is a new interpreter importing SymPy (about 1 s); its start is bounded
#: separately so that a slow start cannot be mistaken for a slow check.
WORKER_START_TIMEOUT_S = 60.0
#: Address-space cap of the worker process.
WORKER_MEMORY_BYTES = 2 << 30

MAX_LEN = safe_math.DEFAULT_MAX_LEN
MAX_BITS = safe_math.DEFAULT_MAX_BITS
MAX_EXPONENT = safe_math.DEFAULT_MAX_EXPONENT

# name -> number of arguments
_FUNCTIONS = {"sqrt": 1, "sin": 1, "cos": 1, "tan": 1, "log": 1, "exp": 1, "abs": 1, "frac": 2}
_CONSTANTS = frozenset({"pi", "e", "i", "oo"})
_ALIASES = {"ln": "log", "dfrac": "frac", "tfrac": "frac", "infty": "oo"}
# the only backslash commands read; \sinh, \binom, \pir (``\pi r`` without its space) ... are not
_COMMANDS = frozenset(
    {"sqrt", "sin", "cos", "tan", "log", "ln", "exp", "frac", "dfrac", "tfrac", "pi", "infty"}
)

_TOKEN_RE = re.compile(
    r"\s*(?:(?P<number>\d+(?:\.\d*)?|\.\d+)|(?P<word>\\?[A-Za-z]+)|(?P<op>\*\*|[-+*/^(){}]))",
    re.ASCII,
)
_OPS = {"^": ("op", "**"), "{": ("open", "("), "}": ("close", ")"),
        "(": ("open", "("), ")": ("close", ")")}  # fmt: skip
_OPERAND_END = frozenset({"number", "name", "close"})
_OPERAND_START = frozenset({"name", "function", "open"})

_ARITHMETIC = (ast.Add, ast.Sub, ast.Mult, ast.Div)
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.Pow: operator.pow}  # fmt: skip
# pi, e and i are small and never turn into big rationals; a variable is at most as big as
# the numbers it cancels against, so its own size is 1 bit
_NAME_BITS = {"pi": 2, "e": 2}


@dataclass(frozen=True)
class Verdict:
    """Outcome of :func:`compare`."""

    equal: bool | None  # None: not decided (unreadable answer, no proof either way, error)
    error: str | None = None  # why the check was cut short (timeout, worker failure)


def equivalent(pred: str, ref: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool | None:
    """True if SymPy proves ``pred == ref``, False if it proves them different, None if
    either is not an accepted expression, no proof was found, or ``timeout_s`` ran out."""
    return compare(pred, ref, timeout_s).equal


def compare(pred: str, ref: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Verdict:
    """:func:`equivalent`, also saying whether the check timed out or failed.

    Calls are serialized (one worker): a call waits for the calls before it, then at
    most ``timeout_s`` for its own check, plus a worker start when it is the first call
    or follows a timeout.
    """
    try:
        sources = to_source(pred), to_source(ref)
    except SafeMathError:
        return Verdict(None)
    with _lock:
        return _ask_worker(*sources, timeout_s)


# ------------------------------------------------------------------- reading (no SymPy)


def to_source(text: str) -> str:
    """The answer as checked Python-syntax source, or raise :class:`SafeMathError`."""
    if not isinstance(text, str):
        raise SafeMathError(f"expected a string, got {type(text).__name__}")
    if len(text) > MAX_LEN:
        raise SafeMathError(f"expression too long ({len(text)} > {MAX_LEN} characters)")
    source = _join(_tokens(text))
    _check(source)
    return source


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) pairs; kind is number, name, function, op, open or close."""
    tokens: list[tuple[str, str]] = []
    text = text.rstrip()
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            bad = text[pos:].lstrip(string.whitespace)[0]  # past the spaces the pattern skips
            raise SafeMathError(f"disallowed character {bad!r}")
        pos = m.end()
        if m["number"]:
            token = ("number", m["number"])
        elif m["word"]:
            token = _word(m["word"])
        else:
            token = _OPS.get(m["op"], ("op", m["op"]))
        if tokens and tokens[-1][0] == "function" and token[0] != "open":
            # TeX reads one token as the argument: \sqrt3 is sqrt(3), \sqrt12 is not sqrt(12)
            if token[0] == "name" or (token[0] == "number" and len(token[1]) == 1):
                tokens += [("open", "("), token, ("close", ")")]
                continue
            raise SafeMathError(f"{tokens[-1][1]} needs its argument in braces or parentheses")
        tokens.append(token)
    return tokens


def _word(word: str) -> tuple[str, str]:
    name = word.lstrip("\\")
    if word.startswith("\\") and name not in _COMMANDS:
        raise SafeMathError(f"unknown command {word!r}")
    name = _ALIASES.get(name, name)
    if name in _FUNCTIONS:
        return ("function", name)
    if name in _CONSTANTS or len(name) == 1:
        return ("name", name)
    raise SafeMathError(f"disallowed name {name!r} (variables are single letters)")


def _join(tokens: list[tuple[str, str]]) -> str:
    """Python source: implicit products made explicit, ``frac(a)(b)`` as ``frac(a,b)``."""
    out: list[str] = []
    groups: list[str] = []  # per open parenthesis: "numerator" of a frac, or "group"
    prev = None
    awaiting_denominator = False
    for kind, text in tokens:
        if awaiting_denominator:
            if kind != "open":
                raise SafeMathError("frac needs two arguments")
            groups.append("group")
            awaiting_denominator, prev = False, kind
            continue
        if prev in _OPERAND_END and kind == "number":
            raise SafeMathError(f"number {text!r} right after an operand")
        if prev in _OPERAND_END and kind in _OPERAND_START:
            out.append("*")
        if kind == "open":
            groups.append("numerator" if out and out[-1] == "frac" else "group")
        elif kind == "close" and groups and groups.pop() == "numerator":
            out.append(",")
            awaiting_denominator, prev = True, None
            continue
        out.append(text)
        prev = kind
    if awaiting_denominator:
        raise SafeMathError("frac needs two arguments")
    return "".join(out)


def _check(source: str) -> ast.Expression:
    """Parse ``source`` and check its tree against the whitelist and the size limits."""
    # the rewrite at most doubles the (already bounded) input: the length cap is loose
    tree = safe_math.parse_expression(source, max_len=4 * MAX_LEN, max_nodes=safe_math.DEFAULT_MAX_NODES)
    _bits(tree.body, source, depth=0)
    return tree


def _bits(node: ast.AST, source: str, depth: int) -> int:
    """Upper bound on the bits of numerator and denominator of any rational that SymPy
    may compute exactly from ``node``; raises for anything outside the whitelist."""
    if depth > MAX_DEPTH:
        raise SafeMathError(f"expression nested too deeply (more than {MAX_DEPTH} levels)")
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        value = _literal(node, source)
        bits = max(value.numerator.bit_length(), value.denominator.bit_length())
    elif isinstance(node, ast.Name) and (node.id in _CONSTANTS or len(node.id) == 1):
        bits = _NAME_BITS.get(node.id, 1)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        bits = _bits(node.operand, source, depth + 1)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        bits = _power_bits(_bits(node.left, source, depth + 1), node.right, source, depth + 1)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, _ARITHMETIC):
        # a/b * c/d = ac/bd and a/b + c/d = (ad+bc)/bd: sizes add, plus a carry for sums
        carry = isinstance(node.op, (ast.Add, ast.Sub))
        bits = _bits(node.left, source, depth + 1) + _bits(node.right, source, depth + 1) + carry
    elif isinstance(node, ast.Call) and _is_whitelisted_call(node):
        bits = 1 + sum(_bits(arg, source, depth + 1) for arg in node.args)
    else:
        raise SafeMathError(f"disallowed construct: {type(node).__name__}")
    if bits > MAX_BITS:
        raise SafeMathError("expression too large")
    return bits


def _power_bits(base_bits: int, exponent: ast.AST, source: str, depth: int) -> int:
    exponent_bits = _bits(exponent, source, depth)
    try:
        value = safe_math.evaluate(ast.get_source_segment(source, exponent))
    except SafeMathError:  # not plain arithmetic: it has names or calls
        value = None
    if value is not None:
        if max(abs(value.numerator), value.denominator) > MAX_EXPONENT:
            raise SafeMathError("exponent too large")
        return base_bits * max(abs(value.numerator), 1)
    # a symbolic exponent may still collapse to an integer (x-x+9) of up to exponent_bits
    if base_bits << exponent_bits > MAX_BITS:
        raise SafeMathError("exponent too large")
    return base_bits << exponent_bits


def _is_whitelisted_call(node: ast.Call) -> bool:
    return (
        isinstance(node.func, ast.Name)
        and _FUNCTIONS.get(node.func.id) == len(node.args)
        and not node.keywords
    )


def _literal(node: ast.Constant, source: str) -> Fraction:
    # from the digits as written, so that 0.1 is exactly 1/10
    return Fraction(ast.get_source_segment(source, node))


# ------------------------------------------------------------------ the worker process


_READY = "ready"


def _serve(conn) -> None:
    """Worker main loop: answer (pred, ref) source pairs until the pipe closes."""
    _cap_memory()
    _sympy_names()  # import SymPy before saying ready: timeouts then measure checks only
    conn.send(_READY)
    while True:
        try:
            pred, ref = conn.recv()
        except EOFError:
            return
        conn.send(_decide(pred, ref))


def _cap_memory() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = WORKER_MEMORY_BYTES if hard == resource.RLIM_INFINITY else min(hard, WORKER_MEMORY_BYTES)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def _decide(pred: str, ref: str) -> bool | None:
    import sympy

    try:
        a, b = _to_sympy(pred), _to_sympy(ref)
        if a.has(sympy.nan, sympy.zoo) or b.has(sympy.nan, sympy.zoo):
            return None  # 1/0, oo-oo: no value to compare
        if a == b:
            return True
        if _differ_at_a_point(a, b):
            return False  # most wrong answers end here, without the costly simplify
        difference = sympy.simplify(a - b)
        if difference.is_zero is not None:
            return bool(difference.is_zero)
        return difference.equals(0)
    except Exception:  # noqa: BLE001 - SymPy errors (also MemoryError) mean "no proof"
        return None


def _differ_at_a_point(a, b) -> bool:
    """True if ``a`` and ``b`` take clearly different values at one sample point."""
    import sympy

    variables = sorted(a.free_symbols | b.free_symbols, key=str)
    point = {v: sympy.Rational(k + 3, 7) for k, v in enumerate(variables)}
    a_value, b_value = a.subs(point).evalf(30), b.subs(point).evalf(30)
    if not (a_value.is_finite and b_value.is_finite):
        return False  # a pole or branch point: no evidence either way
    # 30 digits are computed; a relative gap far above that precision is a real difference
    return bool(abs(a_value - b_value) > 1e-15 * max(abs(a_value), abs(b_value), 1))


def _to_sympy(source: str):
    # re-checked: the worker does not rely on its caller having checked the source
    return _build(_check(source).body, source)


def _build(node: ast.AST, source: str):
    """SymPy expression of a checked tree."""
    import sympy

    if isinstance(node, ast.Constant):
        value = _literal(node, source)
        return sympy.Rational(value.numerator, value.denominator)
    if isinstance(node, ast.Name):
        names = _sympy_names()
        return names[node.id] if node.id in names else sympy.Symbol(node.id)
    if isinstance(node, ast.UnaryOp):
        operand = _build(node.operand, source)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_build(node.left, source), _build(node.right, source))
    return _sympy_names()[node.func.id](*(_build(arg, source) for arg in node.args))


@functools.cache
def _sympy_names() -> dict:
    import sympy  # here only: the calling process never imports SymPy for this module

    return {
        "pi": sympy.pi, "e": sympy.E, "i": sympy.I, "oo": sympy.oo,
        "sqrt": sympy.sqrt, "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan,
        "log": sympy.log, "exp": sympy.exp, "abs": sympy.Abs, "frac": operator.truediv,
    }  # fmt: skip


# ------------------------------------------------------------- the calling side


class _Worker:
    """One SymPy process, reused across checks and killed when one overruns."""

    def __init__(self) -> None:
        # spawn, not fork: the caller may be a threaded process (Prefect, torch)
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child_conn,), daemon=True, name="insight-symbolic"
        )
        self._process.start()
        child_conn.close()  # so that a dead worker reads as EOF here
        try:
            if not self._conn.poll(WORKER_START_TIMEOUT_S) or self._conn.recv() != _READY:
                raise TimeoutError("symbolic worker did not start")
        except BaseException:
            self.kill()
            raise

    def ask(self, pred: str, ref: str, timeout_s: float) -> bool | None:
        self._conn.send((pred, ref))
        if not self._conn.poll(timeout_s):
            raise TimeoutError
        return self._conn.recv()

    def kill(self) -> None:
        self._process.kill()
        self._process.join()
        self._conn.close()


_lock = threading.Lock()
_worker: _Worker | None = None


def _ask_worker(pred: str, ref: str, timeout_s: float) -> Verdict:
    global _worker
    try:
        if _worker is None:
            _worker = _Worker()
        return Verdict(_worker.ask(pred, ref, timeout_s))
    except TimeoutError as exc:
        error = str(exc) or "symbolic check timed out"
    except Exception as exc:  # noqa: BLE001 - a broken worker must not break verification
        error = f"symbolic worker failed: {type(exc).__name__}: {exc}"[:200]
    if _worker is not None:
        _worker.kill()
        _worker = None
    return Verdict(None, error)


def _forget_worker() -> None:
    # a forked child must not talk over its parent's pipe, nor inherit a held lock
    global _lock, _worker
    _lock, _worker = threading.Lock(), None


os.register_at_fork(after_in_child=_forget_worker)
