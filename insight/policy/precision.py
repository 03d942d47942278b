"""Training precision: which dtype the trainer's weights live in, and which dtype the
forward pass computes in.

Why three modes:
- `fp32`: weights, optimizer state and compute in float32. The CPU default: exact and
  reproducible, and a CPU gains little from bf16.
- `bf16-mixed`: float32 master weights and Adam state, forward and backward under
  bf16 autocast. A bf16 checkpoint is upcast on load, so an update smaller than bf16's
  resolution (about 3 significant digits: lr 1e-6 on a weight of 0.01) still moves the
  weight. The CUDA default. Checkpoints keep the float32 master weights (twice the bytes
  of bf16) so the next round continues from them, not from a rounded copy.
- `bf16`: weights, Adam state and compute all in bfloat16. Half the memory of the master
  copy, but most elements of an update at a small learning rate round back to the old
  value (a weight w moves only when |update| > about |w| / 256): use it knowingly.

"auto" resolves to bf16-mixed on CUDA and fp32 elsewhere.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

Precision = Literal["fp32", "bf16-mixed", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16-mixed", "bf16")


def resolve_precision(precision: str, device: torch.device | str) -> Precision:
    """The concrete mode of `precision` ("auto" or one of PRECISIONS) on `device`."""
    if precision == "auto":
        return "bf16-mixed" if torch.device(device).type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be auto or one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision  # type: ignore[return-value]


def weight_dtype(precision: Precision) -> torch.dtype:
    """dtype of the trainer's weights (and so of Adam's state) under `precision`."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def reference_dtype(precision: Precision) -> torch.dtype:
    """dtype of the frozen reference model (KL term): it takes no update, so under
    bf16-mixed its weights can be stored in bf16 (autocast computes in bf16 anyway)."""
    return torch.float32 if precision == "fp32" else torch.bfloat16


def prepare_for_training(model, precision: Precision):
    """Cast `model` in place to the weight dtype of `precision`; returns it.

    Called before the optimizer is built, so the optimizer's state takes the same dtype."""
    dtype = weight_dtype(precision)
    if any(p.dtype != dtype for p in model.parameters() if p.is_floating_point()):
        model.to(dtype)
    return model


def autocast(precision: Precision, device: torch.device | str):
    """Context manager of the forward pass: bf16 autocast under bf16-mixed (CPU and
    CUDA both support it), nothing otherwise."""
    if precision == "bf16-mixed":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
