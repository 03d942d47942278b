"""Specification of the verifiers: right, wrong, malformed and hostile completions."""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from insight.problems.verifiers import (
    MAX_COMPLETION_CHARS,
    VerifyResult,
    extract_final_answer,
    normalize_math_answer,
    parse_countdown_reference,
    verify,
    verify_batch,
)

HOSTILE = [
    "__import__('os').system('echo hi')",
    "().__class__.__bases__[0].__subclasses__()",
    "open('/etc/passwd').read()",
    "ev" + "al('1+1')",  # split so that no grep for it trips on this file
    "lambda: 0",
    "9**9**9**9",
    "2**100000",
    "10**10**10",
    "1" * 1_000_000,  # 1 MB of digits
    "x" * 1_000_000,  # 1 MB string
    "(" * 100_000 + "1" + ")" * 100_000,  # deeply nested parentheses
    "(" * 1000 + ")" * 1000,
    "-" * 100_000 + "1",
    "\\boxed{" * 50_000,
    "\\boxed{" + "{" * 50_000 + "1" + "}" * 50_000 + "}",
    "\\frac{" * 10_000,
    "٤٣٢",  # Arabic-Indic digits
    "４３２",  # fullwidth digits
    "",
    "   ",
    "\x00\x01\x02",
    "1/0",
    "((3*5)+7",
    "🙂",
    "432" + "\u200b",  # zero-width space
]


def ok(result: VerifyResult) -> None:
    assert result == VerifyResult(1.0, True, None)


def wrong(result: VerifyResult) -> None:
    assert result == VerifyResult(0.0, False, None)


def failed(result: VerifyResult, match: str = "") -> None:
    assert result.reward == 0.0 and result.success is False
    assert result.error is not None and match in result.error, result


# ------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize("completion", ["432", " 432", "432\n", "\t432  "])
def test_arithmetic_correct(completion):
    ok(verify("arithmetic", completion, "432"))


def test_arithmetic_negative_answers():
    ok(verify("arithmetic", "-17", "-17"))
    wrong(verify("arithmetic", "17", "-17"))
    ok(verify("arithmetic", "0", "0"))


@pytest.mark.parametrize("completion", ["431", "4320", "-432"])
def test_arithmetic_wrong_integer_is_checked_normally(completion):
    wrong(verify("arithmetic", completion, "432"))


@pytest.mark.parametrize(
    "completion",
    [
        "432abc",
        "abc432",
        "4 32",
        "432.0",
        "+432",  # no leading plus: the canonical form is exactly str(int)
        "0432",  # no leading zeros
        "-0",
        "--432",
        "400+32",  # an expression, not an integer
        "٤٣٢",  # unicode digits are not accepted (int() would accept them)
        "４３２",
        "432\u200b",
        "",
        "   ",
    ],
)
def test_arithmetic_strict_parse(completion):
    failed(verify("arithmetic", completion, "432"), "parse error")


def test_arithmetic_bad_reference_is_a_programming_error():
    with pytest.raises(ValueError, match="canonical integer"):
        verify("arithmetic", "432", "432.0")


# -------------------------------------------------------------------------- countdown


@pytest.mark.parametrize(
    "completion", ["3*5+7", "7+5*3", "(3*5)+7", " 5 * 3 + 7 ", "((7+(5*3)))"]
)
def test_countdown_correct(completion):
    ok(verify("countdown", completion, "3*5+7"))
    ok(verify("countdown", completion, "3,5,7:22"))


def test_countdown_exact_fractions():
    # 6/4*8 = 12 with an intermediate 3/2: exact arithmetic accepts it
    ok(verify("countdown", "6/4*8", "4,6,8:12"))
    # a float-y near miss is not accepted: 1/3*3 is exactly 1
    ok(verify("countdown", "1/3*3", "1,3,3:1"))


def test_countdown_wrong_value():
    wrong(verify("countdown", "3+5+7", "3*5+7"))
    wrong(verify("countdown", "3+5+7", "3,5,7:22"))


@pytest.mark.parametrize(
    "completion",
    [
        "3*5",  # 7 unused
        "3*5+7+7",  # 7 twice
        "3*5+7-0",  # 0 not given
        "35-13",  # digits concatenated into new numbers
        "22",
    ],
)
def test_countdown_each_number_exactly_once(completion):
    failed(verify("countdown", completion, "3,5,7:22"), "wrong numbers")


def test_countdown_repeated_numbers_are_a_multiset():
    ok(verify("countdown", "6+6+5", "6,6,5:17"))
    failed(verify("countdown", "6+5", "6,6,5:11"), "wrong numbers")


@pytest.mark.parametrize(
    "completion, error",
    [
        ("3**5+7", "parse error"),  # no power
        ("-3+5*7", "parse error"),  # no unary minus
        ("3.0*5+7", "parse error"),  # integers only
        ("3*5+7=22", "parse error"),
        ("3*5+x", "parse error"),
        ("3*5+7)", "parse error"),
        ("3/(5-5)+7", "division by zero"),
    ],
)
def test_countdown_malformed(completion, error):
    failed(verify("countdown", completion, "3,5,7:22"), error)


def test_countdown_reference_formats():
    assert parse_countdown_reference("3*5+7") == ((3, 5, 7), 22)
    assert parse_countdown_reference("3, 5,7 : 22") == ((3, 5, 7), 22)
    with pytest.raises(ValueError):
        parse_countdown_reference("three")


# ------------------------------------------------------------------------------- math


@pytest.mark.parametrize(
    "completion, answer",
    [
        ("The total is 12 apples. So the answer is 42.", "42"),
        ("... #### 42", "42"),
        ("We get \\boxed{42}.", "42"),
        ("first \\boxed{1} then \\boxed{42}", "42"),  # the last box counts
        ("x = 3, y = 42", "42"),  # last number
        ("so \\boxed{\\frac{1}{2}}", "0.5"),
        ("so \\boxed{\\dfrac12}", "1/2"),
        ("The answer is 1/2", "\\frac{1}{2}"),
        ("\\boxed{0.50}", "1/2"),
        ("The answer is 1,234,567.", "1234567"),
        ("\\boxed{-3}", "-3"),
        ("\\boxed{\\$12}", "12"),
        ("\\boxed{50\\%}", "50"),
        ("\\boxed{10 \\text{ cm}}", "10 cm"),  # string fallback after normalization
        ("\\boxed{x^2+1}", "x^{2}+1"),  # symbolic text compares as normalized string
        ("the answer is 2^{10}", "1024"),
        ("Natalia sold 48/2 = 24 clips. #### 72", "She sold 48+24 = 72 clips.\n#### 72"),
        ("Thus \\boxed{\\left(3\\right)}", "3"),
        ("The answer is 42 apples.", "42"),
        ("So \\boxed{x = 42}", "42"),
        ("The answer is \u22125", "-5"),  # unicode minus sign
    ],
)
def test_math_correct(completion, answer):
    ok(verify("math", completion, answer))


@pytest.mark.parametrize(
    "completion, answer",
    [
        ("The answer is 41.", "42"),
        ("\\boxed{42} wait no \\boxed{43}", "42"),
        ("\\boxed{\\frac{1}{3}}", "0.33"),  # exact comparison
        ("\\boxed{1,234}", "1,235"),
        ("\\boxed{x^2}", "x^3"),
        ("The answer is 41 or 42", "42"),  # two numbers: no guessing
    ],
)
def test_math_wrong(completion, answer):
    wrong(verify("math", completion, answer))


@pytest.mark.parametrize(
    "completion, answer",
    [
        ("so \\boxed{2\\sqrt{3}}", "\\sqrt{12}"),
        ("\\boxed{1+x}", "x+1"),
        ("\\boxed{(x+1)^2}", "x^2+2x+1"),
        ("\\boxed{\\frac{\\pi}{2}}", "\\pi/2"),
        ("\\boxed{\\sqrt{144}}", "12"),  # one number, 144, but the answer is 12
    ],
)
def test_math_symbolically_equal(completion, answer):
    ok(verify("math", completion, answer))


def test_math_symbolically_different():
    wrong(verify("math", "\\boxed{2\\sqrt{2}}", "\\sqrt{12}"))
    wrong(verify("math", "\\boxed{(x+1)^2}", "x^2+1"))


def test_math_symbolic_timeout_is_reported(monkeypatch):
    monkeypatch.setattr("insight.problems.verifiers.SYMBOLIC_TIMEOUT_S", 0.01)
    result = verify("math", "\\boxed{(w+x+y+z)^{30}(w-x+y-z)^{30}}", "((w+y)^2-(x+z)^2)^{30}")
    failed(result, "symbolic check timed out")


def test_math_no_answer():
    failed(verify("math", "I do not know.", "42"), "no final answer")
    failed(verify("math", "", "42"), "no final answer")


def test_extract_and_normalize():
    assert extract_final_answer("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert extract_final_answer("The answer is: 7.\nMore text 9") == "7"
    assert extract_final_answer("no numbers") is None
    assert normalize_math_answer("$1,000$") == "1000"
    assert normalize_math_answer("\\frac{3}{4}") == "3/4"
    assert normalize_math_answer("x^{2}") == normalize_math_answer("x^2") == "x**2"


# ---------------------------------------------------------------------------- hostile


@pytest.mark.parametrize(
    "verifier, answer",
    [("arithmetic", "432"), ("countdown", "3,5,7:22"), ("math", "42"), ("math", "\\sqrt{12}")],
)
def test_hostile_completions_never_raise_and_never_succeed(verifier, answer):
    start = time.perf_counter()
    for completion in HOSTILE:
        result = verify(verifier, completion, answer)
        assert isinstance(result, VerifyResult)
        assert result.success is False and result.reward == 0.0, (verifier, completion[:50], result)
    assert time.perf_counter() - start < 5.0  # bounded work, all of them together


@pytest.mark.parametrize("completion", ["9**9**9**9", "2**100000", "10**10**10"])
def test_math_huge_powers_are_not_computed(completion):
    start = time.perf_counter()
    result = verify("math", f"\\boxed{{{completion}}}", "42")
    assert result.success is False
    assert time.perf_counter() - start < 0.5


def test_hostile_code_is_not_run(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.chdir(tmp_path)
    payload = f"__import__('pathlib').Path('{marker}').touch()"
    for verifier, answer in [("arithmetic", "1"), ("countdown", "1,2:3"), ("math", "1")]:
        assert verify(verifier, payload, answer).success is False
        assert verify(verifier, f"\\boxed{{{payload}}}", answer).success is False
    assert not marker.exists()


@pytest.mark.parametrize("verifier", ["arithmetic", "countdown", "math"])
def test_oversized_completion(verifier):
    answer = {"arithmetic": "1", "countdown": "1,2:3", "math": "1"}[verifier]
    failed(verify(verifier, "1" * (MAX_COMPLETION_CHARS + 1), answer), "too long")


@pytest.mark.parametrize("bad", [None, 432, b"432"])
def test_non_string_completion(bad):
    failed(verify("arithmetic", bad, "432"), "parse error")


# ---------------------------------------------------------------------------- registry


def test_unknown_verifier_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown verifier"):
        verify("nope", "1", "1")


def test_verify_batch():
    results = verify_batch(["arithmetic", "countdown", "math"], ["432", "3*5+7", "hmm"], ["432", "3,5,7:22", "1"])
    assert [r.success for r in results] == [True, True, False]
    assert verify_batch("arithmetic", ["1", "2"], ["1", "1"]) == [
        VerifyResult(1.0, True, None),
        VerifyResult(0.0, False, None),
    ]
    with pytest.raises(ValueError):
        verify_batch("arithmetic", ["1"], ["1", "2"])
    with pytest.raises(ValueError):
        verify_batch(["arithmetic"], ["1", "2"], ["1", "2"])


# ----------------------------------------------------------------------------- fuzzing

_EXPRESSION_TEXT = st.text(alphabet="0123456789+-*/()., ^{}\\boxedfrac#answeris$x_[]'\"", max_size=120)


@settings(max_examples=300, deadline=None)
@given(completion=st.one_of(st.text(max_size=300), _EXPRESSION_TEXT))
def test_fuzz_verify_never_raises(completion):
    for verifier, answer in [("arithmetic", "432"), ("countdown", "3,5,7:22"), ("math", "\\frac{1}{2}")]:
        result = verify(verifier, completion, answer)
        assert 0.0 <= result.reward <= 1.0
        assert result.success == (result.reward == 1.0)
        if result.error is not None:
            assert not result.success
