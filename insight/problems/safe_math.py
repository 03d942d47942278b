"""Restricted, exact arithmetic over untrusted text (model completions, dataset answers).

The expression is parsed with ``ast.parse(text, mode="eval")`` -- parsing only, the
resulting tree is never compiled or run. :func:`evaluate` walks the tree itself and
accepts exactly these node types:

* ``Expression`` (the root), ``BinOp`` with ``+ - * /`` and optionally ``**``,
* ``UnaryOp`` with unary ``-`` / ``+`` (can be switched off),
* ``Constant`` holding an ``int`` or ``float`` (not ``bool``, ``complex``, ``str``...),
  written as plain ASCII decimal digits (``12``, ``1.5``, ``.5``, ``2e3``); hex, octal,
  binary and ``1_000`` style literals are rejected.

Parentheses are only grouping and leave no node. Everything else (``Name``, ``Call``,
``Attribute``, ``Subscript``, ``Lambda``, comprehensions, strings, comparisons, ``//``,
``%``, bit operators ...) raises :class:`SafeMathError` naming the construct.

All arithmetic is done in :class:`fractions.Fraction`, so results are exact. Work is
structurally bounded before anything expensive happens:

* ``max_len`` characters of input (checked first, so a 1 MB string costs nothing),
* ``max_nodes`` AST nodes (so recursion depth of the walk is bounded too),
* ``|exponent| <= max_exponent`` and exponents must be integers,
* every literal and every intermediate result must have numerator and denominator of at
  most ``max_bits`` bits; for ``**`` the size of the result is estimated *before* it is
  computed (``9**9**9**9`` and ``2**100000`` are refused without being computed),
* an optional wall-clock ``timeout`` checked at every node.

``RecursionError`` / ``MemoryError`` from the parser (deeply nested parentheses with a
raised ``max_len``) are turned into :class:`SafeMathError` as well.
"""

from __future__ import annotations

import ast
import re
import time
from fractions import Fraction

__all__ = [
    "SafeMathError",
    "evaluate",
    "literals",
    "DEFAULT_MAX_LEN",
    "DEFAULT_MAX_NODES",
    "DEFAULT_MAX_EXPONENT",
    "DEFAULT_MAX_BITS",
    "ARITH_OPS",
    "ALL_OPS",
]

DEFAULT_MAX_LEN = 200
DEFAULT_MAX_NODES = 128
DEFAULT_MAX_EXPONENT = 64
DEFAULT_MAX_BITS = 1024

ARITH_OPS = frozenset({"+", "-", "*", "/"})
ALL_OPS = ARITH_OPS | {"**"}

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_UNARYOPS = {ast.USub: "-", ast.UAdd: "+"}
# operator nodes are leaves of the tree; they are walked over but carry no meaning
_OPERATOR_NODES = tuple(_BINOPS) + tuple(_UNARYOPS)

# A decimal literal as the user wrote it: digits, optional fraction, optional exponent.
_LITERAL_RE = re.compile(r"(\d+\.?\d*|\.\d+)(?:[eE]([+-]?\d+))?", re.ASCII)


class SafeMathError(ValueError):
    """The expression is not allowed, malformed, or would exceed a resource limit."""


def evaluate(
    text: str,
    *,
    ops: frozenset[str] | set[str] = ALL_OPS,
    allow_unary: bool = True,
    allow_float: bool = True,
    max_len: int = DEFAULT_MAX_LEN,
    max_nodes: int = DEFAULT_MAX_NODES,
    max_exponent: int = DEFAULT_MAX_EXPONENT,
    max_bits: int = DEFAULT_MAX_BITS,
    timeout: float | None = None,
) -> Fraction:
    """Evaluate an arithmetic expression exactly, or raise :class:`SafeMathError`.

    ``ops`` is the set of allowed binary operators among ``+ - * / **``.
    ``allow_float=False`` rejects decimal literals (``1.5``, ``2e3``).
    """
    tree = parse_expression(text, max_len=max_len, max_nodes=max_nodes)
    deadline = None if timeout is None else time.perf_counter() + timeout
    ctx = _Ctx(text, frozenset(ops), allow_unary, allow_float, max_exponent, max_bits, deadline)
    try:
        return ctx.visit(tree.body)
    except RecursionError:  # cannot happen with max_nodes bounded, but never propagate
        raise SafeMathError("expression nested too deeply") from None
    except ZeroDivisionError:
        raise SafeMathError("division by zero") from None


def literals(
    text: str, *, max_len: int = DEFAULT_MAX_LEN, max_nodes: int = DEFAULT_MAX_NODES
) -> list[str]:
    """The numeric literals of ``text`` as written, in source order.

    Only parses; call :func:`evaluate` to also check the construct whitelist.
    """
    tree = parse_expression(text, max_len=max_len, max_nodes=max_nodes)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            seg = ast.get_source_segment(text, node)
            found.append((node.lineno, node.col_offset, seg if seg is not None else repr(node.value)))
    found.sort()
    return [seg for _, _, seg in found]


# --------------------------------------------------------------------------- internals


def parse_expression(text: str, *, max_len: int, max_nodes: int) -> ast.Expression:
    if not isinstance(text, str):
        raise SafeMathError(f"expected a string, got {type(text).__name__}")
    if len(text) > max_len:
        raise SafeMathError(f"expression too long ({len(text)} > {max_len} characters)")
    if not text.strip():
        raise SafeMathError("empty expression")
    if "\x00" in text:
        raise SafeMathError("parse error: NUL character")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise SafeMathError(f"parse error: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise SafeMathError("parse error: expression nested too deeply") from None
    except ValueError as exc:  # e.g. source contains null bytes
        raise SafeMathError(f"parse error: {exc}") from None
    count = 0
    for _node in ast.walk(tree):  # ast.walk is iterative: no recursion on deep trees
        count += 1
        if count > max_nodes:
            raise SafeMathError(f"expression too large (more than {max_nodes} syntax nodes)")
    return tree


class _Ctx:
    __slots__ = ("text", "ops", "allow_unary", "allow_float", "max_exponent", "max_bits", "deadline")

    def __init__(self, text, ops, allow_unary, allow_float, max_exponent, max_bits, deadline):
        self.text = text.strip()
        self.ops = ops
        self.allow_unary = allow_unary
        self.allow_float = allow_float
        self.max_exponent = max_exponent
        self.max_bits = max_bits
        self.deadline = deadline

    def visit(self, node: ast.AST) -> Fraction:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise SafeMathError("timeout")
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.BinOp):
            sym = _BINOPS.get(type(node.op))
            if sym is None:
                raise SafeMathError(f"disallowed operator: {type(node.op).__name__}")
            if sym not in self.ops:
                raise SafeMathError(f"disallowed operator: {sym!r}")
            left = self.visit(node.left)
            right = self.visit(node.right)
            if sym == "+":
                return self._check(left + right)
            if sym == "-":
                return self._check(left - right)
            if sym == "*":
                return self._check(left * right)
            if sym == "/":
                if right == 0:
                    raise SafeMathError("division by zero")
                return self._check(left / right)
            return self._pow(left, right)
        if isinstance(node, ast.UnaryOp):
            sym = _UNARYOPS.get(type(node.op))
            if sym is None:
                raise SafeMathError(f"disallowed operator: {type(node.op).__name__}")
            if not self.allow_unary:
                raise SafeMathError(f"disallowed operator: unary {sym!r}")
            value = self.visit(node.operand)
            return -value if sym == "-" else value
        raise SafeMathError(f"disallowed construct: {type(node).__name__}")

    def _constant(self, node: ast.Constant) -> Fraction:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SafeMathError(f"disallowed construct: Constant of type {type(value).__name__}")
        seg = ast.get_source_segment(self.text, node)
        m = _LITERAL_RE.fullmatch(seg or "")
        if m is None:
            raise SafeMathError(f"disallowed literal: {seg!r}")
        if not self.allow_float and (isinstance(value, float) or m.group(2) is not None):
            raise SafeMathError(f"disallowed literal (integers only): {seg!r}")
        mantissa = m.group(1)
        exp10 = int(m.group(2)) if m.group(2) is not None else 0
        # bound the decimal exponent before Fraction() would build 10**exp10
        if abs(exp10) > 4 * self.max_bits:
            raise SafeMathError("exponent too large")
        return self._check(Fraction(mantissa) * Fraction(10) ** exp10)

    def _pow(self, base: Fraction, exponent: Fraction) -> Fraction:
        if exponent.denominator != 1:
            raise SafeMathError("non-integer exponent")
        e = exponent.numerator
        if abs(e) > self.max_exponent:
            raise SafeMathError("exponent too large")
        if base == 0 and e < 0:
            raise SafeMathError("division by zero")
        # estimate the size of the result before computing it
        bits = max(base.numerator.bit_length(), base.denominator.bit_length())
        if bits > 1 and (bits - 1) * abs(e) > self.max_bits:
            raise SafeMathError("result too large")
        return self._check(base**e)

    def _check(self, value: Fraction) -> Fraction:
        if (
            value.numerator.bit_length() > self.max_bits
            or value.denominator.bit_length() > self.max_bits
        ):
            raise SafeMathError("result too large")
        return value
