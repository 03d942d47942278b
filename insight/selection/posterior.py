"""Posterior state: one Beta(alpha, beta) belief per prompt, held as aligned arrays.

The conjugate update with forgetting (DESIGN §2):

    a <- lam * a + (1 - lam) * a0 + s
    b <- lam * b + (1 - lam) * b0 + (k - s)

``s`` may be fractional (rewards in [0, 1] counted fractionally) and ``k`` may differ per
prompt. With ``lam = 1`` all evidence is kept; with ``lam < 1`` old evidence decays toward
the prior (a0, b0). Which prompts decay is a choice: ``decay="observed"`` (the default,
MoPPS's choice: only the prompts observed this round are decayed and updated; the others
keep their belief) or ``decay="all"`` (every prompt decays each round; unobserved ones
drift toward the prior).

MoPPS (DESIGN §7) writes the same rule with the group success *rate* s_rate = s / k:
``a <- lam a + (1 - lam) a0 + k s_rate``; ``mopps_update`` is that form, and it equals
``update`` with successes = k * s_rate (tested).

Everything here is pure: ``update`` returns new arrays and ``PosteriorState.observe``
returns a new state. Bad input (NaN, alpha/beta <= 0, successes outside [0, trials],
negative trials, mismatched lengths, duplicate or unknown prompt ids) raises ValueError
naming the offending ids or fields; nothing is clipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from insight.selection.validate import (as_float_array, check_lengths, describe,
                                        validate_alpha_beta)

DECAY_MODES = ("observed", "all")
_META_A0 = b"insight.prior_a0"
_META_B0 = b"insight.prior_b0"


def _check_prior(lam: float, a0: float, b0: float) -> None:
    if not (isinstance(lam, (int, float)) and 0.0 <= lam <= 1.0):
        raise ValueError(f"lam must be a number in [0, 1], got {lam!r}")
    for name, v in (("a0", a0), ("b0", b0)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")


def validate_outcomes(successes, trials, prompt_ids=None) -> tuple[np.ndarray, np.ndarray]:
    """float64 successes and trials with 0 <= successes <= trials, trials >= 0, finite."""
    check_lengths(prompt_ids, successes=successes, trials=trials)
    s = as_float_array(successes, "successes", prompt_ids)
    t = as_float_array(trials, "trials", prompt_ids)
    s, t = np.broadcast_arrays(np.atleast_1d(s), np.atleast_1d(t))
    ids = prompt_ids if prompt_ids is not None and len(prompt_ids) == s.size else None
    bad = t < 0
    if bad.any():
        raise ValueError(f"trials must be >= 0; offending {describe(bad, ids)}")
    bad = (s < 0) | (s > t)
    if bad.any():
        raise ValueError(f"successes must lie in [0, trials]; offending {describe(bad, ids)}")
    return s.astype(np.float64, copy=True), t.astype(np.float64, copy=True)


def update(alpha, beta, successes, trials, *, lam: float = 1.0, a0: float = 1.0,
           b0: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Conjugate Beta update with forgetting, applied to every entry given.

    alpha' = lam * alpha + (1 - lam) * a0 + successes
    beta'  = lam * beta  + (1 - lam) * b0 + (trials - successes)

    ``successes`` may be fractional; ``trials`` may differ per entry (scalars broadcast).
    Returns new float64 arrays; the inputs are not modified.
    """
    _check_prior(lam, a0, b0)
    a, b = validate_alpha_beta(alpha, beta)
    check_lengths(alpha=a, successes=successes, trials=trials)
    s, t = validate_outcomes(successes, trials)
    a1 = lam * a + (1.0 - lam) * a0 + s
    b1 = lam * b + (1.0 - lam) * b0 + (t - s)
    return a1, b1


def mopps_update(alpha, beta, success_rate, k, *, lam: float = 1.0, a0: float = 1.0,
                 b0: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """MoPPS's published form (verl recipe/mopps): with the group success rate s in [0, 1],
    a <- lam a + (1 - lam) a0 + k s ;  b <- lam b + (1 - lam) b0 + k (1 - s)."""
    _check_prior(lam, a0, b0)
    a, b = validate_alpha_beta(alpha, beta)
    rate = as_float_array(success_rate, "success_rate")
    kk = as_float_array(k, "k")
    bad = (rate < 0) | (rate > 1)
    if bad.any():
        raise ValueError(f"success_rate must lie in [0, 1]; offending {describe(bad)}")
    return lam * a + (1.0 - lam) * a0 + kk * rate, lam * b + (1.0 - lam) * b0 + kk * (1.0 - rate)


def _as_ids(prompt_ids, field_name: str = "prompt_ids") -> np.ndarray:
    ids = np.asarray(list(prompt_ids) if not isinstance(prompt_ids, np.ndarray) else prompt_ids,
                     dtype=object)
    if ids.ndim != 1:
        raise ValueError(f"{field_name} must be one-dimensional, got shape {ids.shape}")
    bad = np.array([not isinstance(x, str) or x == "" for x in ids], dtype=bool)
    if bad.any():
        raise ValueError(f"{field_name} must be non-empty strings; offending "
                         f"{describe(bad)}: {[ids[i] for i in np.flatnonzero(bad)[:10]]}")
    return ids


def _check_unique(ids: np.ndarray, field_name: str = "prompt_ids") -> None:
    if len(ids) == 0:
        return
    uniq, counts = np.unique(ids.astype(str), return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise ValueError(f"duplicate {field_name}: {[str(d) for d in dup[:10]]} "
                         f"({len(dup)} duplicated ids)")


@dataclass(frozen=True, eq=False)
class PosteriorState:
    """Beta(alpha_i, beta_i) per prompt, arrays aligned with ``prompt_ids`` (unique str).

    ``a0``, ``b0`` record the prior the state was built with (default Beta(1, 1)); they are
    the defaults of ``observe`` and travel through ``to_arrow``/``save`` as metadata.
    Construction validates: duplicate ids, NaN or non-positive alpha/beta raise ValueError.
    """

    prompt_ids: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    a0: float = 1.0
    b0: float = 1.0
    _index: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        ids = _as_ids(self.prompt_ids)
        check_lengths(ids, alpha=self.alpha, beta=self.beta)
        a, b = validate_alpha_beta(np.atleast_1d(self.alpha), np.atleast_1d(self.beta), ids)
        _check_unique(ids)
        _check_prior(1.0, self.a0, self.b0)
        a, b = a.copy(), b.copy()
        a.flags.writeable = False
        b.flags.writeable = False
        ids.flags.writeable = False
        object.__setattr__(self, "prompt_ids", ids)
        object.__setattr__(self, "alpha", a)
        object.__setattr__(self, "beta", b)
        object.__setattr__(self, "a0", float(self.a0))
        object.__setattr__(self, "b0", float(self.b0))

    # -- construction ------------------------------------------------------------------
    @classmethod
    def _trusted(cls, prompt_ids, alpha, beta, a0, b0) -> "PosteriorState":
        """Internal: build from arrays already known to be valid (skips the O(n) checks)."""
        obj = object.__new__(cls)
        for name, arr in (("prompt_ids", prompt_ids), ("alpha", alpha), ("beta", beta)):
            arr = np.array(arr, dtype=object if name == "prompt_ids" else np.float64)
            arr.flags.writeable = False
            object.__setattr__(obj, name, arr)
        object.__setattr__(obj, "a0", float(a0))
        object.__setattr__(obj, "b0", float(b0))
        object.__setattr__(obj, "_index", None)
        return obj

    @classmethod
    def new(cls, prompt_ids, a0: float = 1.0, b0: float = 1.0) -> "PosteriorState":
        """Every prompt at the prior Beta(a0, b0)."""
        _check_prior(1.0, a0, b0)
        ids = _as_ids(prompt_ids)
        return cls(ids, np.full(len(ids), float(a0)), np.full(len(ids), float(b0)), a0, b0)

    # -- queries -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.prompt_ids)

    def mean(self) -> np.ndarray:
        """Posterior mean m = alpha / (alpha + beta)."""
        return self.alpha / (self.alpha + self.beta)

    def concentration(self) -> np.ndarray:
        """n = alpha + beta (prior pseudo-counts plus decayed evidence)."""
        return self.alpha + self.beta

    def evidence(self) -> tuple[np.ndarray, np.ndarray]:
        """(alpha - a0, beta - b0): the (decayed) success and failure counts above the prior.
        Exact for any lam as long as the state was always updated toward this (a0, b0)."""
        return self.alpha - self.a0, self.beta - self.b0

    def index_map(self) -> dict[str, int]:
        """{prompt_id: position} (built once per state, shared by its updates)."""
        if self._index is None:
            object.__setattr__(self, "_index",
                               {pid: i for i, pid in enumerate(self.prompt_ids.tolist())})
        return self._index

    def index_of(self, prompt_ids) -> np.ndarray:
        """Positions of ``prompt_ids`` in this state; ValueError naming unknown ids."""
        index = self.index_map()
        ids = _as_ids(prompt_ids)
        idx = np.fromiter((index.get(p, -1) for p in ids.tolist()), dtype=np.int64,
                          count=len(ids))
        if (idx < 0).any():
            unknown = ids[idx < 0]
            raise ValueError(f"unknown prompt ids (not in the posterior): "
                             f"{[str(u) for u in unknown[:10]]} "
                             f"({len(unknown)} entries)")
        return idx

    def subset(self, prompt_ids) -> "PosteriorState":
        idx = self.index_of(prompt_ids)
        return PosteriorState(self.prompt_ids[idx], self.alpha[idx], self.beta[idx],
                              self.a0, self.b0)

    def equals(self, other: "PosteriorState") -> bool:
        """Exact equality (ids, alpha, beta bitwise, prior)."""
        return (isinstance(other, PosteriorState)
                and np.array_equal(self.prompt_ids.astype(str), other.prompt_ids.astype(str))
                and np.array_equal(self.alpha, other.alpha)
                and np.array_equal(self.beta, other.beta)
                and self.a0 == other.a0 and self.b0 == other.b0)

    # -- update ------------------------------------------------------------------------
    def observe(self, prompt_ids, successes, trials, *, lam: float = 1.0,
                a0: float | None = None, b0: float | None = None,
                decay: Literal["observed", "all"] = "observed") -> "PosteriorState":
        """A new state after a round's outcomes (the conjugate update with forgetting).

        ``prompt_ids`` (unique, known), ``successes`` (integer or fractional, in
        [0, trials]) and ``trials`` (per prompt or a scalar) are aligned. ``a0``/``b0``
        default to this state's prior. ``decay="observed"`` decays and updates only the
        observed prompts (MoPPS); ``decay="all"`` decays every prompt toward the prior and
        adds the evidence of the observed ones.
        """
        a0 = self.a0 if a0 is None else a0
        b0 = self.b0 if b0 is None else b0
        _check_prior(lam, a0, b0)
        if decay not in DECAY_MODES:
            raise ValueError(f"decay must be one of {list(DECAY_MODES)}, got {decay!r}")
        ids = _as_ids(prompt_ids)
        check_lengths(ids, successes=successes, trials=trials)
        _check_unique(ids)
        s, t = validate_outcomes(successes, trials, ids)
        if s.size == 1 and len(ids) != 1:
            s, t = np.full(len(ids), s[0]), np.full(len(ids), t[0])
        idx = self.index_of(ids)
        alpha = self.alpha.copy()
        beta = self.beta.copy()
        if decay == "all":
            alpha = lam * alpha + (1.0 - lam) * a0
            beta = lam * beta + (1.0 - lam) * b0
            alpha[idx] += s
            beta[idx] += t - s
        else:
            alpha[idx], beta[idx] = update(alpha[idx], beta[idx], s, t, lam=lam, a0=a0, b0=b0)
        bad = ~np.isfinite(alpha) | ~np.isfinite(beta)
        if bad.any():  # only reachable through overflow of huge counts
            raise ValueError(f"update overflowed; offending {describe(bad, self.prompt_ids)}")
        state = PosteriorState._trusted(self.prompt_ids, alpha, beta, self.a0, self.b0)
        object.__setattr__(state, "_index", self._index)
        return state

    # -- persistence -------------------------------------------------------------------
    def to_arrow(self) -> pa.Table:
        """Columns prompt_id (string), alpha, beta (float64); the prior as schema metadata."""
        schema = pa.schema([("prompt_id", pa.string()), ("alpha", pa.float64()),
                            ("beta", pa.float64())],
                           metadata={_META_A0: repr(self.a0).encode(),
                                     _META_B0: repr(self.b0).encode()})
        return pa.table([pa.array(self.prompt_ids.tolist(), pa.string()),
                         pa.array(self.alpha, pa.float64()), pa.array(self.beta, pa.float64())],
                        schema=schema)

    @classmethod
    def from_arrow(cls, table: pa.Table, a0: float | None = None,
                   b0: float | None = None) -> "PosteriorState":
        """Inverse of ``to_arrow`` (any row order; extra columns ignored). The prior comes
        from ``a0``/``b0`` if given, else from the schema metadata, else Beta(1, 1)."""
        missing = [c for c in ("prompt_id", "alpha", "beta") if c not in table.column_names]
        if missing:
            raise ValueError(f"posterior table lacks column(s) {missing}; "
                             f"it has {table.column_names}")
        ids_col = table.column("prompt_id")
        if ids_col.null_count:
            raise ValueError(f"prompt_id has {ids_col.null_count} null entries")
        ids = np.asarray(ids_col.to_pylist(), dtype=object)
        cols = {}
        for name in ("alpha", "beta"):
            col = table.column(name)
            if col.null_count:
                bad = np.asarray(col.is_null().to_pylist(), dtype=bool)
                raise ValueError(f"{name} is null; offending {describe(bad, ids)}")
            cols[name] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
        meta = table.schema.metadata or {}
        if a0 is None:
            a0 = float(meta[_META_A0]) if _META_A0 in meta else 1.0
        if b0 is None:
            b0 = float(meta[_META_B0]) if _META_B0 in meta else 1.0
        return cls(ids, cols["alpha"], cols["beta"], a0, b0)

    def save(self, path) -> Path:
        """Write Parquet (exact round trip: float64 bits, ids, prior)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.to_arrow(), path)
        return path

    @classmethod
    def load(cls, path) -> "PosteriorState":
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"posterior file not found: {path}")
        return cls.from_arrow(pq.read_table(path))

