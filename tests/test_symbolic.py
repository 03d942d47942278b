"""Specification of the symbolic equivalence checker used by the ``math`` verifier."""

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from insight.problems import symbolic
from insight.problems.safe_math import SafeMathError
from insight.problems.symbolic import Verdict, compare, equivalent, to_source


@pytest.fixture
def no_sympy(monkeypatch):
    """Fail the test if a check reaches the SymPy worker."""

    def reached(*args):
        raise AssertionError(f"reached the SymPy worker with {args}")

    monkeypatch.setattr(symbolic, "_ask_worker", reached)


# ------------------------------------------------------------------------ verdicts


@pytest.mark.parametrize(
    "pred, ref",
    [
        (r"2\sqrt{3}", r"\sqrt{12}"),
        ("x+1", "1+x"),
        ("(x+1)^2", "x^2+2x+1"),
        (r"\frac{\pi}{2}", "pi/2"),
        ("0.5", "1/2"),  # decimals are exact rationals
        (r"2\sqrt(3)", r"\sqrt(12)"),  # as normalize_math_answer leaves them
        ("3(x+1)", "3x+3"),
        ("(x+1)(x-1)", "x**2-1"),
        (r"\sqrt3", r"\sqrt{3}"),  # TeX's one-token argument
        (r"\sin(x)^2+\cos(x)^2", "1"),
        (r"e^{i\pi}", "-1"),
        (r"\ln(e^2)", "2"),
        (r"\infty", "oo"),
        (r"\dfrac{1}{\sqrt{2}}", r"\frac{\sqrt{2}}{2}"),
    ],
)
def test_equivalent_answers(pred, ref):
    assert equivalent(pred, ref) is True
    assert equivalent(ref, pred) is True


@pytest.mark.parametrize(
    "pred, ref",
    [
        ("x+1", "x+2"),
        (r"\sqrt{2}", "1.414"),  # close is not equal
        ("x^2", "x^3"),
        ("-oo", "oo"),
        ("(x+1)^2", "x^2+1"),
    ],
)
def test_different_answers(pred, ref):
    assert equivalent(pred, ref) is False


def test_undefined_values_are_not_compared():
    assert equivalent("1/0", "1/0") is None
    assert equivalent("oo-oo", "0") is None


# ---------------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    "text, reason",
    [
        ("__import__('os').system('x')", "disallowed character"),
        ("().__class__", "disallowed character"),  # attribute access
        ("x.real", "disallowed character"),
        ("lambda: 0", "disallowed name 'lambda'"),
        ("[1]", "disallowed character"),
        ("'x'", "disallowed character"),
        ("f(x, y)", "disallowed character"),
        ("x" * 1000, "too long"),
        ("-(" * 40 + "x" + ")" * 40, "nested too deeply"),
        ("9**9**9", "exponent too large"),
        ("x**100000", "exponent too large"),
        ("x^{1/100000}", "exponent too large"),
        ("2**(x-x+2**64)", "exponent too large"),  # SymPy would compute 2**(2**64)
        ("(2^{64})^{64}", "too large"),
        ("()", "disallowed construct: Tuple"),
        ("xy", "variables are single letters"),
        (r"\sinh x", "unknown command"),
        ("2e3", "right after an operand"),  # not guessed as 2000 or 2*e*3
        (r"\sqrt12", "needs its argument"),
        (r"\frac{1}", "frac needs two arguments"),
        ("x=1", "disallowed character"),
    ],
)
def test_rejected_before_sympy(text, reason, no_sympy):
    with pytest.raises(SafeMathError, match=reason):
        to_source(text)
    assert equivalent(text, "1") is None
    assert equivalent("1", text) is None


_MATHY_TEXT = st.text(alphabet="0123456789.+-*/^(){}\\ xyeipqrtsnofacdlgb_'[],", max_size=250)


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(st.text(max_size=250), _MATHY_TEXT))
def test_fuzz_reading_only_accepts_or_rejects(text):
    start = time.perf_counter()
    try:
        to_source(text)
    except SafeMathError:
        pass
    assert time.perf_counter() - start < 1.0


def test_non_strings_are_rejected(no_sympy):
    assert equivalent(None, "1") is None  # type: ignore[arg-type]
    assert equivalent(b"1", "1") is None  # type: ignore[arg-type]


def test_accepted_notation_as_python_source():
    assert to_source(r"2\sqrt{3}") == "2*sqrt(3)"
    assert to_source(r"\frac{\pi}{2}") == "frac(pi,2)"
    assert to_source("x^2+2x+1") == "x**2+2*x+1"
    assert to_source(r"\sin x") == "sin(x)"
    assert to_source(r"\ln 2") == "log(2)"
    assert to_source(r"e^{i\pi/4}") == "e**(i*pi/4)"


# ------------------------------------------------------------------ bounded time/memory


def test_timeout_really_stops_the_check():
    # true (a difference of squares), but SymPy's simplify does not prove it in 30 s
    heavy, other = "(w+x+y+z)^{30}(w-x+y-z)^{30}", "((w+y)^2-(x+z)^2)^{30}"
    to_source(heavy), to_source(other)  # valid input: it is the time limit that stops it
    start = time.perf_counter()
    verdict = compare(heavy, other, timeout_s=0.01)
    assert time.perf_counter() - start < 10.0  # includes starting a worker, if needed
    assert verdict == Verdict(None, "symbolic check timed out")
    # the killed worker is replaced on the next call
    assert equivalent("x+1", "1+x") is True


def test_worker_memory_is_capped():
    code = "from insight.problems.symbolic import _cap_memory; _cap_memory(); bytearray(3 << 30)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "MemoryError" in run.stderr


def test_concurrent_callers_share_the_worker():
    pairs = [("x+1", "1+x"), ("x+1", "x+2")] * 4
    with ThreadPoolExecutor(max_workers=4) as pool:
        verdicts = list(pool.map(lambda pair: equivalent(*pair), pairs))
    assert verdicts == [True, False] * 4
