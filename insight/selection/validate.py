"""Input checks shared by the selection core: one place that turns bad numbers into one
clear ValueError naming the offending prompts (or positions), so that the MI kernels,
the posterior and the file readers never see NaN, non-positive or mismatched input and
never have to repeat the checks.
"""

from __future__ import annotations

import math

import numpy as np

MI_MIN_PARAM = 1e-8   # below, relative error of I_k grows past ~1e-7 (tests/test_acquisition.py)
MI_MAX_PARAM = 1e15


def describe(mask: np.ndarray, prompt_ids=None, limit: int = 10) -> str:
    """'prompt ids ['a', 'b'] (2 entries)' or 'indices [3, 7] (2 entries)': the offenders
    of ``mask``, named by prompt id when the ids are known."""
    idx = np.flatnonzero(np.asarray(mask).ravel())
    shown = idx[:limit]
    if prompt_ids is not None:
        ids = np.asarray(prompt_ids, dtype=object).ravel()
        names = [str(ids[i]) for i in shown]
        what = "prompt ids"
    else:
        names = [int(i) for i in shown]
        what = "indices"
    more = f", first {limit} shown" if len(idx) > limit else ""
    return f"{what} {names} ({len(idx)} entries{more})"


def as_float_array(x, field: str, prompt_ids=None) -> np.ndarray:
    """float64 array of ``x``; ValueError naming ``field`` if not numeric or not finite."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{field}: not numeric ({err})") from None
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{field} must be finite (no NaN/inf); offending "
                         f"{describe(bad, _ids_for(prompt_ids, arr))}")
    return arr


def _ids_for(prompt_ids, arr):
    """The ids, when they line up with ``arr`` (else positions name the offenders)."""
    if prompt_ids is None:
        return None
    ids = np.asarray(prompt_ids, dtype=object).ravel()
    return ids if ids.shape[0] == np.asarray(arr).size else None


def check_lengths(prompt_ids=None, **fields) -> int:
    """All non-scalar ``fields`` (and ``prompt_ids``) must have the same length; returns it."""
    sizes = {name: np.shape(v)[0] for name, v in fields.items() if np.ndim(v) > 0}
    if prompt_ids is not None:
        sizes = {"prompt_ids": len(prompt_ids), **sizes}
    for name, v in fields.items():
        if np.ndim(v) > 1:
            raise ValueError(f"{name} must be one-dimensional, got shape {np.shape(v)}")
    if len(set(sizes.values())) > 1:
        desc = ", ".join(f"{k} has {v}" for k, v in sizes.items())
        raise ValueError(f"mismatched lengths: {desc}")
    return next(iter(sizes.values())) if sizes else 1


def validate_alpha_beta(alpha, beta, prompt_ids=None) -> tuple[np.ndarray, np.ndarray]:
    """float64 alpha, beta (same length, finite, > 0) or ValueError naming the offenders."""
    check_lengths(prompt_ids, alpha=alpha, beta=beta)
    out = []
    for name, x in (("alpha", alpha), ("beta", beta)):
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name}: not numeric ({err})") from None
        # fast path: two reductions (NaN propagates through min and fails the test)
        if arr.size and not (arr.min() > 0 and arr.max() < np.inf):
            as_float_array(arr, name, prompt_ids)     # names NaN/inf offenders
            bad = arr <= 0
            raise ValueError(f"{name} must be > 0; offending "
                             f"{describe(bad, _ids_for(prompt_ids, arr))}")
        out.append(arr)
    return out[0], out[1]


def check_supported_range(a: np.ndarray, b: np.ndarray, prompt_ids=None) -> None:
    """The MI kernels are validated for a, b in [MI_MIN_PARAM, MI_MAX_PARAM]."""
    for name, arr in (("alpha", a), ("beta", b)):
        if arr.size and not (arr.min() >= MI_MIN_PARAM and arr.max() <= MI_MAX_PARAM):
            bad = (arr < MI_MIN_PARAM) | (arr > MI_MAX_PARAM)
            raise ValueError(f"{name} outside the range [{MI_MIN_PARAM:g}, {MI_MAX_PARAM:g}] "
                             f"where I_k is computed accurately; offending "
                             f"{describe(bad, _ids_for(prompt_ids, arr))}")


# Rollouts per prompt. RLVR group sizes are 4..64 and the MI is tested exact to k = 2000;
# its cost is linear in k (numpy: ~0.6 s per 1000 prompts and five k x 8192 float64
# tables, 1.3 GB, at k = 4096), so a larger k is a typo that would run for minutes or
# exhaust memory.
MAX_K = 4096


def validate_k(k, size: int | None = None, prompt_ids=None) -> int | np.ndarray:
    """k as a Python int (scalar) or an int64 array (per prompt): integral, 1..MAX_K."""
    if np.ndim(k) == 0:
        try:
            kf = float(k)
        except (TypeError, ValueError):
            raise ValueError(f"k must be an integer >= 1, got {k!r}") from None
        if not math.isfinite(kf) or kf != int(kf) or kf < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        if kf > MAX_K:
            raise ValueError(f"k = {k!r} rollouts per prompt is above the limit of {MAX_K}")
        return int(kf)
    karr = np.asarray(k)
    if karr.ndim != 1:
        raise ValueError(f"k must be a scalar or a one-dimensional array, got shape {karr.shape}")
    if size is not None and karr.shape[0] != size:
        raise ValueError(f"mismatched lengths: k has {karr.shape[0]}, alpha/beta have {size}")
    kf = as_float_array(karr, "k", prompt_ids)
    bad = (kf < 1) | (kf != np.floor(kf))
    if bad.any():
        raise ValueError(f"k must be an integer >= 1; offending {describe(bad, prompt_ids)}")
    big = kf > MAX_K
    if big.any():
        raise ValueError(f"k is above the limit of {MAX_K} rollouts per prompt; "
                         f"offending {describe(big, prompt_ids)}")
    return kf.astype(np.int64)
