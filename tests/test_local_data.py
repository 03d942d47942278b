"""Local real-world datasets: GSM8K, MATH and DAPO-Math rows load as they are published."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from insight.config import config_from_dict
from insight.problems.local_data import content_id, extract_answer, load_problems
from insight.problems.verifiers import verify


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


GSM8K = [
    {"question": "Natalia sold clips to 48 friends in April, and half as many in May. "
                 "How many clips did she sell altogether?",
     "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\n48+24 = <<48+24=72>>72\n#### 72"},
    {"question": "A shop sells 1,200 pens a day. How many in 2 days?",
     "answer": "1,200 * 2 = 2,400\n#### 2,400"},
]


def test_gsm8k_rows_keep_only_the_final_answer_and_get_content_ids(tmp_path):
    path = _jsonl(tmp_path / "train.jsonl", GSM8K + [GSM8K[0]])  # an exact repeat
    problems = load_problems(path, id_field=None, prompt_field="question",
                             answer_format="gsm8k")
    assert [p.answer for p in problems] == ["72", "2400"]  # the repeat is dropped
    assert problems[0].prompt_id == content_id(GSM8K[0]["question"], "72")
    assert verify("math", "So she sold 72 clips.", problems[0].answer).success


def test_gsm8k_row_without_the_marker_is_named(tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", [GSM8K[0], {"question": "q", "answer": "no marker"}])
    with pytest.raises(ValueError, match=r"row 1: field 'answer': no '####'"):
        load_problems(path, id_field=None, prompt_field="question", answer_format="gsm8k")


def test_math_solutions_give_the_last_boxed_answer_and_the_level(tmp_path):
    rows = [{"problem": "Simplify $\\frac{2}{4}$.", "level": "Level 2", "type": "Algebra",
             "solution": "First \\boxed{2/4} is not simplest; it is $\\boxed{\\frac{1}{2}}$."},
            {"problem": "What is $6 \\cdot 7$?", "level": "Level 1",
             "solution": "It is $\\boxed{42}$."}]
    path = _jsonl(tmp_path / "math.jsonl", rows)
    problems = load_problems(path, id_field=None, prompt_field="problem",
                             answer_field="solution", answer_format="boxed",
                             difficulty_field="level")
    assert [p.answer for p in problems] == ["\\frac{1}{2}", "42"]
    assert [p.difficulty for p in problems] == [2, 1]
    assert verify("math", "The answer is \\boxed{0.5}", problems[0].answer).success


def test_boxed_extraction_balances_braces_and_refuses_what_it_cannot_read():
    assert extract_answer("x \\boxed{\\sqrt{\\frac{a}{b}}} y", "boxed") == "\\sqrt{\\frac{a}{b}}"
    with pytest.raises(ValueError, match="unclosed"):
        extract_answer("\\boxed{1", "boxed")
    with pytest.raises(ValueError, match="no \\\\boxed"):
        extract_answer("42", "boxed")
    assert extract_answer(" 42 ", "plain") == " 42 "


def test_dapo_math_parquet_with_chat_prompts_and_nested_answers(tmp_path):
    rows = [{"data_source": "math_dapo",
             "prompt": [{"content": "Solve: what is 3+4? Answer: $Answer", "role": "user"}],
             "ability": "MATH",
             "reward_model": {"ground_truth": "7", "style": "rule-lighteval/MATH_v2"},
             "extra_info": {"index": "a1b2"}},
            {"data_source": "math_dapo",
             "prompt": [{"content": "Solve: what is 5*5?", "role": "user"}],
             "ability": "MATH",
             "reward_model": {"ground_truth": "25", "style": "rule-lighteval/MATH_v2"},
             "extra_info": {"index": "c3d4"}}]
    path = tmp_path / "dapo.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    problems = load_problems(path, id_field="extra_info.index",
                             answer_field="reward_model.ground_truth")
    assert [(p.prompt_id, p.prompt, p.answer) for p in problems] == [
        ("a1b2", "Solve: what is 3+4? Answer: $Answer", "7"),
        ("c3d4", "Solve: what is 5*5?", "25")]


def test_chat_prompts_with_a_system_turn_are_refused(tmp_path):
    rows = [{"prompt": [{"role": "system", "content": "be brief"},
                        {"role": "user", "content": "1+1?"}], "answer": "2"}]
    with pytest.raises(ValueError, match=r"row 0.*roles \['system', 'user'\].*system_prompt"):
        load_problems(_jsonl(tmp_path / "chat.jsonl", rows), id_field=None)


def test_id_field_null_is_valid_yaml_config(tmp_path):
    cfg = config_from_dict({"data": {"type": "local", "train_path": "a.jsonl",
                                     "eval_path": "b.jsonl", "id_field": None,
                                     "answer_format": "gsm8k"}})
    assert cfg.data.id_field is None and cfg.data.answer_format == "gsm8k"


SAVED = Path(__file__).parent / "data" / "save_to_disk" / "gsm8k_dict"  # by datasets 5.2.0


def test_save_to_disk_directories_load_without_the_datasets_package():
    kw = dict(id_field=None, prompt_field="question", answer_format="gsm8k")
    assert [(p.prompt, p.answer) for p in load_problems(SAVED / "train", **kw)] == [
        ("What is 1+1?", "2"), ("What is 2+3?", "5")]
    assert [p.answer for p in load_problems(SAVED / "test", **kw)] == ["5"]
    assert [p.answer for p in load_problems(SAVED, split="test", **kw)] == ["5"]
    with pytest.raises(ValueError, match=r"holds splits \['train', 'test'\]; point at one"):
        load_problems(SAVED, **kw)


def test_a_directory_not_written_by_save_to_disk_is_named(tmp_path):
    with pytest.raises(ValueError, match="not one written by save_to_disk"):
        load_problems(tmp_path)
