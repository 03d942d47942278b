"""Rollout generation: shapes, EOS handling, determinism under a seed, evaluation."""

from types import SimpleNamespace

import pytest
import torch

from insight.problems.datasets import Problem
from insight.policy.generation import (
    HFEngine,
    Rollout,
    RolloutEngine,
    evaluate_accuracy,
    generate_rollouts,
    greedy_answers,
    token_budget_chunks,
)
from insight.policy.model import build_char_tokenizer, build_tiny_policy
from insight.policy.vllm_engine import VLLMEngine

SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


class ScriptedLM(torch.nn.Module):
    """A stand-in causal LM that emits a fixed script per prompt (by its last prompt
    character), so EOS handling can be checked exactly. Script tokens are characters;
    "<eos>" ends. It ignores the cache and counts decode steps itself."""

    def __init__(self, tok, scripts: dict[str, list[str]]):
        super().__init__()
        self.tok = tok
        self.scripts = {k: [tok.convert_tokens_to_ids(c) for c in v] for k, v in scripts.items()}
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.generation_config = SimpleNamespace(eos_token_id=tok.eos_token_id)
        self.config = SimpleNamespace(pad_token_id=tok.pad_token_id)
        self.rows: list[list[int]] = []
        self.step = 0

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True):
        n, v = input_ids.shape[0], len(self.tok)
        if past_key_values is None:  # prefill: remember which script each row follows
            self.step = 0
            last = [self.tok.convert_ids_to_tokens(int(r[-2])) for r in input_ids]  # char before "="
            self.rows = [self.scripts[c] for c in last]
        logits = torch.full((n, 1, v), -30.0)
        for i, script in enumerate(self.rows):
            tid = script[min(self.step, len(script) - 1)]
            logits[i, 0, tid] = 30.0
        self.step += 1
        return SimpleNamespace(logits=logits, past_key_values="cache")


@pytest.fixture
def tok():
    return build_char_tokenizer("0123456789+-=")


def test_eos_is_kept_in_ids_stripped_from_text_and_truncation_is_flagged(tok):
    lm = ScriptedLM(tok, {"1": list("42") + ["<eos>"], "2": list("7777777"), "3": ["<eos>"]})
    out = generate_rollouts(lm, tok, ["40+1=", "5+2=", "1+3="], 2, temperature=0.0, max_new_tokens=4, seed=0)
    eos = tok.eos_token_id
    assert [len(g) for g in out] == [2, 2, 2]
    r = out[0][0]
    assert r == Rollout("42", [tok.convert_tokens_to_ids("4"), tok.convert_tokens_to_ids("2"), eos], False, 0.0)
    trunc = out[1][1]
    assert trunc.completion == "7777" and trunc.truncated and eos not in trunc.completion_token_ids
    assert len(trunc.completion_token_ids) == 4  # exactly max_new_tokens, no padding
    empty = out[2][0]
    assert empty.completion == "" and empty.completion_token_ids == [eos] and not empty.truncated


def test_sampling_shapes_and_invariants_on_a_real_tiny_model():
    model, tok = build_tiny_policy(0, **SMALL)
    prompts = ["1+2=", "345-67=", "8="]
    out = generate_rollouts(model, tok, prompts, 5, temperature=1.0, max_new_tokens=6, seed=1, batch_size=4)
    assert [len(g) for g in out] == [5, 5, 5]
    eos = tok.eos_token_id
    for g in out:
        for r in g:
            ids = r.completion_token_ids
            assert 1 <= len(ids) <= 6
            assert eos not in ids[:-1]  # nothing after EOS, no padding kept
            assert r.truncated == (ids[-1] != eos) and (not r.truncated or len(ids) == 6)
            text_ids = ids if r.truncated else ids[:-1]
            assert r.completion == tok.decode(text_ids, skip_special_tokens=True)
            assert r.logprob is not None and r.logprob <= 0.0


def test_generation_is_deterministic_given_the_seed_and_leaves_global_rng_alone():
    model, tok = build_tiny_policy(0, **SMALL)
    prompts = ["1+2=", "34-5=", "99+99="]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = generate_rollouts(model, tok, prompts, 4, seed=7, max_new_tokens=5)
    after = torch.rand(1)
    b = generate_rollouts(model, tok, prompts, 4, seed=7, max_new_tokens=5)
    c = generate_rollouts(model, tok, prompts, 4, seed=8, max_new_tokens=5)
    assert a == b
    assert a != c
    assert torch.equal(before, after)  # sampling used its own generator


def test_batched_and_single_prompt_greedy_decoding_agree():
    model, tok = build_tiny_policy(0, **SMALL)
    prompts = ["1+2=", "345-67=", "8+10="]
    together = greedy_answers(model, tok, prompts, max_new_tokens=5)
    alone = [greedy_answers(model, tok, [p], max_new_tokens=5)[0] for p in prompts]
    assert together == alone


def test_sampled_logprob_matches_the_trainers_recomputation():
    from insight.policy.grpo import _collate, completion_logprobs, make_policy_batch

    model, tok = build_tiny_policy(0, **SMALL)
    prompts = ["1+2=", "345-67="]
    out = generate_rollouts(model, tok, prompts, 3, temperature=1.0, max_new_tokens=5, seed=3)
    batch = make_policy_batch(tok, prompts, [[r.completion_token_ids for r in g] for g in out], torch.zeros(2, 3))
    coll = _collate(batch, tok.pad_token_id, "cpu")
    with torch.no_grad():
        lp = (completion_logprobs(model, coll) * coll["completion_mask"]).sum(-1)
    sampled = torch.tensor([r.logprob for g in out for r in g])
    torch.testing.assert_close(lp, sampled, atol=1e-4, rtol=1e-4)


def test_top_p_keeps_only_the_nucleus(tok):
    from insight.policy.generation import _sample_next

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    seen = {int(_sample_next(logits, 1.0, 0.7, g)[0]) for _ in range(200)}
    assert seen == {0, 1}  # 0.5 + 0.3 reaches 0.7; the tail is never drawn
    ids, lp = _sample_next(logits, 0.0, 1.0, None)
    assert int(ids) == 0 and float(lp) == 0.0


def test_evaluate_accuracy_greedy_and_avg_at_n(tok):
    lm = ScriptedLM(tok, {"2": list("42") + ["<eos>"], "1": list("5") + ["<eos>"]})
    problems = [
        Problem("p0", "40+2=", "42", "arithmetic", 2, "arithmetic"),
        Problem("p1", "3+1=", "4", "arithmetic", 1, "arithmetic"),
    ]
    g = evaluate_accuracy(lm, tok, problems, greedy=True, seed=0)
    assert g["accuracy"] == 0.5 and g["n_samples"] == 1
    assert g["per_problem"] == [
        {"prompt_id": "p0", "successes": 1, "n": 1},
        {"prompt_id": "p1", "successes": 0, "n": 1},
    ]
    s = evaluate_accuracy(lm, tok, problems, n_samples=3, temperature=1.0, seed=0)
    assert s["accuracy"] == 0.5 and s["per_problem"][0]["successes"] == 3


def test_engines_share_one_interface():
    model, tok = build_tiny_policy(0, **SMALL)
    eng = HFEngine(model, tok)
    assert isinstance(eng, RolloutEngine)
    out = eng.generate(["1+1="], 2, max_new_tokens=3, seed=0)
    assert len(out) == 1 and len(out[0]) == 2
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="vLLM"):
            VLLMEngine("/nonexistent")


def test_bad_arguments_are_rejected():
    model, tok = build_tiny_policy(0, **SMALL)
    with pytest.raises(ValueError):
        generate_rollouts(model, tok, ["1="], 0, seed=0)
    with pytest.raises(ValueError):
        generate_rollouts(model, tok, ["1="], 1, max_new_tokens=0, seed=0)
    assert generate_rollouts(model, tok, [], 3, seed=0) == []


# --------------------------------------------------------------------------- token budget

def test_token_budget_chunks_pack_consecutive_sequences_within_the_budget():
    # n x (longest prompt + max_new_tokens) <= 10 with max_new_tokens 2
    assert token_budget_chunks([3, 3, 5, 2], 2, 10) == [(0, 2), (2, 3), (3, 4)]
    assert token_budget_chunks([1, 1, 1, 1, 1], 2, 9) == [(0, 3), (3, 5)]
    assert token_budget_chunks([20, 1], 2, 10) == [(0, 1), (1, 2)]  # over budget: alone
    assert token_budget_chunks([], 2, 10) == []


def test_a_token_budget_that_yields_the_fixed_batches_gives_the_same_rollouts(monkeypatch):
    import insight.policy.generation as generation

    model, tok = build_tiny_policy(0, **SMALL)
    prompts = ["1+2=", "3+4=", "5+6=", "7+8=", "9+1="]  # one prompt length
    width = len(tok(prompts[0])["input_ids"]) + 5     # prompt + max_new_tokens
    budget = 4 * width + width // 2                    # room for 4 sequences, not 5
    shapes = []
    real = generation.sample_batch

    def spy(model, input_ids, attention_mask, **kw):
        shapes.append(tuple(input_ids.shape))
        return real(model, input_ids, attention_mask, **kw)

    monkeypatch.setattr(generation, "sample_batch", spy)
    fixed = generate_rollouts(model, tok, prompts, 2, max_new_tokens=5, seed=3, batch_size=4)
    fixed_shapes, shapes[:] = list(shapes), []
    by_tokens = generate_rollouts(model, tok, prompts, 2, max_new_tokens=5, seed=3,
                                  max_tokens_per_batch=budget)
    assert by_tokens == fixed
    assert shapes == fixed_shapes == [(4, width - 5)] * 2 + [(2, width - 5)]
    assert all(n * (p + 5) <= budget for n, p in shapes)


def test_batch_sizes_respect_the_token_budget_with_mixed_prompt_lengths(monkeypatch):
    import insight.policy.generation as generation

    model, tok = build_tiny_policy(0, **SMALL)
    prompts = ["1=", "12345+6789=", "3+4=", "99999+99999+9=", "5="]
    shapes = []
    real = generation.sample_batch
    monkeypatch.setattr(generation, "sample_batch", lambda m, ids, att, **kw: (
        shapes.append(tuple(ids.shape)), real(m, ids, att, **kw))[1])
    out = HFEngine(model, tok, max_tokens_per_batch=60).generate(prompts, 3, max_new_tokens=4,
                                                                 seed=1)
    assert [len(g) for g in out] == [3] * 5
    assert sum(n for n, _ in shapes) == 15 and len(shapes) > 2
    assert all(n * (p + 4) <= 60 for n, p in shapes)
