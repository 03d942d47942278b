"""Acquisition scores: exact mutual information, difficulty weights, per-selector scores.

Public entry points (stable; other tools call them):

* ``mutual_information(alpha, beta, k) -> ndarray`` - exact I_k(a, b) between the next k
  rollouts and the latent success rate p ~ Beta(a, b) (DESIGN §2), vectorized; ``k`` a
  scalar or a per-prompt integer array.
* ``score(selector, alpha, beta, k, *, rng=None, **params) -> ndarray`` - the acquisition
  score of one of the selectors in ``SELECTORS``; higher is always better.
* ``score_components(...)`` - the score together with its parts and the diagnostics
  (mi, weight, mean, difficulty_factor, evidence_factor, sampled_p).
* ``difficulty_weight``, ``difficulty_factor``, ``evidence_factor``.

How I_k is computed
-------------------
With n = a + b, ``L(y) = log C(k,y) - log P(y) = log B(a, b) - log B(a+y, b+k-y)`` and
``log B(a,b) - log B(a+y,b+k-y) = sum_{j<k} log(n+j) - sum_{j<y} log(a+j) - sum_{j<k-y}
log(b+j)``, the per-y term of the DESIGN sum regroups into

    I_k(a, b) = C_n + E_Y[T_a(Y)] + E_Y[T_b(k - Y)]

    C_n    = sum_{j<k} [log(n + j) - psi(n + k)]          (a negative constant)
    T_c(z) = sum_{j<z} [psi(c + z) - log(c + j)]          (>= 0 for z >= 1)

Every piece is small when n is large (C_n ~ -k^2/(2n), E[T] ~ (k^2+k)/(2n)), so the
cancellation is a factor ~k instead of the factor ~n log(n)/k of the literal formula (whose
log-probabilities and digammas of size log n cancel down to I ~ k/(2n); that is why the
literal scipy version, ``mi_naive``, loses ~4 digits at n = 1e6). With
``g(x) = log(x) - psi(x)`` the recurrence in z is

    T_c(z+1) = T_c(z) + (z+1)/(c+z) - g(c+z)

and g comes from its asymptotic (Bernoulli) series for x >= 10 (one division, no
transcendental call) and, below 10, from log(x) - psi(x) with psi from the downward
recurrence psi(x) = psi(x+1) - 1/x started at x >= 10. So digamma and lgamma are never
called per y. C_n = k g(n+k) + log prod_{j<k} (n+j)/(n+k); the product is accumulated as
1 - e (no cancellation) while it is >~ e^-4, and otherwise in blocks of 32 factors (no
underflow). P(y) is never taken from lgamma: with a <= b (I is symmetric, so swap), the
unnormalized weights w(0) = 1, w(y+1) = w(y) (k-y)/(y+1) (a+y)/(b+k-y-1) stay below 2^k
because P(0) = prod (b+j)/(n+j) >= 2^-k; they are rescaled past 1e250 (any k works), and
E[.] = sum w T / sum w.

Accuracy: relative error below ~1e-10 against 50-digit mpmath for a, b in [0.01, 1e6] and
k in [1, 2000] (tests/test_acquisition.py); ~1e-7 at the edges of the accepted range
[1e-8, 1e15]. Three implementations share the math:

* ``_mi_numba``: compiled with numba (lazily; the machine code is cached on disk). A block
  kernel takes 128 prompts at a time with the prompt index innermost, so the compiler
  vectorizes across prompts (one division per four reciprocals, a branch-free fdlibm-style
  log for the arguments below 10); slices of the prompts run on a thread pool (the kernel
  releases the GIL; ``set_num_threads``, INSIGHT_NUM_THREADS). A scalar kernel with plain
  libm calls and weight rescaling takes k > 900 and extreme a, b. Used when numba is
  importable and INSIGHT_DISABLE_NUMBA is unset.
* ``_mi_numpy``: the same recurrences vectorized over prompts with numpy; the fallback
  without numba and the reference the compiled kernels are tested against.
* ``mi_naive``: the DESIGN formula with scipy per y; benchmark reference only.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

SELECTORS: tuple[str, ...] = ("insight", "insight-sampled", "mi", "difficulty", "mopps",
                              "uniform", "dynamic-sampling")
WEIGHTS: tuple[str, ...] = ("power", "gaussian")

MI_MIN_PARAM = 1e-8   # below, relative error grows past ~1e-7 (see tests)
MI_MAX_PARAM = 1e15

DEFAULT_GAMMA = 1.0
DEFAULT_TAU = 0.5
DEFAULT_SIGMA = 0.25

# which keyword parameters each selector's score takes
_SELECTOR_PARAMS: dict[str, frozenset[str]] = {
    "insight": frozenset({"weight", "gamma", "tau", "sigma"}),
    "insight-sampled": frozenset({"weight", "gamma", "tau", "sigma"}),
    "mi": frozenset(),
    "difficulty": frozenset({"tau"}),
    "mopps": frozenset({"tau"}),
    "uniform": frozenset(),
    "dynamic-sampling": frozenset(),
}
_STOCHASTIC = frozenset({"insight-sampled", "mopps", "uniform", "dynamic-sampling"})


def selector_params(selector: str) -> frozenset[str]:
    """Names of the keyword parameters ``score`` accepts for ``selector``."""
    _check_selector(selector)
    return _SELECTOR_PARAMS[selector]


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------
def _describe(mask: np.ndarray, prompt_ids=None, limit: int = 10) -> str:
    """'prompt ids ['a', 'b'] (2 entries)' or 'indices [3, 7] (2 entries)'."""
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
                         f"{_describe(bad, _ids_for(prompt_ids, arr))}")
    return arr


def _ids_for(prompt_ids, arr):
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
                             f"{_describe(bad, _ids_for(prompt_ids, arr))}")
        out.append(arr)
    return out[0], out[1]


def check_supported_range(a: np.ndarray, b: np.ndarray, prompt_ids=None) -> None:
    """The MI kernels are validated for a, b in [MI_MIN_PARAM, MI_MAX_PARAM]."""
    for name, arr in (("alpha", a), ("beta", b)):
        if arr.size and not (arr.min() >= MI_MIN_PARAM and arr.max() <= MI_MAX_PARAM):
            bad = (arr < MI_MIN_PARAM) | (arr > MI_MAX_PARAM)
            raise ValueError(f"{name} outside the range [{MI_MIN_PARAM:g}, {MI_MAX_PARAM:g}] "
                             f"where I_k is computed accurately; offending "
                             f"{_describe(bad, _ids_for(prompt_ids, arr))}")


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
        raise ValueError(f"k must be an integer >= 1; offending {_describe(bad, prompt_ids)}")
    big = kf > MAX_K
    if big.any():
        raise ValueError(f"k is above the limit of {MAX_K} rollouts per prompt; "
                         f"offending {_describe(big, prompt_ids)}")
    return kf.astype(np.int64)


def _check_selector(selector: str) -> None:
    if selector not in SELECTORS:
        raise ValueError(f"unknown selector {selector!r}; choose one of {list(SELECTORS)}")


# --------------------------------------------------------------------------------------
# mutual information
# --------------------------------------------------------------------------------------
NUMBA_MIN_PROMPTS = 100_000


def mutual_information(alpha, beta, k, *, backend: str = "auto", prompt_ids=None) -> np.ndarray:
    """Exact I_k(a, b) = I(Y; p) for Y | p ~ Binomial(k, p), p ~ Beta(a, b), in nats.

    ``alpha``, ``beta``: arrays (or scalars) > 0; ``k``: integer >= 1, scalar or one per
    prompt. ``backend``: "auto" (numba for pools of NUMBA_MIN_PROMPTS or more when
    available, else numpy), "numba", "numpy" or
    "naive" (the DESIGN formula with scipy per y; slow and imprecise at large n).
    ``prompt_ids`` only serve to name offending rows in errors. Returns float64 with the
    broadcast shape of alpha and beta.
    """
    a, b = validate_alpha_beta(alpha, beta, prompt_ids)
    check_supported_range(a, b, prompt_ids)
    shape = np.broadcast_shapes(a.shape, b.shape)
    a = np.broadcast_to(a, shape).ravel()
    b = np.broadcast_to(b, shape).ravel()
    kk = validate_k(k, a.size if np.ndim(k) else None, prompt_ids)
    return _mi(a, b, kk, backend).reshape(shape)


def _mi(a: np.ndarray, b: np.ndarray, k, backend: str = "auto") -> np.ndarray:
    """Unvalidated dispatch (a, b 1-D float64; k int or int64 array)."""
    if backend == "auto":
        # The compiled kernel pays a one-off JIT (seconds to tens of seconds per process
        # when its cache is cold); below NUMBA_MIN_PROMPTS the numpy recurrence finishes
        # in milliseconds, so a small pool never waits on a compiler.
        backend = "numba" if a.size >= NUMBA_MIN_PROMPTS and numba_available() else "numpy"
    if backend == "numba":
        if not numba_available():
            raise ValueError("backend 'numba' requested but numba is not importable "
                             "(or INSIGHT_DISABLE_NUMBA is set)")
        return _mi_numba(a, b, k)
    if backend == "numpy":
        return _mi_numpy(a, b, k)
    if backend == "naive":
        if np.ndim(k):
            out = np.empty(a.shape)
            for kv in np.unique(k):
                idx = np.flatnonzero(k == kv)
                out[idx] = mi_naive(a[idx], b[idx], int(kv))
            return out
        return mi_naive(a, b, int(k))
    raise ValueError(f"unknown backend {backend!r}; use auto, numba, numpy or naive")


# --------------------------------------------------------------------------------------
# difficulty weights and diagnostics
# --------------------------------------------------------------------------------------
def difficulty_weight(mean, weight: str = "power", *, gamma: float = DEFAULT_GAMMA,
                      tau: float = DEFAULT_TAU, sigma: float = DEFAULT_SIGMA) -> np.ndarray:
    """w(m): ``power`` (4 m (1-m))**gamma or ``gaussian`` exp(-(m-tau)^2 / (2 sigma^2)).

    Both equal 1 at the target (m = 1/2, resp. m = tau) and fall toward the extremes.
    """
    _check_weight_params(weight, gamma, tau, sigma)
    m = as_float_array(mean, "mean")
    bad = (m < 0) | (m > 1)
    if bad.any():
        raise ValueError(f"mean must lie in [0, 1]; offending {_describe(bad)}")
    return _weight_unchecked(m, weight, gamma, tau, sigma)


def _weight_unchecked(m: np.ndarray, weight: str, gamma: float, tau: float,
                      sigma: float) -> np.ndarray:
    shape = np.shape(m)
    m = np.atleast_1d(m)
    if weight == "power":
        w = 1.0 - m
        w *= m
        w *= 4.0
        if gamma != 1.0:
            np.power(w, gamma, out=w)
        return w.reshape(shape)
    d = m - tau
    d *= d
    d *= -1.0 / (2.0 * sigma * sigma)
    return np.exp(d, out=d).reshape(shape)


def _check_weight_params(weight, gamma, tau, sigma) -> None:
    if weight not in WEIGHTS:
        raise ValueError(f"weight must be one of {list(WEIGHTS)}, got {weight!r}")
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    _check_tau(tau)
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")


def _check_tau(tau) -> None:
    if not (isinstance(tau, (int, float)) and 0.0 <= tau <= 1.0):
        raise ValueError(f"tau must be a number in [0, 1], got {tau!r}")


def difficulty_factor(alpha, beta) -> np.ndarray:
    """m (1 - m) at the posterior mean m = a / (a + b)."""
    a, b = validate_alpha_beta(alpha, beta)
    m = a / (a + b)
    return m * (1.0 - m)


def evidence_factor(alpha, beta, k) -> np.ndarray:
    """k / ((n + 1)(n + k)), n = a + b: with the difficulty factor, the expected reduction
    of Var(p) after k rollouts is m(1-m) * k / ((n+1)(n+k))."""
    a, b = validate_alpha_beta(alpha, beta)
    kk = validate_k(k, a.size if np.ndim(k) else None)
    n = a + b
    return kk / ((n + 1.0) * (n + kk))


# --------------------------------------------------------------------------------------
# scores
# --------------------------------------------------------------------------------------
def _as_rng(rng, selector: str) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        raise ValueError(f"selector {selector!r} draws random numbers: pass "
                         "rng=np.random.default_rng(seed) (or an int seed)")
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ValueError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")


def _resolve_params(selector: str, params: dict[str, Any]) -> dict[str, Any]:
    allowed = _SELECTOR_PARAMS[selector]
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"parameter(s) {unknown} do not apply to selector {selector!r}; "
                         f"it takes {sorted(allowed) or 'none'}")
    out = {"weight": "power", "gamma": DEFAULT_GAMMA, "tau": DEFAULT_TAU,
           "sigma": DEFAULT_SIGMA}
    out.update({k: v for k, v in params.items() if v is not None})
    if selector in ("insight", "insight-sampled"):
        _check_weight_params(out["weight"], out["gamma"], out["tau"], out["sigma"])
    else:
        _check_tau(out["tau"])
    return out


def score_components(selector: str, alpha, beta, k, *, rng=None, diagnostics: bool = True,
                     prompt_ids=None, backend: str = "auto", **params) -> dict[str, np.ndarray]:
    """The score of ``selector`` (higher is better) and its parts, all float64 arrays:

    ``score``; ``mi`` (I_k; NaN when ``diagnostics`` is False and the score needs none);
    ``weight`` (the difficulty weight the score used: w(m) for insight, w(p_draw) for
    insight-sampled, 1 for mi, NaN where the selector has no weight); ``mean``;
    ``sampled_p`` (the Thompson draw; NaN where none); ``difficulty_factor`` m(1-m);
    ``evidence_factor`` k/((n+1)(n+k)).

    Scores: insight w(m) I_k; insight-sampled w(p) I_k with p ~ Beta(a, b); mi I_k;
    difficulty -(m - tau)^2; mopps -(p - tau)^2 with p ~ Beta(a, b); uniform and
    dynamic-sampling i.i.d. U(0, 1) keys (their top-B is a uniform draw without
    replacement). Random draws, in this order: Thompson draws (one per prompt), then
    uniform keys. ``rng``: a numpy Generator or an int seed; required by the stochastic
    selectors (insight-sampled, mopps, uniform, dynamic-sampling).
    """
    _check_selector(selector)
    p = _resolve_params(selector, params)
    a, b = validate_alpha_beta(alpha, beta, prompt_ids)
    check_supported_range(a, b, prompt_ids)
    a, b = np.atleast_1d(a).ravel(), np.atleast_1d(b).ravel()
    if a.shape != b.shape:
        a, b = (np.ascontiguousarray(x) for x in np.broadcast_arrays(a, b))
    kk = validate_k(k, a.size if np.ndim(k) else None, prompt_ids)
    gen = _as_rng(rng, selector) if selector in _STOCHASTIC else None
    n = a + b
    m = a / n
    def nan():
        return np.full(a.shape, np.nan)
    need_mi = selector in ("insight", "insight-sampled", "mi")
    mi = _mi(a, b, kk, backend) if (need_mi or diagnostics) else nan()
    sampled = nan()
    weight = nan()
    if selector in ("insight-sampled", "mopps"):
        sampled = gen.beta(a, b)
    if selector in ("insight", "insight-sampled"):
        at = m if selector == "insight" else sampled
        weight = _weight_unchecked(at, p["weight"], p["gamma"], p["tau"], p["sigma"])
        s = weight * mi
    elif selector == "mi":
        weight = np.ones(a.shape)
        s = mi.copy()
    elif selector == "difficulty":
        s = -((m - p["tau"]) ** 2) + 0.0          # + 0.0: no negative zeros
    elif selector == "mopps":
        s = -((sampled - p["tau"]) ** 2) + 0.0
    else:  # uniform, dynamic-sampling
        s = gen.random(a.shape[0])
    out = {"score": s, "mi": mi, "weight": weight, "mean": m, "sampled_p": sampled}
    if diagnostics:
        out["difficulty_factor"] = m * (1.0 - m)
        out["evidence_factor"] = kk / ((n + 1.0) * (n + kk))
    return out


def score(selector: str, alpha, beta, k, *, rng=None, **params) -> np.ndarray:
    """Acquisition score of ``selector`` for each prompt; higher is better for every selector.

    ``params``: insight / insight-sampled take ``weight`` ("power" | "gaussian"), ``gamma``,
    ``tau``, ``sigma``; difficulty and mopps take ``tau``; the others none (a parameter
    that does not apply raises ValueError). See ``score_components`` for the formulas.
    """
    return score_components(selector, alpha, beta, k, rng=rng, diagnostics=False,
                            **params)["score"]


# --------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------
G_SERIES_MIN = 10.0  # the asymptotic series of g is used at and above this argument
_BLOCK = 32          # factors per block of the C_n product
_ROWS = 128           # prompts per vectorized block of the compiled kernel
_LANES = 8            # thread slices are multiples of this
_LANES_KMAX = 900     # block kernel: weights stay below 2^k, finite without rescaling
_LANES_MIN, _LANES_MAX = 1e-6, 1e60   # block kernel: products of 4 arguments stay finite
# fdlibm log constants (block kernel's vectorizable log)
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LG1, _LG2, _LG3 = 6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01
_LG4, _LG5, _LG6 = 2.222219843214978396e-01, 1.818357216161805012e-01, 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01
_MANT_MASK = 0x000FFFFFFFFFFFFF
_SQRT2_MANT = 0x6A09E667F3BCC      # mantissa bits of sqrt(2)
_ONE_BITS = 0x3FF0000000000000
_HALF_BITS = 0x3FE0000000000000
_RESCALE_AT = 1e250  # unnormalized Beta-Binomial weights are rescaled past this

# Bernoulli coefficients of g(x) = log x - psi(x) = 1/(2x) + sum_j B_2j / (2j x^2j)
_C1, _C2, _C3, _C4 = 1.0 / 12.0, -1.0 / 120.0, 1.0 / 252.0, -1.0 / 240.0
_C5, _C6, _C7 = 1.0 / 132.0, -691.0 / 32760.0, 1.0 / 12.0


# --------------------------------------------------------------------------------------
# numpy implementation (vectorized over prompts; one k at a time)
# --------------------------------------------------------------------------------------
def _g_series_np(u: np.ndarray) -> np.ndarray:
    """g(x) for x = 1/u >= 10 by its asymptotic series (relative error < 1e-15)."""
    u2 = u * u
    poly = _C7
    for c in (_C6, _C5, _C4, _C3, _C2, _C1):
        poly = c + u2 * poly
    return u * 0.5 + u2 * poly


def _g_table_np(c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """g(c+z) and 1/(c+z) for z = 0..k-1, shape (k, len(c))."""
    m = len(c)
    g = np.empty((k, m))
    u = np.empty((k, m))
    for z in range(k):
        u[z] = 1.0 / (c + z)
        g[z] = _g_series_np(u[z])
    small = c < G_SERIES_MIN
    if small.any():
        cs = c[small]
        top = int(math.ceil(G_SERIES_MIN)) + 1  # c + top >= 10 for every c > 0
        x = cs + top
        psi = np.log(x) - _g_series_np(1.0 / x)
        for z in range(top - 1, -1, -1):
            x = cs + z
            psi = psi - 1.0 / x
            if z < k:
                direct = x < G_SERIES_MIN
                gz = g[z]
                sub = gz[small]
                sub[direct] = np.log(x[direct]) - psi[direct]
                gz[small] = sub
    return g, u


def _mi_numpy_uniform_k(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    swap = a > b
    a, b = np.where(swap, b, a), np.where(swap, a, b)   # now a <= b
    n = a + b
    ga, ua = _g_table_np(a, k)
    gb, ub = _g_table_np(b, k)
    # T_b(z) for z = 0..k
    tb = np.zeros((k + 1, len(a)))
    for z in range(k):
        tb[z + 1] = tb[z] + (z + 1) * ub[z] - gb[z]
    # C_n
    x = n + k
    inv = 1.0 / x
    small = x < G_SERIES_MIN
    gn = _g_series_np(inv)
    if small.any():
        from scipy.special import digamma
        gn[small] = np.log(x[small]) - digamma(x[small])
    logprod = np.zeros(len(a))
    prod = np.ones(len(a))
    e = np.zeros(len(a))
    for j in range(k):
        prod *= (n + j) * inv
        d = (k - j) * inv
        e = e + d - e * d
        if (j + 1) % _BLOCK == 0:
            logprod += np.log(prod)
            prod[:] = 1.0
    logprod += np.log(prod)
    near_one = k * (k + 1.0) <= 8.0 * x
    logprod[near_one] = np.log1p(-e[near_one])
    cn = k * gn + logprod
    # expectation over Y with unnormalized Beta-Binomial weights
    w = np.ones(len(a))
    ta = np.zeros(len(a))
    num = np.zeros(len(a))
    den = np.zeros(len(a))
    for y in range(k + 1):
        num += w * (ta + tb[k - y])
        den += w
        if y < k:
            ta = ta + (y + 1) * ua[y] - ga[y]
            w = w * ((k - y) / (y + 1)) * (a + y) * ub[k - 1 - y]
            big = w > _RESCALE_AT
            if big.any():
                w[big] *= 1.0 / _RESCALE_AT
                num[big] *= 1.0 / _RESCALE_AT
                den[big] *= 1.0 / _RESCALE_AT
    return cn + num / den


def _mi_numpy(a: np.ndarray, b: np.ndarray, k: np.ndarray | int, chunk: int = 8192) -> np.ndarray:
    """Vectorized numpy recurrences; ``k`` scalar or per-prompt integer array. No validation."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    out = np.empty(a.shape, dtype=np.float64)
    if np.ndim(k) == 0:
        groups = [(int(k), slice(None))]
    else:
        k = np.asarray(k)
        groups = [(int(kv), np.flatnonzero(k == kv)) for kv in np.unique(k)]
    for kv, idx in groups:
        aa, bb = a[idx], b[idx]
        res = np.empty(aa.shape)
        for s in range(0, len(aa), chunk):
            res[s:s + chunk] = _mi_numpy_uniform_k(aa[s:s + chunk], bb[s:s + chunk], kv)
        out[idx] = res
    return out


# --------------------------------------------------------------------------------------
# naive DESIGN formula, one y at a time with scipy special functions
# --------------------------------------------------------------------------------------
def mi_naive(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """The DESIGN §2 sum literally: lgamma for log P(y), digamma for each y."""
    from scipy.special import betaln, digamma, gammaln

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n = a + b
    lbab = betaln(a, b)
    psi_nk = digamma(n + k)
    total = np.zeros(a.shape)
    for y in range(k + 1):
        logc = gammaln(k + 1) - gammaln(y + 1) - gammaln(k - y + 1)
        logp = logc + betaln(a + y, b + k - y) - lbab
        p = np.exp(logp)
        term = (logc - logp + y * (digamma(a + y) - psi_nk)
                + (k - y) * (digamma(b + k - y) - psi_nk))
        total += p * term
    return total


# --------------------------------------------------------------------------------------
# numba implementation
# --------------------------------------------------------------------------------------
_NUMBA_DISABLED = os.environ.get("INSIGHT_DISABLE_NUMBA", "") not in ("", "0")
_numba_kernels = None  # (scalar kernel, lane kernel) once compiled


def numba_available() -> bool:
    if _NUMBA_DISABLED:
        return False
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


# Compiled kernels. Plain Python until ``_build_numba`` rebinds each name in _NUMBA_SPECS to
# its numba dispatcher (lazily, so importing this module does not import numba).
def _nb_g_series(x):
    u = 1.0 / x
    u2 = u * u
    poly = _C1 + u2 * (_C2 + u2 * (_C3 + u2 * (_C4 + u2 * (_C5 + u2 * (_C6 + u2 * _C7)))))
    return u * 0.5 + u2 * poly

def _nb_g_scalar(x):
    if x >= G_SERIES_MIN:
        return _nb_g_series(x)
    top = 0
    while x + top < G_SERIES_MIN:
        top += 1
    psi = math.log(x + top) - _nb_g_series(x + top)
    for z in range(top - 1, -1, -1):
        psi -= 1.0 / (x + z)
    return math.log(x) - psi

def _nb_fill_g(c, k, g, u):
    """g[z] = g(c+z), u[z] = 1/(c+z) for z < k."""
    top = 0
    while c + top < G_SERIES_MIN:
        top += 1
    for z in range(top, k):
        x = c + z
        uz = 1.0 / x
        u[z] = uz
        u2 = uz * uz
        g[z] = uz * 0.5 + u2 * (_C1 + u2 * (_C2 + u2 * (_C3 + u2 * (_C4 + u2 * (
            _C5 + u2 * (_C6 + u2 * _C7))))))
    if top > 0:
        psi = math.log(c + top) - _nb_g_series(c + top)
        for z in range(top - 1, -1, -1):
            x = c + z
            uz = 1.0 / x
            psi -= uz
            if z < k:
                u[z] = uz
                g[z] = math.log(x) - psi

def _nb_mi_one(a, b, k, ga, ua, gb, ub, tb, inv_int):
    if a > b:
        a, b = b, a
    n = a + b
    _nb_fill_g(a, k, ga, ua)
    _nb_fill_g(b, k, gb, ub)
    tb[0] = 0.0
    for z in range(k):
        tb[z + 1] = tb[z] + (z + 1) * ub[z] - gb[z]
    x = n + k
    inv = 1.0 / x
    if k * (k + 1.0) <= 8.0 * x:
        # prod = 1 - e with sum(d) <= 4 so prod >~ e^-4: accumulate e (no cancellation),
        # in two interleaved chains (shorter dependency chains), then log1p(-e)
        e1 = 0.0
        e2 = 0.0
        for j in range(0, k - 1, 2):
            d1 = (k - j) * inv
            d2 = (k - j - 1) * inv
            e1 = e1 + d1 * (1.0 - e1)
            e2 = e2 + d2 * (1.0 - e2)
        if k % 2 == 1:
            e1 = e1 + inv * (1.0 - e1)
        logprod = math.log1p(-(e1 + e2 * (1.0 - e1)))
    else:
        logprod = 0.0
        prod = 1.0
        for j in range(k):
            f = (n + j) * inv
            prod *= f
            if (j + 1) % _BLOCK == 0:
                logprod += math.log(prod)
                prod = 1.0
        logprod += math.log(prod)
    cn = k * _nb_g_scalar(x) + logprod
    w = 1.0
    ta = 0.0
    num = 0.0
    den = 0.0
    for y in range(k):
        num += w * (ta + tb[k - y])
        den += w
        ta += (y + 1) * ua[y] - ga[y]
        f = ((k - y) * inv_int[y + 1]) * ((a + y) * ub[k - 1 - y])
        w *= f
        if w > _RESCALE_AT:
            w *= 1.0 / _RESCALE_AT
            num *= 1.0 / _RESCALE_AT
            den *= 1.0 / _RESCALE_AT
    num += w * ta
    den += w
    return cn + num / den

def _nb_mi_per_k(a, b, k, out, chunk):
    n = a.shape[0]
    kmax = 1
    for i in range(n):
        if k[i] > kmax:
            kmax = k[i]
    inv_int = np.ones(kmax + 2)
    for j in range(1, kmax + 2):
        inv_int[j] = 1.0 / j
    nchunks = (n + chunk - 1) // chunk
    for c in range(nchunks):
        ga = np.empty(kmax + 1)
        ua = np.empty(kmax + 1)
        gb = np.empty(kmax + 1)
        ub = np.empty(kmax + 1)
        tb = np.empty(kmax + 1)
        lo = c * chunk
        hi = min(n, lo + chunk)
        for i in range(lo, hi):
            out[i] = _nb_mi_one(a[i], b[i], k[i], ga, ua, gb, ub, tb, inv_int)

def _nb_vlog(x, m, out, scratch):
    """out[:m] = log(x[:m]) for positive normal x, branch-free so the loop vectorizes
    (fdlibm's e_log.c method: x = 2^e * r, r in [sqrt(2)/2, sqrt(2)), log(r) = f - hfsq +
    s (hfsq + R(s^2)), s = f / (2 + f); error < 1 ulp)."""
    xi = x.view(np.int64)
    ri = scratch.view(np.int64)
    for l in range(m):
        bits = xi[l]
        man = bits & _MANT_MASK
        big = man > _SQRT2_MANT
        ri[l] = man | (_HALF_BITS if big else _ONE_BITS)
        out[l] = float((bits >> 52) - 1023 + (1 if big else 0))
    for l in range(m):
        f = scratch[l] - 1.0
        s = f / (2.0 + f)
        z = s * s
        w = z * z
        t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
        t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
        hfsq = 0.5 * f * f
        dk = out[l]
        out[l] = dk * _LN2_HI - ((hfsq - (s * (hfsq + (t2 + t1)) + dk * _LN2_LO)) - f)


def _nb_series_rows(c, m, kpad, g, u):
    """u[z, l] = 1/(c_l + z) and g[z, l] = series g(c_l + z), z < kpad (a multiple of 4),
    l < m. One division per 4 reciprocals: 1/x_i = (prod_{j != i} x_j) / prod_j x_j."""
    for z in range(0, kpad, 4):
        u0 = u[z]
        u1 = u[z + 1]
        u2 = u[z + 2]
        u3 = u[z + 3]
        for l in range(m):
            x0 = c[l] + z
            x1 = x0 + 1.0
            x2 = x0 + 2.0
            x3 = x0 + 3.0
            p01 = x0 * x1
            p23 = x2 * x3
            r = 1.0 / (p01 * p23)
            u0[l] = x1 * p23 * r
            u1[l] = x0 * p23 * r
            u2[l] = p01 * x3 * r
            u3[l] = p01 * x2 * r
    for z in range(kpad):
        uz = u[z]
        gz = g[z]
        for l in range(m):
            v = uz[l]
            v2 = v * v
            gz[l] = v * 0.5 + v2 * (_C1 + v2 * (_C2 + v2 * (_C3 + v2 * (_C4 + v2 * (
                _C5 + v2 * (_C6 + v2 * _C7))))))


def _nb_fix_small_rows(c, m, k, g, idx, cs, x, psi, lg, scratch):
    """For the lanes with c_l < 10: g[z, l] = log(c_l+z) - psi(c_l+z) where c_l + z < 10,
    psi from psi(c+10) = log(c+10) - g_series(c+10) by psi(x) = psi(x+1) - 1/x. The small
    lanes are gathered into dense vectors so that the logs vectorize."""
    ms = 0
    for l in range(m):
        if c[l] < G_SERIES_MIN:
            idx[ms] = l
            cs[ms] = c[l]
            ms += 1
    if ms == 0:
        return
    top = 10
    for j in range(ms):
        x[j] = cs[j] + top
    _nb_vlog(x, ms, lg, scratch)
    for j in range(ms):
        v = 1.0 / x[j]
        v2 = v * v
        psi[j] = lg[j] - (v * 0.5 + v2 * (_C1 + v2 * (_C2 + v2 * (_C3 + v2 * (_C4 + v2 * (
            _C5 + v2 * (_C6 + v2 * _C7)))))))
    for z in range(top - 1, -1, -1):
        for j in range(ms):
            x[j] = cs[j] + z
            psi[j] -= 1.0 / x[j]
        if z < k:
            _nb_vlog(x, ms, lg, scratch)
            gz = g[z]
            for j in range(ms):
                if x[j] < G_SERIES_MIN:
                    gz[idx[j]] = lg[j] - psi[j]


def _nb_mi_rows(a, b, k, out):
    """Same math as _nb_mi_one, _ROWS prompts at a time with the prompt index innermost, so
    the compiler vectorizes across prompts. Requires k <= _LANES_KMAX (weights below 2^k:
    no rescaling) and a, b in [_LANES_MIN, _LANES_MAX] (products of four arguments and the
    bit-level log stay in range)."""
    n = a.shape[0]
    W = _ROWS
    kpad = ((k + 3) // 4) * 4
    coef = np.empty(k + 1)
    for y in range(k):
        coef[y] = (k - y) / (y + 1.0)
    av = np.empty(W)
    bv = np.empty(W)
    ga = np.empty((kpad, W))
    ua = np.empty((kpad, W))
    gb = np.empty((kpad, W))
    ub = np.empty((kpad, W))
    tb = np.empty((k + 1, W))
    idx = np.empty(W, dtype=np.int64)
    cs = np.empty(W)
    xs = np.empty(W)
    psi = np.empty(W)
    lg = np.empty(W)
    scratch = np.empty(W)
    nn = np.empty(W)
    inv = np.empty(W)
    e1 = np.empty(W)
    prod = np.empty(W)
    lp = np.empty(W)
    cn = np.empty(W)
    w = np.empty(W)
    ta = np.empty(W)
    num = np.empty(W)
    den = np.empty(W)
    for base in range(0, n, W):
        m = min(W, n - base)
        for l in range(m):
            x = a[base + l]
            y = b[base + l]
            av[l] = min(x, y)
            bv[l] = max(x, y)
        _nb_series_rows(av, m, kpad, ga, ua)
        _nb_series_rows(bv, m, kpad, gb, ub)
        _nb_fix_small_rows(av, m, k, ga, idx, cs, xs, psi, lg, scratch)
        _nb_fix_small_rows(bv, m, k, gb, idx, cs, xs, psi, lg, scratch)
        t0 = tb[0]
        for l in range(m):
            t0[l] = 0.0
        for z in range(k):
            tprev = tb[z]
            tnext = tb[z + 1]
            ubz = ub[z]
            gbz = gb[z]
            for l in range(m):
                tnext[l] = tprev[l] + (z + 1) * ubz[l] - gbz[l]
        # C_n = k g(n+k) + log prod_{j<k} (n+j)/(n+k): the product as 1 - e while it is
        # >~ e^-4 (no cancellation when n is large), else in blocks of _BLOCK factors
        for l in range(m):
            nn[l] = av[l] + bv[l]
            inv[l] = 1.0 / (nn[l] + k)
            e1[l] = 0.0
            prod[l] = 1.0
            lp[l] = 0.0
        for j in range(k):
            kj = float(k - j)
            for l in range(m):
                e1[l] = e1[l] + (kj * inv[l]) * (1.0 - e1[l])
                prod[l] = prod[l] * ((nn[l] + j) * inv[l])
            if (j + 1) % _BLOCK == 0:
                _nb_vlog(prod, m, lg, scratch)
                for l in range(m):
                    lp[l] += lg[l]
                    prod[l] = 1.0
        # log1p(-e) = log(q) - ((q - 1) + e) / q with q = 1 - e (exact correction)
        for l in range(m):
            xs[l] = 1.0 - e1[l]
        _nb_vlog(xs, m, cs, scratch)
        _nb_vlog(prod, m, lg, scratch)
        use_e = k * (k + 1.0)
        for l in range(m):
            q = xs[l]
            x = nn[l] + k
            v = 1.0 / x
            v2 = v * v
            gx = v * 0.5 + v2 * (_C1 + v2 * (_C2 + v2 * (_C3 + v2 * (_C4 + v2 * (
                _C5 + v2 * (_C6 + v2 * _C7))))))
            log1p_e = cs[l] - ((q - 1.0) + e1[l]) / q
            logprod = log1p_e if use_e <= 8.0 * x else lp[l] + lg[l]
            cn[l] = k * gx + logprod
            w[l] = 1.0
            ta[l] = 0.0
            num[l] = 0.0
            den[l] = 0.0
        for l in range(m):
            x = nn[l] + k
            if x < G_SERIES_MIN:
                cn[l] += k * (_nb_g_scalar(x) - _nb_g_series(x))
        for y in range(k):
            cy = coef[y]
            tby = tb[k - y]
            uay = ua[y]
            gay = ga[y]
            uby = ub[k - 1 - y]
            for l in range(m):
                num[l] += w[l] * (ta[l] + tby[l])
                den[l] += w[l]
                ta[l] += (y + 1) * uay[l] - gay[l]
                w[l] *= cy * ((av[l] + y) * uby[l])
        for l in range(m):
            out[base + l] = cn[l] + (num[l] + w[l] * ta[l]) / (den[l] + w[l])


_NUMBA_SPECS = (
    ("_nb_g_series", dict(inline="always", fastmath={"contract"})),
    ("_nb_g_scalar", dict(fastmath={"contract"})),
    ("_nb_fill_g", dict(fastmath={"contract"})),
    ("_nb_mi_one", dict(fastmath={"contract"})),
    ("_nb_mi_per_k", dict(fastmath={"contract"}, nogil=True)),
    ("_nb_vlog", dict(fastmath={"contract"}, error_model="numpy")),
    ("_nb_series_rows", dict(fastmath={"contract"}, error_model="numpy")),
    ("_nb_fix_small_rows", dict(fastmath={"contract"}, error_model="numpy")),
    ("_nb_mi_rows", dict(fastmath={"contract"}, error_model="numpy", nogil=True)),
)


def _default_threads() -> int:
    env = os.environ.get("INSIGHT_NUM_THREADS", "")
    if env.strip():
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


_num_threads = _default_threads()
_pool = None
_MIN_PER_THREAD = 32768   # prompts; smaller inputs run on the calling thread


def set_num_threads(n: int) -> None:
    """Threads used by the compiled kernel (default: the CPUs this process may use, or
    INSIGHT_NUM_THREADS)."""
    global _num_threads
    if int(n) < 1:
        raise ValueError(f"need at least one thread, got {n}")
    _num_threads = int(n)


def get_num_threads() -> int:
    return _num_threads


def _run_threaded(kernel, a, b, k, out) -> None:
    """Split the prompts into contiguous slices run by a pool of threads; the kernel
    releases the GIL (nogil), so plain Python threads run the slices in parallel."""
    global _pool
    n = a.shape[0]
    threads = min(_num_threads, max(1, n // _MIN_PER_THREAD))
    if threads == 1:
        kernel(a, b, k, out)
        return
    if _pool is None or _pool._max_workers < threads:
        from concurrent.futures import ThreadPoolExecutor
        _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="insight-mi")
    # many more slices than threads: a thread that gets descheduled (a busy machine) holds
    # up one small slice, not half of the work
    pieces = max(threads, min(8 * threads, n // _MIN_PER_THREAD))
    edges = [(n * t // pieces) // _LANES * _LANES for t in range(pieces)] + [n]
    futures = [_pool.submit(kernel, a[lo:hi], b[lo:hi], k, out[lo:hi])
               for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]
    for f in futures:
        f.result()


def _build_numba():
    """Compile (or load from the on-disk cache) the kernels: each ``_nb_*`` function above is
    plain Python until here, where its module-level name is rebound to its numba dispatcher
    (so the kernels that call it compile against the jitted version)."""
    global _numba_kernels
    if _numba_kernels is not None:
        return _numba_kernels
    import numba

    g = globals()
    for name, opts in _NUMBA_SPECS:
        g[name] = numba.njit(cache=True, **opts)(g[name])
    _numba_kernels = (g["_nb_mi_per_k"], g["_nb_mi_rows"])
    return _numba_kernels


def _mi_numba(a: np.ndarray, b: np.ndarray, k: np.ndarray | int) -> np.ndarray:
    """Compiled kernels (numba, threaded); ``k`` scalar or per-prompt array. No validation.

    The block kernel (vectorized across prompts) takes every prompt with k <= 900 and
    a, b in [1e-6, 1e60]; the scalar kernel (same math, plain divisions and logs, rescaled
    weights) takes the rest.
    """
    per_k, rows = _build_numba()

    a = np.ascontiguousarray(a, dtype=np.float64).ravel()
    b = np.ascontiguousarray(b, dtype=np.float64).ravel()
    out = np.empty(a.shape, dtype=np.float64)
    if a.size == 0:
        return out
    if (np.ndim(k) == 0 and k <= _LANES_KMAX and a.min() >= _LANES_MIN
            and b.min() >= _LANES_MIN and a.max() <= _LANES_MAX and b.max() <= _LANES_MAX):
        _run_threaded(rows, a, b, int(k), out)
        return out
    lane_ok = ((a >= _LANES_MIN) & (a <= _LANES_MAX) & (b >= _LANES_MIN) & (b <= _LANES_MAX)
               & (np.asarray(k) <= _LANES_KMAX))
    kk = np.broadcast_to(np.asarray(k, dtype=np.int64), a.shape)
    rest = np.flatnonzero(~lane_ok)
    if rest.size:
        sub = np.empty(rest.size)
        per_k(a[rest], b[rest], np.ascontiguousarray(kk[rest]), sub, 4096)
        out[rest] = sub
    for kv in np.unique(kk[lane_ok]):
        idx = np.flatnonzero(lane_ok & (kk == kv))
        sub = np.empty(idx.size)
        _run_threaded(rows, a[idx], b[idx], int(kv), sub)
        out[idx] = sub
    return out
