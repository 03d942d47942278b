"""Precision and memory of the trainer: bf16-mixed keeps small updates, the log-prob pass
never builds a [batch, sequence, vocab] tensor, prefill keeps one position's logits,
gradient checkpointing and token-budget micro-batches change memory, not the update."""

import copy
import functools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from insight.config import TrainConfig
from insight.policy import generation
from insight.policy.grpo import (
    PolicyBatch,
    _collate,
    completion_logprobs,
    enable_gradient_checkpointing,
    grpo_loss,
    load_trainer_state,
    micro_batches,
    policy_update,
)
from insight.policy.model import build_tiny_policy, save_policy
from insight.policy.precision import resolve_precision

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def _batch(n=5, prompt_len=(3, 6), completion_len=(1, 4), vocab=20, seed=0):
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        length = int(torch.randint(lo, hi + 1, (1,), generator=g))
        return torch.randint(4, vocab, (length,), generator=g).tolist()

    return PolicyBatch([[1] + ids(*prompt_len) for _ in range(n)],
                       [ids(*completion_len) for _ in range(n)],
                       torch.randn(n, generator=g).tolist())


def _flat(model):
    return torch.cat([p.detach().float().flatten() for p in model.parameters()])


# ----------------------------------------------------------------------- precision


def test_auto_precision_is_bf16_mixed_on_cuda_and_fp32_on_cpu():
    assert resolve_precision("auto", "cuda") == "bf16-mixed"
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cpu")


def test_train_config_validates_the_new_fields():
    assert TrainConfig().precision == "auto" and TrainConfig().max_tokens_per_micro_batch is None
    for bad in ({"precision": "fp16"}, {"max_tokens_per_micro_batch": 0},
                {"gradient_checkpointing": "sometimes"}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def _changed_share_after_small_step(tmp_path, precision):
    """Share of the decoder layers' weight elements that one Adam step at lr 1e-6 moves,
    starting from a checkpoint stored in bf16."""
    model, tok = build_tiny_policy(0, **SMALL)
    save_policy(model.to(torch.bfloat16), tok, tmp_path / "bf16")
    model, tok, opt = load_trainer_state(tmp_path / "bf16", lr=1e-6, precision=precision)
    layers = [p for name, p in model.named_parameters() if ".layers." in name]
    before = [p.detach().clone() for p in layers]
    policy_update(model, opt, _batch(n=8), precision=precision, max_grad_norm=None)
    changed = sum(int((p.detach() != b).sum()) for p, b in zip(layers, before))
    return changed / sum(b.numel() for b in before), layers[0].dtype


def test_bf16_mixed_keeps_fp32_master_weights_that_a_tiny_step_moves(tmp_path):
    share, dtype = _changed_share_after_small_step(tmp_path, "bf16-mixed")
    assert dtype == torch.float32  # the bf16 checkpoint was upcast: fp32 master weights
    # Adam's first step moves every element with a gradient by about lr = 1e-6,
    # far above fp32's resolution at these magnitudes
    assert share > 0.9


def test_pure_bf16_rounds_most_of_a_tiny_step_away(tmp_path):
    # documented behaviour of precision: bf16 (why bf16-mixed is the CUDA default): a
    # weight w moves only when the update exceeds about |w| / 256
    share, dtype = _changed_share_after_small_step(tmp_path, "bf16")
    assert dtype == torch.bfloat16
    assert share < 0.1


def test_bf16_mixed_computes_log_probs_in_bf16_close_to_fp32():
    model, _ = build_tiny_policy(0, **SMALL)
    coll = _collate(_batch(), pad_id=0, device="cpu")
    with torch.no_grad():
        exact = completion_logprobs(model, coll)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = completion_logprobs(model, coll)
    assert mixed.dtype == torch.float32  # the log-softmax itself runs in fp32
    assert not torch.equal(mixed, exact)  # autocast did compute in bf16
    torch.testing.assert_close(mixed, exact, atol=0.1, rtol=0.05)


# ----------------------------------------------------------------------- memory


class LargestVocabTensor(TorchDispatchMode):
    """Records the element count of the largest tensor that any op (forward or
    backward) produces with a dimension of the vocabulary's size."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.largest = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and self.vocab in t.shape:
                self.largest = max(self.largest, t.numel())
        return out


VOCAB = 3001  # a size no other dimension of the model or batch has


def _wide_vocab_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=32,
                                        max_position_embeddings=256, pad_token_id=0))


def _largest_vocab_tensor(model, prompt_len, chunk_rows):
    batch = _batch(n=4, prompt_len=(prompt_len, prompt_len), completion_len=(20, 24), vocab=VOCAB)
    coll = _collate(batch, pad_id=0, device="cpu")
    probe = LargestVocabTensor(VOCAB)
    with probe:
        lp = completion_logprobs(model, coll, chunk_elements=chunk_rows * VOCAB)
        (lp.sum()).backward()
    model.zero_grad(set_to_none=True)
    return probe.largest, coll


def test_log_prob_pass_peak_does_not_grow_with_vocab_times_prompt_length():
    model = _wide_vocab_model()
    chunk_rows = 32  # > hidden_size, so the [vocab, hidden] weight gradient is smaller
    short, _ = _largest_vocab_tensor(model, 8, chunk_rows)
    long, coll = _largest_vocab_tensor(model, 160, chunk_rows)
    assert short == long <= chunk_rows * VOCAB
    # the probe is meaningful: the plain forward's logits are [batch, sequence, vocab]
    probe = LargestVocabTensor(VOCAB)
    with probe, torch.no_grad():
        model(input_ids=coll["input_ids"], attention_mask=coll["attention_mask"])
    assert probe.largest == coll["input_ids"].numel() * VOCAB > 20 * long


def test_chunked_log_probs_and_gradients_equal_the_full_logits_ones():
    model = _wide_vocab_model()
    coll = _collate(_batch(n=3, prompt_len=(4, 9), completion_len=(2, 12), vocab=VOCAB),
                    pad_id=0, device="cpu")
    C = coll["targets"].shape[1]
    logits = model(input_ids=coll["input_ids"], attention_mask=coll["attention_mask"],
                   position_ids=coll["position_ids"]).logits[:, -(C + 1):-1].float()
    full = torch.log_softmax(logits, -1).gather(-1, coll["targets"][..., None]).squeeze(-1)
    full = full * coll["completion_mask"]
    full.sum().backward()
    g_full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    chunked = completion_logprobs(model, coll, chunk_elements=5 * VOCAB)  # 5 tokens a chunk
    chunked.sum().backward()
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_full, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert float((chunked.detach() * (1 - coll["completion_mask"])).abs().sum()) == 0  # padding is 0


def test_prefill_keeps_only_the_last_position_logits():
    model, tok = build_tiny_policy(0, **SMALL)
    enc = tok(["12+34=", "5-6="], return_tensors="pt", padding=True)
    shapes = []
    forward = model.forward

    @functools.wraps(forward)  # keeps the signature sample_batch inspects
    def recording(*a, **kw):
        out = forward(*a, **kw)
        shapes.append(tuple(out.logits.shape))
        return out

    kwargs = dict(eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
                  max_new_tokens=5, temperature=1.0, top_p=1.0)
    model.forward = recording
    ids, lengths, lp = generation.sample_batch(model, enc["input_ids"], enc["attention_mask"],
                                               generator=torch.Generator().manual_seed(3), **kwargs)
    assert enc["input_ids"].shape[1] > 1 and shapes[0] == (2, 1, len(tok))
    # the same draws as from the full prefill logits
    model.forward = forward
    full_ids = _sample_with_full_prefill(model, enc, kwargs)
    assert torch.equal(ids, full_ids)


def _sample_with_full_prefill(model, enc, kwargs):
    original = generation._last_logits_only
    generation._last_logits_only = lambda m: {}
    try:
        return generation.sample_batch(model, enc["input_ids"], enc["attention_mask"],
                                       generator=torch.Generator().manual_seed(3), **kwargs)[0]
    finally:
        generation._last_logits_only = original


# ----------------------------------------------------------------------- same update


def _sgd_update(model, batch, **kw):
    m = copy.deepcopy(model)
    policy_update(m, torch.optim.SGD(m.parameters(), lr=1.0), batch, max_grad_norm=None, **kw)
    return _flat(m)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    model, _ = build_tiny_policy(0, **SMALL)
    coll = _collate(_batch(n=6), pad_id=0, device="cpu")
    results = []
    for checkpointing in (False, True):
        m = copy.deepcopy(model)
        if checkpointing:
            enable_gradient_checkpointing(m)
        m.train()
        calls = []
        m.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
        lp = completion_logprobs(m, coll)
        loss, _ = grpo_loss(lp, lp.detach(), coll["advantages"], coll["completion_mask"])
        loss.backward()
        assert len(calls) == (2 if checkpointing else 1)  # recomputed in the backward pass
        results.append((loss.item(), torch.cat([p.grad.flatten() for p in m.parameters()])))
    (loss_a, grad_a), (loss_b, grad_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    assert grad_a.abs().max() > 0
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-5, atol=1e-7)


def test_token_budget_micro_batches_respect_the_budget_in_padded_tokens():
    batch = _batch(n=12, prompt_len=(2, 9), completion_len=(1, 7))
    budget = 40
    parts = micro_batches(batch, list(range(12)), micro_batch_size=None, max_tokens=budget)
    assert [i for part in parts for i in part] == list(range(12))  # order kept, nothing lost
    for part in parts:
        padded = len(part) * (max(len(batch.prompt_ids[i]) for i in part)
                              + max(len(batch.completion_ids[i]) for i in part))
        assert padded <= budget or len(part) == 1
    assert len(parts) > 1
    # a sequence over the budget on its own still gets a micro-batch
    assert micro_batches(batch, [0, 1], micro_batch_size=None, max_tokens=1) == [[0], [1]]
    # unset: micro_batch_size decides, as before
    assert micro_batches(batch, list(range(12)), micro_batch_size=5) == [
        list(range(5)), list(range(5, 10)), [10, 11]]


def test_token_budget_micro_batching_gives_the_one_batch_update():
    model, _ = build_tiny_policy(0, **SMALL)
    batch = _batch(n=10, prompt_len=(2, 9), completion_len=(1, 7))
    before = _flat(model)
    whole = _sgd_update(model, batch, micro_batch_size=64)
    for budget in (12, 30, 80):
        by_tokens = _sgd_update(model, batch, max_tokens_per_micro_batch=budget)
        torch.testing.assert_close(by_tokens - before, whole - before, rtol=1e-4, atol=1e-7)
    assert (whole - before).abs().max() > 0
