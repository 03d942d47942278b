"""Prompt features under the current policy: the mean-pooled last hidden states of each
prompt, for the feature prior (insight/selection/feature_prior.py).

Why the policy's own hidden states: they are what the policy "knows" about a prompt at
this point of training, so prompts close in that space tend to succeed or fail together
under this policy. One forward pass per prompt (no sampling), batched, is cheap next to
k sampled completions; the select stage caches the result per checkpoint.
"""

from __future__ import annotations

import numpy as np


def prompt_embeddings(model, tokenizer, texts: list[str], *, batch_size: int = 32,
                      max_tokens: int | None = None) -> np.ndarray:
    """(len(texts), hidden) float64: the mean over each prompt's tokens of the model's
    last hidden layer. Deterministic (eval mode, no sampling); padding is masked out."""
    import torch

    if isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    try:
        with torch.no_grad():
            for lo in range(0, len(texts), batch_size):
                ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens]
                       or [0] for t in texts[lo:lo + batch_size]]
                width = max(len(x) for x in ids)
                tok = torch.zeros((len(ids), width), dtype=torch.long)
                mask = torch.zeros((len(ids), width), dtype=torch.long)
                for i, x in enumerate(ids):
                    tok[i, :len(x)] = torch.tensor(x)
                    mask[i, :len(x)] = 1
                hidden = model(input_ids=tok.to(device), attention_mask=mask.to(device),
                               output_hidden_states=True).hidden_states[-1]
                m = mask.to(device).unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(dim=1) / m.sum(dim=1)
                out.append(pooled.float().cpu().numpy().astype(np.float64))
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, 0))
    return np.concatenate(out, axis=0)
