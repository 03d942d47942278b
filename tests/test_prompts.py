"""What the model is given: a prompt rendered once (chat template, system prompt,
instruction), recorded, and the same tokens for generation, the update and evaluation;
prompts that do not fit the context are refused by id or skipped as configured."""

from __future__ import annotations

import json

import pytest

from insight.config import config_from_dict
from insight.policy import prompts
from insight.policy.prompts import PromptFormat, render
from insight.record.run import check_config, open_or_create_run
from tests.tiny_qwen import build_tiny_qwen

SYSTEM = "You are a careful math tutor."
INSTRUCTION = "Put the final answer in \\boxed{}."
GSM8K_ROWS = [
    {"question": f"Natalia sold {a} clips in April and {b} in May." + " She is careful." * n
                 + " How many altogether?",
     "answer": f"{a}+{b} = <<{a}+{b}={a + b}>>{a + b}\n#### {a + b}"}
    for n, (a, b) in zip([0, 1, 2, 3, 4, 5, 0, 0],  # training prompts of growing length
                         [(48, 24), (12, 10), (7, 5), (20, 42), (3, 9), (100, 1), (11, 2),
                          (6, 6)])
]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return build_tiny_qwen(tmp_path_factory.mktemp("qwen") / "tiny-qwen2")


@pytest.fixture(scope="module")
def qwen_tokenizer(qwen_dir):
    from insight.policy.model import load_tokenizer
    return load_tokenizer(qwen_dir)


def _gsm8k_files(tmp_path):
    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return str(path)
    return write("train.jsonl", GSM8K_ROWS[:6]), write("test.jsonl", GSM8K_ROWS[6:])


def _config(qwen_dir, tmp_path, **over):
    train, test = _gsm8k_files(tmp_path)
    cfg = {
        "name": "qwen", "seed": 1, "rounds": 3,
        "policy": {"path": str(qwen_dir), "device": "cpu", "threads": 1,
                   "chat_template": True},
        "data": {"type": "local", "train_path": train, "eval_path": test,
                 "prompt_field": "question", "answer_format": "gsm8k", "id_field": None,
                 "system_prompt": SYSTEM, "instruction": INSTRUCTION},
        "rollout": {"k": 2, "batch_size": 2, "max_new_tokens": 6},
        "train": {"micro_batch_size": 4, "lr": 1e-3},
        "eval": {"every": 1, "n_samples": 1},
        "tracking": {"enabled": False},
    }
    for key, val in over.items():
        cfg[key] = {**cfg[key], **val}
    return config_from_dict(cfg)


# --- rendering ------------------------------------------------------------------------
def test_chat_template_renders_system_prompt_user_turn_with_instruction_and_generation_prompt(
        qwen_tokenizer):
    text = render(qwen_tokenizer, "What is 6*7?", PromptFormat(True, SYSTEM, INSTRUCTION))
    assert text == ("<|im_start|>system\nYou are a careful math tutor.<|im_end|>\n"
                    "<|im_start|>user\nWhat is 6*7?\n\nPut the final answer in \\boxed{}."
                    "<|im_end|>\n<|im_start|>assistant\n")
    # the specials are single tokens, not spelled out: the model sees its chat format
    ids = qwen_tokenizer(text)["input_ids"]
    assert ids.count(qwen_tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3


def test_without_a_chat_template_system_prompt_and_instruction_are_paragraphs(qwen_tokenizer):
    assert render(qwen_tokenizer, "1+1?", PromptFormat(False, "Sys.", "Box it.")) == \
        "Sys.\n\n1+1?\n\nBox it."
    assert render(qwen_tokenizer, "1+1?", PromptFormat()) == "1+1?"


def test_a_template_that_writes_bos_does_not_get_a_second_one():
    from insight.policy.model import build_char_tokenizer
    tok = build_char_tokenizer("0123456789+=?abcdefghijklmnopqrstuvwxyz ")  # adds <bos> itself
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}={% endif %}")
    text = render(tok, "1+1", PromptFormat(chat_template=True))
    assert text == "1+1="
    assert tok(text)["input_ids"].count(tok.bos_token_id) == 1


def test_chat_template_without_one_in_the_tokenizer_is_refused(tiny_policy_dir, tmp_path):
    train, test = _gsm8k_files(tmp_path)
    cfg = config_from_dict({"policy": {"path": str(tiny_policy_dir), "chat_template": True},
                            "data": {"type": "arithmetic", "n_train": 20, "n_eval": 5},
                            "rollout": {"batch_size": 4, "max_new_tokens": 4}})
    with pytest.raises(ValueError, match="no chat template"):
        check_config(cfg)


# --- prompt length -------------------------------------------------------------------
def test_a_prompt_over_max_prompt_tokens_is_refused_by_id(qwen_dir, tmp_path):
    cfg = _config(qwen_dir, tmp_path, rollout={"max_prompt_tokens": 20})
    with pytest.raises(ValueError, match=r"6 train prompt\(s\) longer than the 20-token limit "
                                         r"\(rollout.max_prompt_tokens\): q-[0-9a-f]{16} "
                                         r"\(\d+ tokens\).*on_long_prompt: skip"):
        check_config(cfg)


def test_skip_leaves_long_prompts_out_of_the_run(qwen_dir, qwen_tokenizer, tmp_path):
    fmt = PromptFormat(True, SYSTEM, INSTRUCTION)
    lengths = sorted(len(qwen_tokenizer(render(qwen_tokenizer, r["question"], fmt))["input_ids"])
                     for r in GSM8K_ROWS[:6])
    limit = lengths[2]  # the three shortest fit
    cfg = _config(qwen_dir, tmp_path, rollout={"max_prompt_tokens": limit,
                                               "on_long_prompt": "skip"})
    train, held_out = check_config(cfg)
    assert len(train) == sum(n <= limit for n in lengths) < 6
    assert all(len(qwen_tokenizer(p.model_input)["input_ids"]) <= limit for p in train)


def test_max_prompt_tokens_and_completions_must_fit_the_context(qwen_dir, tmp_path):
    cfg = _config(qwen_dir, tmp_path, rollout={"max_prompt_tokens": 251, "max_new_tokens": 6})
    with pytest.raises(ValueError, match=r"251\) \+ rollout.max_new_tokens \(6\) exceed the "
                                         r"model's context of 256 tokens"):
        check_config(cfg)
    assert prompts.prompt_limit(qwen_dir, None, 6) == 250


# --- the pipeline -------------------------------------------------------------------
def test_three_rounds_of_a_chat_model_see_the_rendered_prompt_everywhere(
        qwen_dir, tmp_path, monkeypatch):
    """A bf16 Qwen2 with a BPE tokenizer and a chat template, GSM8K rows without ids,
    trained under bf16-mixed with gradient checkpointing, the optimizer state saved every
    2 rounds: the recorded rendered prompt is what generation, the update and evaluation
    get, and every round commits."""
    from insight import stages
    from insight.policy import generation, grpo
    from insight.record.store import RunStore

    generated, trained = [], []
    real_generate, real_batch = generation.HFEngine.generate, grpo.make_policy_batch

    def spy_generate(self, prompts_, k, **kw):
        generated.extend(prompts_)
        return real_generate(self, prompts_, k, **kw)

    def spy_batch(tok, prompts_, *a, **kw):
        trained.extend(prompts_)
        return real_batch(tok, prompts_, *a, **kw)

    monkeypatch.setattr(generation.HFEngine, "generate", spy_generate)
    monkeypatch.setattr(grpo, "make_policy_batch", spy_batch)
    cfg = _config(qwen_dir, tmp_path, train={"precision": "bf16-mixed", "save_state_every": 2,
                                             "gradient_checkpointing": True})
    run = open_or_create_run(tmp_path / "run", cfg)
    stages.initial_round(run)
    for round_ in (1, 2, 3):
        with RunStore(run.run_dir) as db:
            db.start_round(run.run_id, round_, None)
        for stage in (stages.select, stages.rollout, stages.update_posterior, stages.train,
                      stages.evaluate, stages.commit):
            stage(run, round_)

    with RunStore(run.run_dir) as db:
        rows = db.sql("SELECT prompt_id, prompt, rendered FROM prompts").to_pylist()
        committed = db.sql("SELECT count(*) AS n FROM rounds WHERE status = 'committed'"
                           ).column("n").to_pylist()[0]
        rollouts = db.sql("SELECT count(*) AS n FROM rollouts").column("n").to_pylist()[0]
    assert committed == 4 and rollouts == 3 * 2 * 2
    rendered = {r["rendered"] for r in rows}
    for r in rows:
        assert r["prompt_id"].startswith("q-")
        assert r["rendered"] == render_expected(r["prompt"])
    # generation (rollout and evaluation) and the update got the recorded text, nothing else
    assert set(generated) <= rendered and set(trained) <= rendered
    # weights every round; the optimizer at round 2 and at the planned last round 3
    ckpts = {r: stages.checkpoint_dir(run, r) for r in (2, 3)}
    assert all((c / "model.safetensors").is_file() for c in ckpts.values())
    assert all(grpo.has_optimizer_state(c) for c in ckpts.values())
    assert trained and set(trained) <= set(generated)
    # and the audit shows it, from the published Parquet
    from insight.report.audit import prompt_history
    assert prompt_history(run.run_dir, rows[0]["prompt_id"])["rendered"] == rows[0]["rendered"]


def render_expected(prompt: str) -> str:
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{prompt}\n\n"
            f"{INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n")
