"""Specification of the restricted evaluator used on untrusted expressions."""

from fractions import Fraction

import pytest

from insight.problems.safe_math import ARITH_OPS, SafeMathError, evaluate, literals


@pytest.mark.parametrize(
    "expr, value",
    [
        ("1+2*3", 7),
        ("(1+2)*3", 9),
        ("7-10", -3),
        ("-3--3", 0),
        ("+4", 4),
        ("1/3*3", 1),  # exact: Fractions, not floats
        ("1/3", Fraction(1, 3)),
        ("0.1+0.2", Fraction(3, 10)),  # decimals are exact too
        (".5", Fraction(1, 2)),
        ("2e3", 2000),
        ("2**10", 1024),
        ("2**-2", Fraction(1, 4)),
        ("(((((1)))))", 1),
        ("  3 * 5 + 7  ", 22),
    ],
)
def test_evaluates_arithmetic_exactly(expr, value):
    assert evaluate(expr) == value


@pytest.mark.parametrize(
    "expr, construct",
    [
        ("__import__('os').system('echo hi')", "Call"),
        ("().__class__.__bases__[0].__subclasses__()", "Call"),
        ("().__class__", "Attribute"),
        ("x", "Name"),
        ("x + 1", "Name"),
        ("[1, 2][0]", "Subscript"),
        ("lambda: 1", "Lambda"),
        ("[i for i in (1, 2)]", "ListComp"),
        ("'a' * 3", "str"),
        ("1 < 2", "Compare"),
        ("True + 1", "bool"),
        ("1j * 2", "complex"),
        ("7 // 2", "FloorDiv"),
        ("7 % 2", "Mod"),
        ("1 << 3", "LShift"),
        ("~1", "Invert"),
        ("(1, 2)", "Tuple"),
        ("1 if 1 else 2", "IfExp"),
    ],
)
def test_disallowed_constructs_are_named(expr, construct):
    with pytest.raises(SafeMathError, match=construct):
        evaluate(expr)


@pytest.mark.parametrize("expr", ["0x10", "0b11", "0o7", "1_000"])
def test_only_plain_decimal_literals(expr):
    with pytest.raises(SafeMathError, match="literal"):
        evaluate(expr)


@pytest.mark.parametrize(
    "expr, message",
    [
        ("9**9**9**9", "exponent too large"),
        ("2**100000", "exponent too large"),
        ("(2**64)**64", "result too large"),
        ("10**60*10**60*10**60*10**60*10**60*10**60", "result too large"),
        ("1e999999999", "exponent too large"),
        ("2**(1/2)", "non-integer exponent"),
        ("1/0", "division by zero"),
        ("1/(2-2)", "division by zero"),
        ("0**-1", "division by zero"),
    ],
)
def test_resource_limits_refuse_before_computing(expr, message):
    with pytest.raises(SafeMathError, match=message):
        evaluate(expr)


def test_length_limit_is_checked_first():
    with pytest.raises(SafeMathError, match="too long"):
        evaluate("1+" * 500_000 + "1")  # 1 MB


def test_node_limit():
    with pytest.raises(SafeMathError, match="too large"):
        evaluate("+".join(["1"] * 99))
    with pytest.raises(SafeMathError, match="too large"):
        evaluate("-" * 150 + "1")


def test_deep_nesting_never_raises_recursion_error():
    # within the default length: parser limit or node limit
    with pytest.raises(SafeMathError):
        evaluate("(" * 99 + "1" + ")" * 99 + "+" + "(" * 50 + "1" + ")" * 50)
    # with the length limit lifted, the parser itself gives up: still a SafeMathError
    deep = "(" * 100_000 + "1" + ")" * 100_000
    with pytest.raises(SafeMathError):
        evaluate(deep, max_len=10**7)
    deep_unary = "-" * 100_000 + "1"
    with pytest.raises(SafeMathError):
        evaluate(deep_unary, max_len=10**7, max_nodes=10**7)


@pytest.mark.parametrize("expr", ["", "   ", "1+", "(1", "1)", "٣+١", "１２", "1\x002", "1;2", "1\n+2)"])
def test_malformed_input(expr):
    with pytest.raises(SafeMathError):
        evaluate(expr)


@pytest.mark.parametrize("value", [None, 12, b"12"])
def test_non_string_input(value):
    with pytest.raises(SafeMathError):
        evaluate(value)


def test_operator_whitelist_and_switches():
    with pytest.raises(SafeMathError, match=r"'\*\*'"):
        evaluate("2**3", ops=ARITH_OPS)
    with pytest.raises(SafeMathError, match="unary"):
        evaluate("-3+5", allow_unary=False)
    with pytest.raises(SafeMathError, match="integers only"):
        evaluate("1.5*2", allow_float=False)
    with pytest.raises(SafeMathError, match="integers only"):
        evaluate("1e2", allow_float=False)
    assert evaluate("3*(5+7)/4", ops=ARITH_OPS, allow_unary=False, allow_float=False) == 9


def test_timeout():
    with pytest.raises(SafeMathError, match="timeout"):
        evaluate("1+1", timeout=-1.0)


def test_literals_in_source_order():
    assert literals("3*(5+7)-1") == ["3", "5", "7", "1"]
    assert literals("10/2") == ["10", "2"]


def test_is_a_value_error():
    assert issubclass(SafeMathError, ValueError)
