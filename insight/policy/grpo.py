"""GRPO: group-relative advantages, the clipped token-level policy loss, and the policy
update with micro-batching, plus trainer state (policy + Adam state) in directories.

Conventions
- A batch holds N sequences = prompt token ids + completion token ids (the ids the
  rollout engine sampled, EOS included when produced) and one advantage per sequence.
- Token-level normalization (DAPO): the loss of one optimizer step is the sum of the
  per-token losses over every completion token of the step's (mini-)batch divided by the
  number of those tokens. Micro-batches divide by the *mini-batch* token count, so
  gradient accumulation over micro-batches gives the full-batch gradient.
- Old log-probs are recomputed by the trainer before the first epoch (the rollout
  engine's own numbers are not used), so on-policy ratios start at exactly 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.utils.checkpoint

from insight.policy.precision import Precision, autocast

# --------------------------------------------------------------------------- advantages


def group_advantages(
    rewards: torch.Tensor, *, normalize_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Group-relative advantages for rewards [G, k] (G prompts, k rollouts each).

    A = r - mean_group(r), divided by (std_group(r) + eps) when normalize_std (GRPO;
    std is the sample std with Bessel's correction, as in TRL and verl). normalize_std=False
    gives Dr. GRPO's unscaled form. A group whose rewards are all equal gets zeros, and
    so does any group with k = 1 (no baseline from a single rollout).
    """
    r = torch.as_tensor(rewards, dtype=torch.float32)
    if r.dim() != 2:
        raise ValueError(f"rewards must be [G, k], got shape {tuple(r.shape)}")
    if r.shape[1] < 2:
        return torch.zeros_like(r)
    centered = r - r.mean(dim=1, keepdim=True)
    if not normalize_std:
        return centered
    std = r.std(dim=1, keepdim=True, unbiased=True)
    # a group without spread has centered == 0: keep it 0 even when eps == 0
    return torch.where(std > 0, centered / (std + eps), torch.zeros_like(centered))


def zero_advantage_share(rewards: torch.Tensor) -> float:
    """Share of groups whose k rewards are all equal (no learning signal)."""
    r = torch.as_tensor(rewards, dtype=torch.float32)
    if r.numel() == 0:
        return 0.0
    same = (r.max(dim=1).values - r.min(dim=1).values) == 0
    return float(same.float().mean())


# --------------------------------------------------------------------------- loss


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """PPO-clipped GRPO loss with token-level normalization.

    logprobs, old_logprobs, mask: [N, T] (mask 1 on completion tokens); advantages [N]
    (one per sequence, broadcast over its tokens) or [N, T].

        ratio = exp(logprobs - old_logprobs)
        pg_t  = -min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps_high) * A)
        kl_t  = exp(ref - logprobs) - (ref - logprobs) - 1      (k3 estimator, >= 0)
        loss  = sum_t mask * (pg_t + kl_coef * kl_t) / normalizer

    normalizer defaults to mask.sum() (all valid tokens of this batch); pass the token
    count of the whole mini-batch when this call sees one micro-batch of it.
    clip_eps_high defaults to clip_eps (DAPO's clip-higher uses a larger value).
    Returns (loss, stats) with stats of python floats: pg_loss, kl, clip_frac,
    ratio_mean, n_tokens (all token-averaged over this call's tokens).
    """
    if clip_eps_high is None:
        clip_eps_high = clip_eps
    mask = mask.to(logprobs.dtype)
    adv = advantages.to(logprobs.dtype)
    if adv.dim() == 1:
        adv = adv[:, None]
    n_tok = mask.sum()
    norm = n_tok if normalizer is None else torch.as_tensor(normalizer, dtype=logprobs.dtype)
    norm = torch.clamp(norm, min=1.0)
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -ratio * adv
    clipped = -torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps_high) * adv
    pg = torch.maximum(unclipped, clipped)
    per_tok = pg
    kl = None
    if ref_logprobs is not None and kl_coef != 0.0:
        d = (ref_logprobs - logprobs) * mask
        kl = torch.exp(d) - d - 1.0
        per_tok = per_tok + kl_coef * kl
    loss = (per_tok * mask).sum() / norm
    with torch.no_grad():
        denom = float(torch.clamp(n_tok, min=1.0))
        stats = {
            "pg_loss": float((pg * mask).sum()) / denom,
            "kl": float((kl * mask).sum()) / denom if kl is not None else 0.0,
            "clip_frac": float(((clipped > unclipped).to(mask.dtype) * mask).sum()) / denom,
            "ratio_mean": float((ratio * mask).sum()) / denom,
            "n_tokens": float(n_tok),
        }
    return loss, stats


# --------------------------------------------------------------------------- batches


@dataclass
class PolicyBatch:
    """What a policy update needs: N sequences and one advantage each."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    advantages: list[float]
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.prompt_ids)
        if len(self.completion_ids) != n or len(self.advantages) != n:
            raise ValueError(
                f"PolicyBatch fields differ in length: prompt_ids={n}, "
                f"completion_ids={len(self.completion_ids)}, advantages={len(self.advantages)}"
            )

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def n_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)

    def subset(self, idx: Sequence[int]) -> "PolicyBatch":
        return PolicyBatch(
            [self.prompt_ids[i] for i in idx],
            [self.completion_ids[i] for i in idx],
            [self.advantages[i] for i in idx],
        )


def make_policy_batch(
    tokenizer,
    prompts: Sequence[str],
    completion_ids: Sequence[Sequence[Sequence[int]]],
    rewards,
    *,
    normalize_std: bool = True,
) -> PolicyBatch:
    """Batch from G prompts, their k sampled id lists each ([G][k] nested lists) and
    rewards [G, k]; advantages by `group_advantages`."""
    r = torch.as_tensor(rewards, dtype=torch.float32)
    adv = group_advantages(r, normalize_std=normalize_std)
    enc = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    p_ids, c_ids, a = [], [], []
    for g, (pid, group) in enumerate(zip(enc, completion_ids)):
        if len(group) != r.shape[1]:
            raise ValueError(f"prompt {g}: {len(group)} completions but rewards have k={r.shape[1]}")
        for j, ids in enumerate(group):
            p_ids.append(list(pid))
            c_ids.append(list(ids))
            a.append(float(adv[g, j]))
    return PolicyBatch(p_ids, c_ids, a)


def _collate(batch: PolicyBatch, pad_id: int, device) -> dict:
    """Left-pad prompts and right-pad completions so that every completion starts at the
    same column P: [pad.. prompt | completion ..pad]. Position ids count real tokens
    only, as at generation time."""
    n = len(batch)
    P = max(len(p) for p in batch.prompt_ids)
    C = max(1, max(len(c) for c in batch.completion_ids))
    ids = torch.full((n, P + C), pad_id, dtype=torch.long)
    attn = torch.zeros((n, P + C), dtype=torch.long)
    cmask = torch.zeros((n, C), dtype=torch.float32)
    for i, (p, c) in enumerate(zip(batch.prompt_ids, batch.completion_ids)):
        ids[i, P - len(p) : P] = torch.tensor(p, dtype=torch.long)
        attn[i, P - len(p) : P] = 1
        if c:
            ids[i, P : P + len(c)] = torch.tensor(c, dtype=torch.long)
            attn[i, P : P + len(c)] = 1
            cmask[i, : len(c)] = 1.0
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return {
        "input_ids": ids.to(device),
        "attention_mask": attn.to(device),
        "position_ids": pos.to(device),
        "completion_mask": cmask.to(device),
        "targets": ids[:, P:].to(device),
        "advantages": torch.tensor(batch.advantages, dtype=torch.float32, device=device),
        "prompt_len": P,
    }


# Elements of one chunk of vocabulary logits (fp32: 4 bytes each, so 256 MiB): rows of
# completion hidden states go through the LM head this many at a time. At Qwen's 152k
# vocabulary that is about 440 tokens per chunk; at the tiny model's 60 it is everything.
LOGIT_CHUNK_ELEMENTS = 1 << 26


def completion_logprobs(model, coll: dict, *, chunk_elements: int = LOGIT_CHUNK_ELEMENTS) -> torch.Tensor:
    """Log-probs [N, C] of the completion tokens under `model` (graph kept if grad on);
    0 at padding.

    Why not `model(...).logits`: that is a [N, sequence, vocab] tensor, tens of GiB in
    fp32 at a real vocabulary. Here the decoder returns hidden states, only the positions
    that predict a real completion token are kept, and they go through the LM head in
    chunks of `chunk_elements` logits. With gradients on and more than one chunk, each
    chunk is checkpointed (its logits are recomputed in the backward pass), so the saved
    activations hold hidden states, never a vocabulary-sized tensor per token.
    """
    P = coll["prompt_len"]
    if P < 1:
        raise ValueError("every sequence needs at least one prompt token to predict its completion from")
    mask = coll["completion_mask"].bool()
    C = mask.shape[1]
    hidden = _final_hidden_states(model, coll)[:, P - 1 : P + C - 1, :]  # predicts token t at t-1
    rows, targets = hidden[mask], coll["targets"][mask]  # [M, H], [M]: real tokens only
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    per_chunk = max(1, chunk_elements // max(1, head.weight.shape[0]))
    spans = [(s, min(s + per_chunk, rows.shape[0])) for s in range(0, rows.shape[0], per_chunk)]
    recompute = torch.is_grad_enabled() and len(spans) > 1
    pieces = []
    for s, e in spans:
        if recompute:
            pieces.append(torch.utils.checkpoint.checkpoint(
                _token_logprobs, head, rows[s:e], targets[s:e], softcap, use_reentrant=False))
        else:
            pieces.append(_token_logprobs(head, rows[s:e], targets[s:e], softcap))
    out = torch.zeros(mask.shape, dtype=torch.float32, device=rows.device)
    if pieces:
        out = out.index_put((mask,), torch.cat(pieces))
    return out


def _final_hidden_states(model, coll: dict) -> torch.Tensor:
    """Last hidden states [N, L, H] of the decoder under the LM head (no logits)."""
    decoder = model.get_decoder()
    out = decoder(input_ids=coll["input_ids"], attention_mask=coll["attention_mask"],
                  position_ids=coll["position_ids"], use_cache=False)
    return out.last_hidden_state


def _token_logprobs(head, rows: torch.Tensor, targets: torch.Tensor, softcap) -> torch.Tensor:
    """log p(target) for each row of hidden states: one chunk of logits, in fp32."""
    logits = head(rows).float()
    if softcap:  # Gemma-style final logit soft-capping, as the model's own forward does
        logits = torch.tanh(logits / softcap) * softcap
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _pad_id(model) -> int:
    pid = getattr(model.config, "pad_token_id", None)
    if pid is None:
        eos = getattr(model.config, "eos_token_id", None)
        pid = eos[0] if isinstance(eos, (list, tuple)) else eos
    return int(pid if pid is not None else 0)


def _chunks(idx: list[int], size: int | None) -> list[list[int]]:
    if not size or size <= 0:
        return [idx]
    return [idx[i : i + size] for i in range(0, len(idx), size)]


def micro_batches(batch: PolicyBatch, idx: list[int], *, micro_batch_size: int | None,
                  max_tokens: int | None = None) -> list[list[int]]:
    """Split the sequences `idx` (in order) into micro-batches.

    Without `max_tokens`: `micro_batch_size` sequences each. With it: as many consecutive
    sequences as fit in `max_tokens` padded tokens, counted as `_collate` lays them out
    (sequences x (longest prompt + longest completion)), so the forward pass's memory is
    bounded whatever the lengths; `micro_batch_size` is then not used. A sequence longer
    than the budget on its own gets a micro-batch of its own (it cannot be split).
    """
    if max_tokens is None:
        return _chunks(idx, micro_batch_size)
    out: list[list[int]] = []
    cur: list[int] = []
    p_max = c_max = 0
    for i in idx:
        p = max(p_max, len(batch.prompt_ids[i]))
        c = max(c_max, len(batch.completion_ids[i]), 1)
        if cur and (len(cur) + 1) * (p + c) > max_tokens:
            out.append(cur)
            cur, p, c = [], len(batch.prompt_ids[i]), max(1, len(batch.completion_ids[i]))
        cur.append(i)
        p_max, c_max = p, c
    if cur:
        out.append(cur)
    return out


# --------------------------------------------------------------------------- update


def policy_update(
    model,
    optimizer: torch.optim.Optimizer,
    batch: PolicyBatch,
    *,
    ref_model=None,
    micro_batch_size: int = 64,
    mini_batch_size: int | None = None,
    epochs: int = 1,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    kl_coef: float = 0.0,
    max_grad_norm: float | None = 1.0,
    skip_zero_advantage: bool = True,
    shuffle_seed: int | None = None,
    max_tokens_per_micro_batch: int | None = None,
    precision: Precision = "fp32",
) -> dict:
    """GRPO update of `model` in place on `batch`; returns stats (python floats).

    Each epoch splits the batch into mini-batches of `mini_batch_size` sequences (None:
    the whole batch, one optimizer step per epoch), each mini-batch into micro-batches
    of `micro_batch_size` whose gradients accumulate; the loss is normalized by the
    mini-batch token count, so the accumulated gradient equals the full mini-batch
    gradient. With `skip_zero_advantage` (and no KL term) sequences with advantage 0 are
    not forwarded (their gradient is exactly zero) but still count in the normalizer.
    `max_tokens_per_micro_batch` sizes micro-batches by padded tokens instead
    (`micro_batches`). `precision` "bf16-mixed" runs every forward pass under bf16
    autocast (the model's weights are whatever `precision.prepare_for_training` made
    them). Runs on the model's device (CUDA when the model is there).
    """
    if len(batch) == 0:
        return {"steps": 0.0, "n_sequences": 0.0, "n_tokens": 0.0}
    device = _model_device(model)
    pad_id = _pad_id(model)
    use_kl = ref_model is not None and kl_coef != 0.0
    skip = skip_zero_advantage and not use_kl
    gen = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None

    def split(idx: list[int]) -> list[list[int]]:
        return micro_batches(batch, idx, micro_batch_size=micro_batch_size,
                             max_tokens=max_tokens_per_micro_batch)

    def logprobs(m, coll):
        with autocast(precision, device):
            return completion_logprobs(m, coll)

    # Fixed micro-batch layout for old/ref log-probs (computed once, before any step).
    all_idx = list(range(len(batch)))
    old_lp: dict[int, torch.Tensor] = {}
    ref_lp: dict[int, torch.Tensor] = {}
    model.eval()
    with torch.no_grad():
        for mb in split(all_idx):
            sub = batch.subset(mb)
            coll = _collate(sub, pad_id, device)
            lp = logprobs(model, coll)
            rlp = logprobs(ref_model, coll) if use_kl else None
            for j, i in enumerate(mb):
                n = len(batch.completion_ids[i])
                old_lp[i] = lp[j, :n].detach()
                if rlp is not None:
                    ref_lp[i] = rlp[j, :n].detach()
    model.train()

    totals: dict[str, float] = {"pg_loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "ratio_mean": 0.0}
    tok_seen = 0.0
    grad_norms: list[float] = []
    steps = 0
    forwarded = 0
    for _ in range(epochs):
        order = all_idx
        if gen is not None:
            order = torch.randperm(len(batch), generator=gen).tolist()
        for mini in _chunks(order, mini_batch_size):
            n_norm = sum(len(batch.completion_ids[i]) for i in mini)
            if n_norm == 0:
                continue
            work = [i for i in mini if not (skip and batch.advantages[i] == 0.0)]
            work = [i for i in work if len(batch.completion_ids[i]) > 0]
            optimizer.zero_grad(set_to_none=True)
            if not work:
                continue  # nothing carries gradient: no step (Adam state untouched)
            for mb in split(work):
                sub = batch.subset(mb)
                coll = _collate(sub, pad_id, device)
                C = coll["targets"].shape[1]
                old = torch.zeros((len(mb), C), device=device)
                ref = torch.zeros((len(mb), C), device=device) if use_kl else None
                for j, i in enumerate(mb):
                    n = len(batch.completion_ids[i])
                    old[j, :n] = old_lp[i]
                    if use_kl:
                        ref[j, :n] = ref_lp[i]
                lp = logprobs(model, coll)
                loss, st = grpo_loss(
                    lp,
                    old,
                    coll["advantages"],
                    coll["completion_mask"],
                    clip_eps=clip_eps,
                    clip_eps_high=clip_eps_high,
                    ref_logprobs=ref,
                    kl_coef=kl_coef if use_kl else 0.0,
                    normalizer=float(n_norm),
                )
                loss.backward()
                forwarded += len(mb)
                for key in totals:
                    totals[key] += st[key] * st["n_tokens"]
                tok_seen += st["n_tokens"]
            if max_grad_norm is not None and max_grad_norm > 0:
                gn = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            else:
                gn = torch.sqrt(
                    sum((p.grad.detach().float() ** 2).sum() for p in model.parameters() if p.grad is not None)
                )
            grad_norms.append(float(gn))
            optimizer.step()
            steps += 1
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    denom = max(tok_seen, 1.0)
    out = {k: v / denom for k, v in totals.items()}
    out.update(
        steps=float(steps),
        grad_norm=float(sum(grad_norms) / len(grad_norms)) if grad_norms else 0.0,
        n_sequences=float(len(batch)),
        n_tokens=float(batch.n_tokens()),
        forwarded_sequences=float(forwarded),
    )
    return out


# --------------------------------------------------------------------------- state


OPTIMIZER_FILE = "optimizer.pt"
TRAINER_STATE_FILE = "trainer_state.json"


def make_optimizer(model, lr: float, *, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
    """AdamW over all trainable parameters (weight_decay 0 = plain Adam)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def save_trainer_state(path, model, tokenizer, optimizer=None, *, extra: dict | None = None) -> Path:
    """Policy (save_pretrained) + optimizer state + a small JSON, in directory `path`.
    A LoRA model is saved merged (a plain HF checkpoint) with its adapter beside it."""
    from insight.policy import lora
    from insight.policy.model import save_policy

    p = lora.save(model, tokenizer, path) if lora.is_lora(model) else save_policy(model, tokenizer, path)
    state = dict(extra or {})
    if optimizer is not None:
        torch.save(optimizer.state_dict(), p / OPTIMIZER_FILE)
        state.setdefault("optimizer_steps", _optimizer_steps(optimizer))
    (p / TRAINER_STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))
    return p


def save_optimizer_state(path, optimizer, *, extra: dict | None = None) -> None:
    """Add the optimizer state (and the JSON that describes it) to an existing
    checkpoint directory, each file written aside and renamed, so a reader sees the old
    file or the new one, never half of one."""
    import os

    p = Path(path)
    tmp = p / (OPTIMIZER_FILE + ".tmp")
    torch.save(optimizer.state_dict(), tmp)
    os.replace(tmp, p / OPTIMIZER_FILE)
    state = {**read_trainer_state(p), **(extra or {}),
             "optimizer_steps": _optimizer_steps(optimizer)}
    tmp = p / (TRAINER_STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, p / TRAINER_STATE_FILE)


def _optimizer_steps(optimizer) -> int:
    for st in optimizer.state.values():
        s = st.get("step")
        if s is not None:
            return int(s)
    return 0


def has_optimizer_state(path) -> bool:
    """Whether directory `path` holds a full optimizer state (not only policy weights)."""
    return (Path(path) / OPTIMIZER_FILE).is_file()


def load_trainer_state(
    path,
    lr: float,
    *,
    device: str = "cpu",
    betas=(0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    optimizer_from=None,
    precision: Precision = "fp32",
    gradient_checkpointing: bool = False,
    lora_options=None,
    lora_base=None,
    lora_seed: int = 0,
):
    """(model [train mode], tokenizer, optimizer) from a directory written by
    `save_trainer_state` or any policy directory (then the optimizer starts fresh).
    `lr` (and betas, eps, weight_decay) override what the saved state holds.

    `optimizer_from` is the directory whose optimizer state to load, when it is not
    `path` itself: a run that saves the optimizer only every few rounds continues from
    the newest weights with the newest saved optimizer state. Adam's moments are per
    parameter in parameter order, which the weights of a later round share.

    The weights are cast to `precision`'s weight dtype before the optimizer is built
    (fp32 master weights under fp32 and bf16-mixed, even from a bf16 checkpoint), and
    a saved optimizer state is cast to it on load.

    With `lora_options` (r, alpha, target_modules) the model is LoRA-wrapped and the
    optimizer holds only the adapter: a checkpoint that has an adapter continues it on
    the base weights in `lora_base` (the run's policy(0)); one without starts a fresh
    adapter, drawn under `lora_seed`, on its own weights."""
    from insight.policy import lora
    from insight.policy.model import load_policy
    from insight.policy.precision import prepare_for_training

    resume_adapter = lora_options is not None and lora.has_adapter(path)
    model, tok = load_policy(lora_base if resume_adapter else path, device=device)
    prepare_for_training(model, precision)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if resume_adapter:
        model = lora.load_adapter(model, path)
    elif lora_options is not None:
        model = lora.wrap(model, r=lora_options.r, alpha=lora_options.alpha,
                          target_modules=lora_options.target_modules, seed=lora_seed)
    model.train()
    opt = make_optimizer(model, lr, betas=betas, eps=eps, weight_decay=weight_decay)
    state_dir = Path(path if optimizer_from is None else optimizer_from)
    if has_optimizer_state(state_dir):
        sd = torch.load(state_dir / OPTIMIZER_FILE, map_location=_model_device(model),
                        weights_only=True)
        opt.load_state_dict(sd)
    set_hyperparameters(opt, lr, betas=betas, eps=eps, weight_decay=weight_decay)
    return model, tok, opt


def set_hyperparameters(optimizer, lr: float, *, betas=(0.9, 0.999), eps: float = 1e-8,
                        weight_decay: float = 0.0) -> None:
    """The config's hyperparameters win over those a saved or kept-alive state holds."""
    for g in optimizer.param_groups:
        g.update(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def enable_gradient_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of
    keeping them: activation memory of one layer instead of all, for about one more
    forward pass of compute. Non-reentrant checkpointing, so it needs no input that
    requires grad and gives the same gradients. Active in train mode only."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"{type(model).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the name in transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def read_trainer_state(path) -> dict:
    f = Path(path) / TRAINER_STATE_FILE
    return json.loads(f.read_text()) if f.is_file() else {}
