"""Optional LoRA training through peft (`train.lora`).

Why this shape: the trainer holds the frozen base weights plus a small adapter, and only
the adapter's parameters reach the optimizer (Adam state of the adapter, not of the
model). Everything that reads a checkpoint (rollout, evaluation, vLLM) wants a plain
Hugging Face model, so each checkpoint holds the MERGED weights at its root and the
adapter itself under `adapter/`; a resume loads the run's base policy and that adapter,
which is exactly the model the live trainer held (merged weights would add the adapter
twice). peft is an optional extra (`pip install insight[lora]`), imported only here and
only when `train.lora` is set.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

ADAPTER_DIR = "adapter"  # inside a round checkpoint: the adapter of a LoRA run


def _peft():
    try:
        import peft
    except ImportError as e:  # one clear line for the user (flows/cli.py prints it)
        raise ValueError("train.lora needs peft: pip install 'insight[lora]'") from e
    return peft


def is_lora(model) -> bool:
    """Whether `model` is a peft-wrapped model (without importing peft)."""
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def wrap(model, *, r: int, alpha: float, target_modules: list[str], seed: int):
    """A fresh LoRA adapter on `model` (its own weights frozen). peft initialises A from
    torch's global RNG; it is drawn under `seed` in a forked RNG, so the adapter is the
    same on every run and the caller's RNG is left alone."""
    peft = _peft()
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=list(target_modules),
                             lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    devices = [model.device] if getattr(model, "device", None) and model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return peft.get_peft_model(model, config)


def has_adapter(checkpoint) -> bool:
    return (Path(checkpoint) / ADAPTER_DIR / "adapter_config.json").is_file()


def load_adapter(base_model, checkpoint):
    """`base_model` with the trainable adapter saved in `checkpoint`."""
    peft = _peft()
    return peft.PeftModel.from_pretrained(base_model, str(Path(checkpoint) / ADAPTER_DIR),
                                          is_trainable=True)


def merged_copy(model):
    """A plain HF model with the adapter merged in, leaving `model` untouched (merging
    in place and unmerging would not give back the same float weights). Costs one more
    copy of the weights while the checkpoint is written."""
    return copy.deepcopy(model).merge_and_unload()


def save(model, tokenizer, path) -> Path:
    """Merged weights (safetensors) + tokenizer at `path`, the adapter under `adapter/`."""
    from insight.policy.model import save_policy

    p = save_policy(merged_copy(model), tokenizer, path)
    model.save_pretrained(str(p / ADAPTER_DIR), safe_serialization=True)
    return p
