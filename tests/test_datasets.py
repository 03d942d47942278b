"""Specification of task generation, loading, validation and splitting."""

import csv
import importlib.util
import json
from collections import Counter
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from insight.problems.datasets import (
    ALPHABET,
    Problem,
    countdown_solutions,
    generate_arithmetic,
    generate_countdown,
    problems_from_arrow,
    problems_to_arrow,
    train_eval_split,
    validate_problems,
)
from insight.problems.local_data import load_problems
from insight.problems.verifiers import parse_countdown_reference, verify

# ------------------------------------------------------------------------- arithmetic


def test_arithmetic_is_deterministic_in_seed():
    assert generate_arithmetic(200, seed=7) == generate_arithmetic(200, seed=7)
    assert generate_arithmetic(200, seed=7) != generate_arithmetic(200, seed=8)


def test_arithmetic_format_and_answers_verify():
    problems = generate_arithmetic(600, seed=0, ops=("+", "-", "*"))
    assert len(problems) == 600
    for p in problems:
        assert p.verifier == "arithmetic" and p.source == "arithmetic"
        assert p.prompt.endswith("=") and set(p.prompt) <= set(ALPHABET)
        a, op, b = _split_arith(p.prompt[:-1])
        assert p.answer == str(a + b if op == "+" else a - b if op == "-" else a * b)
        assert p.difficulty == max(len(str(a)), len(str(b)))
        assert verify("arithmetic", p.answer, p.answer).success
    assert any(p.answer.startswith("-") for p in problems)  # negatives occur
    assert {op for p in problems for op in "+-*" if op in p.prompt[1:]} == {"+", "-", "*"}
    validate_problems(problems)


def _split_arith(expr):
    for i, c in enumerate(expr):
        if i > 0 and c in "+-*":
            return int(expr[:i]), c, int(expr[i + 1 :])
    raise AssertionError(expr)


def test_arithmetic_unique_ids_and_prompts():
    problems = generate_arithmetic(1000, seed=1, min_digits=2, max_digits=4)
    assert len({p.prompt_id for p in problems}) == 1000
    assert len({p.prompt for p in problems}) == 1000


def test_arithmetic_difficulty_is_balanced():
    problems = generate_arithmetic(999, seed=2, min_digits=2, max_digits=4)
    counts = Counter(p.difficulty for p in problems)
    assert counts == {2: 333, 3: 333, 4: 333}


def test_arithmetic_small_level_runs_out_then_others_fill():
    # 1-digit "+" has only 100 distinct prompts; the rest comes from level 2
    problems = generate_arithmetic(300, seed=3, min_digits=1, max_digits=2, ops=("+",))
    counts = Counter(p.difficulty for p in problems)
    assert counts[1] <= 100 and counts[1] + counts[2] == 300
    with pytest.raises(ValueError, match="distinct"):
        generate_arithmetic(101, seed=3, min_digits=1, max_digits=1, ops=("+",))


@pytest.mark.parametrize(
    "kwargs",
    [dict(min_digits=0), dict(min_digits=3, max_digits=2), dict(ops=("/",)), dict(ops=())],
)
def test_arithmetic_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        generate_arithmetic(10, seed=0, **kwargs)


# -------------------------------------------------------------------------- countdown


def test_countdown_is_deterministic_in_seed():
    assert generate_countdown(50, seed=4) == generate_countdown(50, seed=4)
    assert generate_countdown(50, seed=4) != generate_countdown(50, seed=5)


@pytest.mark.parametrize("n_numbers", [2, 3, 4])
def test_every_countdown_problem_is_solvable_and_its_answer_verifies(n_numbers):
    problems = generate_countdown(60, seed=n_numbers, n_numbers=n_numbers)
    assert len({p.prompt_id for p in problems}) == len({p.prompt for p in problems}) == 60
    for p in problems:
        assert p.verifier == "countdown" and p.difficulty == n_numbers
        assert set(p.prompt) <= set(ALPHABET) and set(p.answer) <= set(ALPHABET)
        spec = p.prompt[:-1]  # "3,5,7:22"
        numbers, target = parse_countdown_reference(spec)
        assert len(numbers) == n_numbers and all(1 <= x <= 9 for x in numbers)
        assert target > 0 and target.denominator == 1
        # the answer solves the prompt, read both ways
        assert verify("countdown", p.answer, spec).success
        assert verify("countdown", p.answer, p.answer).success
        assert parse_countdown_reference(p.answer) == (tuple(parse_countdown_reference(p.answer)[0]), target)
        assert sorted(parse_countdown_reference(p.answer)[0]) == sorted(numbers)
    validate_problems(problems)


def test_countdown_max_target():
    problems = generate_countdown(40, seed=0, n_numbers=4, max_target=50)
    assert all(0 < parse_countdown_reference(p.prompt[:-1])[1] <= 50 for p in problems)
    assert all(verify("countdown", p.answer, p.prompt[:-1]).success for p in problems)


def test_countdown_solutions():
    assert countdown_solutions([3, 5, 7], 22) is not None
    assert countdown_solutions([1, 1], 5) is None
    sol = countdown_solutions([4, 6, 8], 12)  # needs a fraction: 6/4*8
    assert sol is not None and verify("countdown", sol, "4,6,8:12").success


def test_countdown_exhaustion_is_an_error():
    with pytest.raises(ValueError, match="distinct"):
        generate_countdown(50, seed=0, n_numbers=2, max_number=2)


# -------------------------------------------------------------------------- splitting


def test_split_is_deterministic_disjoint_and_complete():
    problems = generate_arithmetic(500, seed=0)
    train, held = train_eval_split(problems, 0.2, seed=1)
    assert (train, held) == train_eval_split(problems, 0.2, seed=1)
    assert len(held) == pytest.approx(100, abs=3)
    assert sorted(p.prompt_id for p in train + held) == sorted(p.prompt_id for p in problems)
    assert not {p.prompt for p in train} & {p.prompt for p in held}
    held_levels = Counter(p.difficulty for p in held)  # stratified by difficulty
    assert set(held_levels) == {1, 2, 3}
    assert all(abs(c - 100 / 3) <= 2 for c in held_levels.values())
    assert train_eval_split(problems, 0.2, seed=2) != (train, held)


def test_split_keeps_duplicate_prompts_together():
    base = generate_arithmetic(100, seed=0)
    dupes = [replace(p, prompt_id=p.prompt_id + "-dup") for p in base[:30]]
    train, held = train_eval_split(base + dupes, 0.5, seed=0)
    assert not {p.prompt for p in train} & {p.prompt for p in held}


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="eval_fraction"):
        train_eval_split(generate_arithmetic(10, seed=0), fraction, seed=0)


def test_split_edges():
    problems = generate_arithmetic(10, seed=0)
    assert train_eval_split(problems, 0.0, seed=0) == (problems, [])
    assert train_eval_split(problems, 1.0, seed=0) == ([], problems)


# ------------------------------------------------------------------------- validation


def _good():
    return [
        Problem("a", "1+1=", "2", "x", 1, "arithmetic"),
        Problem("b", "3,5,7:22=", "3*5+7", "x", 3, "countdown"),
        Problem("c", "What is 6*7?", "42", "x", -1, "math"),
    ]


def test_validate_accepts_good_rows():
    validate_problems(_good())


@pytest.mark.parametrize(
    "row, field",
    [
        (Problem("a", "2+2=", "4", "x", 1, "arithmetic"), "prompt_id"),  # duplicate id "a"
        (Problem("d", "", "4", "x", 1, "arithmetic"), "prompt"),
        (Problem("d", "   ", "4", "x", 1, "arithmetic"), "prompt"),
        (Problem("d", "2+2=", "", "x", 1, "arithmetic"), "answer"),
        (Problem("", "2+2=", "4", "x", 1, "arithmetic"), "prompt_id"),
        (Problem("d", "2+2=", "4", "x", 1, "python"), "verifier"),
        (Problem("d", "2+2=", "4.0", "x", 1, "arithmetic"), "answer"),
        (Problem("d", "1,2:3=", "1+", "x", 2, "countdown"), "answer"),
        (Problem("d", "2+2=", "4", "x", "hard", "arithmetic"), "difficulty"),
        (Problem("d", None, "4", "x", 1, "arithmetic"), "prompt"),
    ],
)
def test_validate_names_row_id_and_field(row, field):
    with pytest.raises(ValueError) as info:
        validate_problems(_good() + [row])
    message = str(info.value)
    assert "row 3" in message and f"'{field}'" in message and repr(row.prompt_id) in message


def test_validate_rejects_non_problem():
    with pytest.raises(ValueError, match="row 0"):
        validate_problems([{"prompt_id": "a"}])


# ---------------------------------------------------------------------------- loading

ROWS = [
    {"prompt_id": "q1", "prompt": "What is 6*7?", "answer": "42", "difficulty": 2},
    {"prompt_id": "q2", "prompt": "Half of 1?", "answer": "\\frac{1}{2}", "difficulty": 1},
    {"prompt_id": "q3", "prompt": "Big?", "answer": "1000"},
]


def _write(path, rows):
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif suffix == ".csv":
        keys = sorted({k for r in rows for k in r})
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_load_round_trip(tmp_path, suffix):
    path = _write(tmp_path / f"data{suffix}", ROWS)
    problems = load_problems(path)
    assert [p.prompt_id for p in problems] == ["q1", "q2", "q3"]
    assert [p.answer for p in problems] == ["42", "\\frac{1}{2}", "1000"]
    assert [p.difficulty for p in problems] == [2, 1, -1]
    assert all(p.source == str(path) and p.verifier == "math" for p in problems)
    assert verify("math", "so \\boxed{0.5}", problems[1].answer).success


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_generated_problems_round_trip_through_files(tmp_path, suffix):
    problems = generate_arithmetic(30, seed=0) + generate_countdown(10, seed=0)
    rows = [
        {"prompt_id": p.prompt_id, "prompt": p.prompt, "answer": p.answer, "difficulty": p.difficulty}
        for p in problems
    ]
    path = _write(tmp_path / f"gen{suffix}", rows[:30])
    loaded = load_problems(path, verifier="arithmetic", source="arithmetic")
    assert loaded == problems[:30]
    path = _write(tmp_path / f"cd{suffix}", rows[30:])
    assert load_problems(path, verifier="countdown", source="countdown") == problems[30:]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_load_numeric_answers_become_strings(tmp_path, suffix):
    rows = [{"prompt_id": "a", "prompt": "p", "answer": 1000}, {"prompt_id": "b", "prompt": "q", "answer": -7}]
    problems = load_problems(_write(tmp_path / f"num{suffix}", rows), verifier="arithmetic")
    assert [p.answer for p in problems] == ["1000", "-7"]


def test_load_custom_fields_and_generated_ids(tmp_path):
    rows = [{"question": "q?", "solution": "blah #### 72"}, {"question": "r?", "solution": "#### 5"}]
    path = _write(tmp_path / "gsm.jsonl", rows)
    problems = load_problems(path, id_field=None, prompt_field="question", answer_field="solution")
    # ids come from the content: the same rows elsewhere (another file, reordered) keep them
    again = load_problems(_write(tmp_path / "other.jsonl", rows[::-1]), id_field=None,
                          prompt_field="question", answer_field="solution")
    assert {p.prompt_id for p in problems} == {p.prompt_id for p in again}
    assert len({p.prompt_id for p in problems}) == 2
    assert all(p.prompt_id.startswith("q-") for p in problems)
    assert verify("math", "The answer is 72.", problems[0].answer).success


def test_load_json_object_with_one_list(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": 1, "data": ROWS}), encoding="utf-8")
    assert len(load_problems(path)) == 3


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_load_missing_field_names_row_and_field(tmp_path, suffix):
    rows = [dict(r) for r in ROWS]
    del rows[1]["answer"]
    if suffix == ".csv":
        rows[1]["answer"] = ""  # csv has no "missing": an empty cell
    path = _write(tmp_path / f"bad{suffix}", rows)
    with pytest.raises(ValueError, match=r"row 1.*'answer'"):
        load_problems(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_load_empty_prompt_names_row_and_field(tmp_path, suffix):
    rows = [dict(r) for r in ROWS]
    rows[2]["prompt"] = "  "
    path = _write(tmp_path / f"bad{suffix}", rows)
    with pytest.raises(ValueError, match=r"row 2.*'q3'.*'prompt' is empty"):
        load_problems(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_load_duplicate_ids_name_both_rows(tmp_path, suffix):
    rows = [dict(r) for r in ROWS]
    rows[2]["prompt_id"] = "q1"
    path = _write(tmp_path / f"dup{suffix}", rows)
    with pytest.raises(ValueError, match=r"row 2 \(prompt_id='q1'\).*'prompt_id' duplicates row 0"):
        load_problems(path)


def test_load_missing_id_field(tmp_path):
    path = _write(tmp_path / "noid.jsonl", [{"prompt": "p", "answer": "1"}])
    with pytest.raises(ValueError, match=r"row 0.*'prompt_id'"):
        load_problems(path)


def test_load_bad_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_problems(tmp_path / "nope.jsonl")
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"prompt_id": "a", "prompt": "p", "answer": "1"}\n{not json\n')
    with pytest.raises(ValueError, match="line 2"):
        load_problems(bad)
    other = tmp_path / "data.txt"
    other.write_text("x")
    with pytest.raises(ValueError, match="unsupported format"):
        load_problems(other)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no rows"):
        load_problems(empty)
    with pytest.raises(ValueError, match="unknown verifier"):
        load_problems(_write(tmp_path / "ok.jsonl", ROWS), verifier="python")
    with pytest.raises(ValueError, match=r"row 1.*'q2'.*'answer' invalid"):
        load_problems(_write(tmp_path / "arith.jsonl", ROWS), verifier="arithmetic")


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="datasets not installed")
def test_save_to_disk_round_trip(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS[:2]).save_to_disk(str(tmp_path / "ds"))
    assert [p.prompt_id for p in load_problems(tmp_path / "ds")] == ["q1", "q2"]


# ------------------------------------------------------------------------------ arrow


def test_arrow_round_trip():
    problems = generate_arithmetic(20, seed=0) + generate_countdown(5, seed=0) + _good()[2:]
    table = problems_to_arrow(problems)
    assert table.column_names == ["prompt_id", "prompt", "answer", "source", "difficulty", "verifier"]
    assert table.schema.field("difficulty").type == pa.int64()
    assert problems_from_arrow(table) == problems


def test_arrow_missing_column_and_bad_rows():
    table = problems_to_arrow(_good())
    with pytest.raises(ValueError, match="verifier"):
        problems_from_arrow(table.drop_columns(["verifier"]))
    assert [p.difficulty for p in problems_from_arrow(table.drop_columns(["difficulty"]))] == [-1] * 3
    dup = pa.concat_tables([table, table])
    with pytest.raises(ValueError, match="duplicates row 0"):
        problems_from_arrow(dup)
