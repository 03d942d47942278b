"""Rollout generation and held-out evaluation.

The seam is `RolloutEngine`: anything with `generate(prompts, k, *, temperature, top_p,
max_new_tokens, seed, prompt_seeds=None) -> list[list[Rollout]]` (`prompt_seeds`: one
seed per prompt, so a prompt's completions do not depend on what shares its batch). `HFEngine` samples with a plain
Hugging Face causal LM (batched, KV cache, a hand-written decode loop that draws from a
local `torch.Generator`, so results are reproducible given the seed on CPU and never
touch the global RNG). `VLLMEngine` (in `insight.policy.vllm_engine`) is the GPU
path for real runs: one long-lived vLLM engine that loads each round's weights in place
(needs the optional `gpu` extra; vLLM is imported only when it is built).

Rollout ids: `completion_token_ids` are exactly the sampled ids, EOS included when it was
produced, so the policy update can recompute their log-probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from insight.policy.model import eos_ids


@dataclass(frozen=True)
class Rollout:
    completion: str  # decoded text, EOS and padding stripped
    completion_token_ids: list[int]  # sampled ids, EOS included if produced
    truncated: bool  # True when max_new_tokens ran out before EOS
    logprob: float | None = None  # sum of sampling log-probs (after temperature/top-p)


@runtime_checkable
class RolloutEngine(Protocol):
    def generate(
        self,
        prompts: Sequence[str],
        k: int,
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 8,
        seed: int = 0,
        prompt_seeds: Sequence[int] | None = None,
    ) -> list[list[Rollout]]: ...


# --------------------------------------------------------------------------- sampling


def _sampling_logp(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Log-probs of the sampling distribution: logits / temperature, restricted to the
    nucleus of mass `top_p` (masked tokens at -inf)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_lp, sorted_idx = torch.sort(logp, dim=-1, descending=True)
        cum = sorted_lp.exp().cumsum(dim=-1)
        # keep the smallest prefix whose mass reaches top_p (always keep the top token)
        remove = (cum - sorted_lp.exp()) >= top_p
        sorted_lp = sorted_lp.masked_fill(remove, float("-inf"))
        logp = torch.full_like(logp, float("-inf")).scatter(-1, sorted_idx, sorted_lp)
        logp = torch.log_softmax(logp, dim=-1)
    return logp


def _sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next ids [N] and their log-probs under the sampling distribution.

    temperature <= 0 means greedy (argmax, log-prob 0). With `uniforms` ([N], one
    per row) each row is drawn by inverting its own CDF, so a row's draw depends on its
    logits and its uniform only, never on which other rows share the batch; otherwise
    one `multinomial` over the batch draws from `gen`."""
    if temperature <= 0:
        ids = logits.float().argmax(dim=-1)
        return ids, torch.zeros_like(ids, dtype=torch.float32)
    logp = _sampling_logp(logits, temperature, top_p)
    probs = logp.exp()
    if uniforms is None:
        ids = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
    else:
        ids = _inverse_cdf(probs, uniforms)
    return ids, logp.gather(-1, ids[:, None]).squeeze(-1)


def _inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The token whose CDF interval holds u * total mass, per row (float64, so the
    rounding of the running sum moves a boundary by far less than a draw can notice).
    Never a zero-probability token: u < 1, and a rounding up to the total is pulled
    back to the last token that has mass."""
    cdf = probs.double().cumsum(dim=-1)
    target = (uniforms.to(cdf) * cdf[:, -1])[:, None]
    ids = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    vocab = probs.shape[-1]
    last_with_mass = vocab - 1 - (probs > 0).flip(-1).int().argmax(dim=-1)
    return torch.minimum(ids, last_with_mass)


def row_uniforms(prompt_seeds: Sequence[int], k: int, steps: int) -> torch.Tensor:
    """[len(prompt_seeds) * k, steps] uniforms in [0, 1): row (i, j) is sample j of
    prompt i, its stream seeded by (prompt seed, j) alone, so the k completions of a
    prompt are the same whatever else is generated with them (in any batch, chunk,
    shard or process)."""
    rows = [np.random.default_rng(np.random.SeedSequence([int(s), j])).random(steps)
            for s in prompt_seeds for j in range(k)]
    return torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, steps,
                                                                    dtype=torch.float64)


def _cache_kwarg(model) -> str:
    """Name of the KV-cache argument of model.forward: `cache` in transformers >= 5.x,
    `past_key_values` before."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return "past_key_values"
    return "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"


def _last_logits_only(model) -> dict:
    """The forward keyword that keeps only the last position's logits, as the installed
    transformers names it (`logits_to_keep`, formerly `num_logits_to_keep`), or none."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return {}
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: 1}
    return {}


def _get_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


@torch.no_grad()
def sample_batch(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode a left-padded batch with a KV cache. `uniforms` ([N, max_new_tokens]):
    step t of row n draws with uniforms[n, t] (see `_sample_next`) instead of `generator`.

    Returns (new_ids [N, T] padded with pad_token_id after EOS, lengths [N] counting
    EOS, logprob_sums [N]); T <= max_new_tokens (stops early when every row ended).
    """
    device = input_ids.device
    n = input_ids.shape[0]
    eos = torch.tensor(list(eos_token_ids), device=device)
    attn = attention_mask.clone()
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    cache_kw = _cache_kwarg(model)
    # Prefill: only the last position's logits are needed; asking for all of them is a
    # [N, prompt, vocab] tensor (GiBs at a real vocabulary and batch).
    out = model(input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=True,
                **_last_logits_only(model))
    past = _get_cache(out)
    logits = out.logits[:, -1, :]
    next_pos = pos[:, -1:] + 1
    done = torch.zeros(n, dtype=torch.bool, device=device)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    lp_sum = torch.zeros(n, dtype=torch.float32, device=device)
    steps: list[torch.Tensor] = []
    for t in range(max_new_tokens):
        ids, lp = _sample_next(logits, temperature, top_p, generator,
                               None if uniforms is None else uniforms[:, t])
        ids = torch.where(done, torch.full_like(ids, pad_token_id), ids)
        lp_sum += torch.where(done, torch.zeros_like(lp), lp)
        lengths += (~done).long()
        steps.append(ids)
        done = done | torch.isin(ids, eos)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        attn = torch.cat([attn, torch.ones(n, 1, dtype=attn.dtype, device=device)], dim=1)
        out = model(
            input_ids=ids[:, None],
            attention_mask=attn,
            position_ids=next_pos,
            use_cache=True,
            **{cache_kw: past},
        )
        past = _get_cache(out)
        logits = out.logits[:, -1, :]
        next_pos = next_pos + 1
    new_ids = torch.stack(steps, dim=1) if steps else torch.zeros(n, 0, dtype=torch.long)
    return new_ids, lengths, lp_sum


def _make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
    return g


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def generate_rollouts(
    model,
    tokenizer,
    prompts: Sequence[str],
    k: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 8,
    seed: int = 0,
    batch_size: int = 256,
    max_tokens_per_batch: int | None = None,
    prompt_seeds: Sequence[int] | None = None,
) -> list[list[Rollout]]:
    """k sampled completions per prompt: result[i][j] is sample j of prompts[i].

    With `prompt_seeds` (one per prompt) sample j of prompt i draws from its own
    stream, seeded by (prompt_seeds[i], j) (`row_uniforms`): its completion does not
    depend on the other prompts, the chunking or `seed`, which is what lets a round's
    prompts be split across workers and give the same rows (on CPU). Without them, the
    draws come from one generator seeded by `seed`, as described next.

    Prompts are encoded with the tokenizer's special tokens (BOS for the tiny policy)
    and left-padded. Rows are decoded in chunks (the k copies of a prompt are adjacent):
    `batch_size` sequences each, or, with `max_tokens_per_batch`, as many consecutive
    sequences as keep (sequences x (longest prompt + max_new_tokens)) within it
    (`token_budget_chunks`). Deterministic given `seed` and the chunking on CPU: one
    generator is drawn from across chunks, so another chunking gives other draws.
    temperature <= 0 gives greedy decoding.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompts:
        return []
    device = _model_device(model)
    eos = eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    if prompt_seeds is not None and len(prompt_seeds) != len(prompts):
        raise ValueError(f"{len(prompt_seeds)} prompt seeds for {len(prompts)} prompts")
    gen = _make_generator(seed, device)
    uniforms = (None if prompt_seeds is None or temperature <= 0
                else row_uniforms(prompt_seeds, k, max_new_tokens))
    was_training = model.training
    model.eval()
    flat = [p for p in prompts for _ in range(k)]
    rows: list[Rollout] = []
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start, end in _chunk_bounds(tokenizer, flat, batch_size, max_tokens_per_batch,
                                        max_new_tokens):
            chunk = flat[start:end]
            enc = tokenizer(list(chunk), return_tensors="pt", padding=True)
            new_ids, lengths, lp = sample_batch(
                model,
                enc["input_ids"].to(device),
                enc["attention_mask"].to(device),
                eos_token_ids=eos,
                pad_token_id=pad_id,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                generator=gen,
                uniforms=None if uniforms is None else uniforms[start:end].to(device),
            )
            new_ids, lengths, lp = new_ids.cpu(), lengths.cpu(), lp.cpu()
            for r in range(new_ids.shape[0]):
                ids = new_ids[r, : int(lengths[r])].tolist()
                ended = bool(ids) and ids[-1] in eos
                text_ids = ids[:-1] if ended else ids
                rows.append(
                    Rollout(
                        completion=tokenizer.decode(text_ids, skip_special_tokens=True),
                        completion_token_ids=ids,
                        truncated=not ended,
                        logprob=float(lp[r]),
                    )
                )
    finally:
        tokenizer.padding_side = old_side
        if was_training:
            model.train()
    return [rows[i * k : (i + 1) * k] for i in range(len(prompts))]


def token_budget_chunks(prompt_lengths: Sequence[int], max_new_tokens: int,
                        max_tokens: int) -> list[tuple[int, int]]:
    """(start, end) of consecutive runs of sequences whose decode batch stays within
    `max_tokens`: a left-padded batch holds n x (longest prompt + max_new_tokens)
    positions at the end of decoding, which is what its KV cache and activations scale
    with. A sequence over the budget on its own is decoded alone (it cannot be split)."""
    bounds: list[tuple[int, int]] = []
    start, longest = 0, 0
    for i, n_prompt in enumerate(prompt_lengths):
        widest = max(longest, n_prompt)
        if i > start and (i - start + 1) * (widest + max_new_tokens) > max_tokens:
            bounds.append((start, i))
            start, widest = i, n_prompt
        longest = widest
    if len(prompt_lengths) > start:
        bounds.append((start, len(prompt_lengths)))
    return bounds


def _chunk_bounds(tokenizer, flat: Sequence[str], batch_size: int, max_tokens: int | None,
                  max_new_tokens: int) -> list[tuple[int, int]]:
    """Fixed `batch_size` chunks, or token-budget chunks when `max_tokens` is set."""
    if max_tokens is None:
        return [(s, min(s + batch_size, len(flat))) for s in range(0, len(flat), batch_size)]
    lengths = [len(ids) for ids in tokenizer(list(flat))["input_ids"]]
    return token_budget_chunks(lengths, max_new_tokens, max_tokens)


class HFEngine:
    """RolloutEngine over an in-memory Hugging Face causal LM (CPU or CUDA).
    `max_tokens_per_batch` (when set) sizes decode batches by tokens instead of
    `batch_size` sequences (see `generate_rollouts`)."""

    def __init__(self, model, tokenizer, *, batch_size: int = 256,
                 max_tokens_per_batch: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_tokens_per_batch = max_tokens_per_batch

    @classmethod
    def from_path(cls, path, device: str = "auto", batch_size: int = 256) -> "HFEngine":
        from insight.policy.model import load_policy

        model, tok = load_policy(path, device=device)
        return cls(model, tok, batch_size=batch_size)

    def generate(self, prompts, k, *, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=0,
                 prompt_seeds=None):
        return generate_rollouts(
            self.model,
            self.tokenizer,
            prompts,
            k,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed,
            batch_size=self.batch_size,
            max_tokens_per_batch=self.max_tokens_per_batch,
            prompt_seeds=prompt_seeds,
        )


# --------------------------------------------------------------------------- evaluation


def evaluate_accuracy(model, tokenizer, problems: Sequence[Any], *, batch_size: int = 512,
                      **kwargs) -> dict:
    """`engine_accuracy` with an in-memory Hugging Face model (see there)."""
    return engine_accuracy(HFEngine(model, tokenizer, batch_size=batch_size), problems, **kwargs)


def engine_accuracy(
    engine: RolloutEngine,
    problems: Sequence[Any],
    *,
    n_samples: int = 4,
    temperature: float = 1.0,
    greedy: bool = False,
    seed: int = 0,
    top_p: float = 1.0,
    max_new_tokens: int = 8,
    success_threshold: float = 1.0,
) -> dict:
    """Held-out accuracy of the policy behind `engine` on `problems` (objects with
    prompt_id, prompt, answer, verifier), verified with `insight.problems.verifiers`, a
    sample counting as solved by the same rule as a training rollout (`is_success`).

    greedy=True: one argmax completion per problem (n_samples ignored); accuracy is the
    share of problems solved. Otherwise avg@n: n_samples sampled completions per
    problem at `temperature`, accuracy = mean success over all samples.
    Returns {"accuracy", "n_problems", "n_samples", "greedy", "temperature",
    "per_problem": [{"prompt_id", "successes", "n"}]}.
    """
    from insight.problems.verifiers import is_success, verify

    n = 1 if greedy else int(n_samples)
    if n < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    rolls = engine.generate([p.prompt for p in problems], n,
                            temperature=0.0 if greedy else temperature, top_p=top_p,
                            max_new_tokens=max_new_tokens, seed=seed)
    per_problem = []
    total = 0
    for prob, group in zip(problems, rolls):
        s = sum(1 for r in group if is_success(
            verify(prob.verifier, r.completion, prob.answer).reward, success_threshold))
        total += s
        per_problem.append({"prompt_id": prob.prompt_id, "successes": s, "n": n})
    denom = max(1, n * len(problems))
    return {
        "accuracy": total / denom,
        "n_problems": len(problems),
        "n_samples": n,
        "greedy": bool(greedy),
        "temperature": 0.0 if greedy else float(temperature),
        "per_problem": per_problem,
    }


def greedy_answers(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 8) -> list[str]:
    """Greedy completion text for each prompt."""
    rolls = generate_rollouts(
        model, tokenizer, prompts, 1, temperature=0.0, max_new_tokens=max_new_tokens, seed=0
    )
    return [g[0].completion for g in rolls]
