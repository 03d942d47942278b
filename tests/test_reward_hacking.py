"""Specification: the verifiers reward an answer only if it is EQUIVALENT to the reference.

RL optimises exactly what the verifier rewards, so every answer below that is not equal to
the reference must score 0, however much of the reference it contains (``\\sqrt{42}``,
``42x``, ``142``, ``41 or 42``), while the genuinely equivalent spellings further down keep
scoring 1. The lists are shared with ``scripts/compare_math_graders.py`` (which measured
HF ``math-verify`` against our grader on them).
"""

import time

import pytest

from insight.problems.verifiers import VerifyResult, verify

# (completion, reference): every one of these must score 0
HOSTILE_MATH = [
    # functions wrapped around the right number
    (r"\boxed{\sqrt{42}}", "42"),
    (r"\boxed{\sqrt 42}", "42"),
    (r"\boxed{\log(42)}", "42"),
    (r"\boxed{\ln 42}", "42"),
    (r"\boxed{\exp(42)}", "42"),
    (r"\boxed{e^{42}}", "42"),
    (r"\boxed{\sin(42)}", "42"),
    (r"\boxed{\cos 42}", "42"),
    (r"\boxed{\tan{42}}", "42"),
    (r"\boxed{|42-x|}", "42"),
    (r"\boxed{\lceil 41.5 \rceil}", "42"),
    (r"\boxed{\binom{42}{2}}", "42"),
    (r"\boxed{\overline{42}}", "42"),
    # variables, units written as variables (math mode)
    (r"\boxed{42x}", "42"),
    (r"\boxed{42+y}", "42"),
    (r"\boxed{x+42}", "42"),
    (r"\boxed{\frac{42}{x}}", "42"),
    (r"\boxed{42 m}", "42"),
    (r"\boxed{42cm}", "42"),
    (r"\boxed{42\textbf{x}}", "42"),
    (r"\boxed{42_{8}}", "42"),
    # imaginary units, factorials, powers, infinities
    (r"\boxed{42i}", "42"),
    (r"\boxed{42 i}", "42"),
    (r"\boxed{42j}", "42"),
    (r"\boxed{42\mathrm{i}}", "42"),
    (r"\boxed{42!}", "42"),
    (r"\boxed{42!!}", "42"),
    (r"\boxed{42^2}", "42"),
    (r"\boxed{42^{0}}", "42"),
    (r"\boxed{42\infty}", "42"),
    (r"\boxed{\infty}", "42"),
    # percent and degree signs that are not a trailing decoration
    (r"\boxed{4200\%}", "42"),
    (r"\boxed{\%42}", "42"),
    (r"\boxed{4\%2}", "42"),
    (r"\boxed{4^\circ 2}", "42"),
    (r"\boxed{42 \bmod 43}", "42"),
    # several answers, sets, intervals, relations
    (r"\boxed{42, 43}", "42"),
    (r"\boxed{42 \text{ or } 43}", "42"),
    (r"\boxed{\text{42 or 43}}", "42"),
    (r"\boxed{43} or \boxed{42}", "42"),
    (r"\boxed{43}, \boxed{42}", "42"),
    (r"$\boxed{43}$ \text{ or } $\boxed{42}$", "42"),
    (r"\boxed{42} or 43", "42"),
    (r"\boxed{[42, 43]}", "42"),
    (r"\boxed{(41, 43)}", "42"),
    (r"\boxed{\{42\}}", "42"),
    (r"\boxed{\{41, 42\}}", "42"),
    (r"\boxed{\pm 42}", "42"),
    (r"\boxed{42 \pm 1}", "42"),
    (r"\boxed{\mp42}", "42"),
    (r"\boxed{42 = 43}", "42"),
    (r"\boxed{x \geq 42}", "42"),
    (r"\boxed{42 < x}", "42"),
    (r"\boxed{42 \neq x}", "42"),
    (r"\boxed{x = 42 + y}", "42"),
    (r"\boxed{42 \lor 43}", "42"),
    (r"\boxed{42, \ldots}", "42"),
    (r"\boxed{42\\43}", "42"),
    (r"\boxed{42 \quad 43}", "42"),
    # \text{} tricks
    (r"\boxed{\text{not } 42}", "42"),
    (r"\boxed{42 \text{ squared}}", "42"),
    (r"\boxed{42\text{ million}}", "42"),
    (r"\boxed{\text{approximately } 42}", "42"),
    (r"\boxed{42\text{ or more}}", "42"),
    (r"\boxed{42\text{!}}", "42"),
    # digits that are not ASCII digits
    ("\\boxed{\u0664\u0662}", "42"),  # Arabic-Indic
    ("\\boxed{\uff14\uff12}", "42"),  # fullwidth
    ("\\boxed{42\u00b2}", "42"),  # superscript two
    ("\\boxed{4\u200b2}", "42"),  # zero-width space inside
    # scientific notation (2e3 means 2*e*3 in math notation: ambiguous, so no)
    (r"\boxed{42e1}", "42"),
    (r"\boxed{0.42e2}", "42"),
    (r"\boxed{4.2E1}", "42"),
    # huge exponents (must also be cheap: see the timing test)
    (r"\boxed{42^{10^{100}}}", "42"),
    (r"\boxed{42^{99999999}}", "42"),
    (r"\boxed{10^{10^{10}}}", "42"),
    # nested braces that change the number
    (r"\boxed{4{2}}", "42"),
    (r"\boxed{{4}{2}}", "42"),
    # the reference as a substring
    (r"\boxed{142}", "42"),
    (r"\boxed{420}", "42"),
    (r"\boxed{4.2}", "42"),
    (r"\boxed{-42}", "42"),
    (r"\boxed{0.42}", "42"),
    (r"\boxed{42.001}", "42"),
    (r"\boxed{4,2}", "42"),
    (r"\boxed{42}", "-42"),
    # empty, unbalanced, truncated boxes
    (r"\boxed{}", "42"),
    (r"\boxed{ }", "42"),
    (r"\boxed{42 + x", "42"),
    (r"so \boxed{\sqrt{42", "42"),
    # prose that states several numbers or wraps the number
    ("The answer is 42 or 43.", "42"),
    ("The answer is 43 or 42.", "42"),
    ("The answer is 42. Or maybe 43.", "42"),
    ("It is either 41 or 42.", "42"),
    ("Possible values: 40, 41, 42", "42"),
    ("It lies between 41 and 42", "42"),
    ("It ranges from 40 to 42.", "42"),
    ("So the result is the square root of 42.", "42"),
    ("We get $\\sqrt{42}$.", "42"),
    ("Therefore $42x$.", "42"),
    ("Thus 42!", "42"),
    ("So we get 42 squared.", "42"),
    ("The answer is 42 million.", "42"),
    ("The answer is not 42", "42"),
    ("#### 42 or 43", "42"),
    # other references
    (r"\boxed{\frac{1}{2}x}", r"\frac{1}{2}"),
    (r"\boxed{2\sqrt{3}i}", r"2\sqrt{3}"),
    (r"\boxed{42}", r"\sqrt{42}"),
    (r"\boxed{12}", r"\sqrt{12}"),
    (r"\boxed{x+1 \text{ or } x}", "x+1"),
    (r"\boxed{10 \text{ m}}", "10 cm"),
]

# (completion, reference): genuinely equivalent answers, every one must score 1
LEGITIMATE_MATH = [
    (r"\boxed{42}", "42"),
    (r"We get \boxed{42} in total.", "42"),
    (r"$\boxed{42}$", "42"),
    (r"\fbox{42}", "42"),
    (r"\boxed{ 42 }", "42"),
    (r"\boxed{42.}", "42"),
    (r"\boxed{42.0}", "42"),
    (r"\boxed{+42}", "42"),
    (r"\boxed{{42}}", "42"),
    (r"\boxed{(42)}", "42"),
    (r"\boxed{\left(42\right)}", "42"),
    (r"\boxed{\frac{84}{2}}", "42"),
    (r"\boxed{\dfrac{84}{2}}", "42"),
    (r"\boxed{6\cdot 7}", "42"),
    (r"\boxed{6 \times 7}", "42"),
    (r"\boxed{4.2 \times 10^{1}}", "42"),
    (r"\boxed{\sqrt{1764}}", "42"),
    (r"\boxed{x = 42}", "42"),
    (r"\boxed{\$42}", "42"),
    (r"\boxed{42\%}", "42"),
    (r"\boxed{42^\circ}", "42"),
    (r"\boxed{42\text{ apples}}", "42"),
    (r"\boxed{42 \text{ cm}}", "42"),
    (r"\boxed{42\,\mathrm{cm}^2}", "42"),
    (r"\boxed{42\text{ m}}", "42"),
    (r"\boxed{\text{42}}", "42"),
    ("The answer is 42.", "42"),
    ("The answer is 42 apples.", "42"),
    ("The answer is 42 square units.", "42"),
    ("The answer is: $42$.", "42"),
    ("The answer is 42. I checked it twice.", "42"),
    ("So she has 42 apples.", "42"),
    ("x = 3, y = 42", "42"),
    ("She earns 2 * 21 = 42 dollars.\n#### 42", "42"),
    ("\\boxed{\u221242}", "-42"),  # unicode minus sign
    (r"\boxed{-42}", "-42"),
    (r"\boxed{1000}", "1,000"),
    (r"\boxed{1{,}000}", "1000"),
    (r"\boxed{0.5}", r"\frac{1}{2}"),
    (r"\boxed{\sqrt{12}}", r"2\sqrt{3}"),
    (r"\boxed{1+x}", "x+1"),
    (r"\boxed{10 \text{ cm}}", "10 cm"),
    (r"first \boxed{41}, then corrected: \boxed{42}", "42"),
]


@pytest.mark.parametrize("completion, answer", HOSTILE_MATH)
def test_math_rewards_no_answer_that_only_contains_the_reference(completion, answer):
    result = verify("math", completion, answer)
    assert result.reward == 0.0 and result.success is False, result


@pytest.mark.parametrize("completion, answer", LEGITIMATE_MATH)
def test_math_rewards_equivalent_answers(completion, answer):
    assert verify("math", completion, answer) == VerifyResult(1.0, True, None)


def test_the_lists_are_big_enough_to_mean_something():
    assert len(HOSTILE_MATH) >= 40 and len(LEGITIMATE_MATH) >= 20


@pytest.mark.parametrize(
    "completion",
    [
        "432.0", "432.", "+432", "0432", "432e0", "4.32e2", "432j", "432!", "(432)", "432 ",
        "432\n433", "432 or 433", "433-1", "431+1", "\\boxed{432}", "432\u200b", "\u0664\u0663\u0662",
        "True", "0x1B0", "4_32",
    ],
)
def test_arithmetic_wants_exactly_the_canonical_integer(completion):
    if completion == "432 ":
        assert verify("arithmetic", completion, "432").success  # outer whitespace is stripped
        return
    assert verify("arithmetic", completion, "432").success is False


@pytest.mark.parametrize(
    "completion",
    [
        "3*5+7+0",  # an extra number
        "3*5+7*1",
        "35-13",  # digits concatenated
        "-3*5+37",
        "(3*5+7)**1",
        "3*5+7.0",
        "22",  # the target alone
        "3*5+7 or 22",
        "3*5+7, 3+5+7",
        "3*5+7 == 22",
        "3e0*5+7",
        "3*5+7j",
        "abs(3*5+7)",
        "3*5+7\n3*5+7",
        "\\boxed{3*5+7}",
        "3*5+7=22",
        "3\u00d75+7",  # multiplication sign
    ],
)
def test_countdown_wants_one_expression_over_exactly_the_given_numbers(completion):
    assert verify("countdown", completion, "3,5,7:22").success is False


def test_countdown_still_accepts_the_solutions():
    for completion in ["3*5+7", "7+5*3", "(3*5)+7", " 5*3 + 7 "]:
        assert verify("countdown", completion, "3,5,7:22").success, completion


@pytest.mark.parametrize(
    "completion",
    [
        "x" * 99_990 + " 42",  # a long run of letters before the last number
        "}" + " " * 99_990 + "\\boxed{42}",  # a long run of spaces before the box
        "\\boxed{1}" + " " * 99_980 + "\\boxed{42}",
        "1 " * 49_990 + "\\boxed{42}",
        "The answer is " + "4" * 99_900,
        "The answer is 42" + " apples" * 14_000,
        ("answer is " * 9_000)[:99_000] + "42",
        "\\boxed{" + "{" * 49_000 + "}" * 49_000 + "}",
    ],
)
def test_long_hostile_text_is_graded_quickly(completion):
    start = time.perf_counter()
    verify("math", completion, "42")
    assert time.perf_counter() - start < 1.0


def test_a_completion_too_long_to_verify_is_stored_as_a_bounded_prefix():
    from types import SimpleNamespace

    from insight import stages
    from insight.policy import generation
    from insight.problems.datasets import Problem
    from insight.problems.verifiers import MAX_COMPLETION_CHARS

    hostile = "\\boxed{42}" + "9" * 1_000_000  # 1 MB, injected in place of a sampled one
    group = [generation.Rollout("\\boxed{42}", [5, 2], False), generation.Rollout(hostile, [7], True)]

    class HostileEngine:  # a RolloutEngine whose second sample is the injected one
        def generate(self, prompts, k, **sampling):
            return [group]

    rollout_cfg = SimpleNamespace(k=2, temperature=1.0, top_p=1.0, max_new_tokens=8,
                                  success_threshold=1.0)
    run = SimpleNamespace(run_id="r", config=SimpleNamespace(seed=0, rollout=rollout_cfg))
    problems = [Problem(prompt_id="p", prompt="Q?", answer="42", source="test",
                        difficulty=-1, verifier="math")]

    rows = stages.group_rows(run, 1, HostileEngine(), problems, 0)
    successes = stages.group_successes(rows, ["p"], 2)

    assert rows["completion"].to_pylist() == ["\\boxed{42}", hostile[:MAX_COMPLETION_CHARS]]
    assert rows["completion_chars"].to_pylist() == [len("\\boxed{42}"), len(hostile)]
    assert rows["success"].to_pylist() == [True, False]
    assert "too long" in rows["verifier_error"][1].as_py()
    assert successes.tolist() == [1.0]
