"""Exact mutual information I_k between the next k rollouts and a prompt's success rate.

Public entry points (stable; other tools call them):

* ``mutual_information(alpha, beta, k) -> ndarray`` - exact I_k(a, b) between the next k
  rollouts and the latent success rate p ~ Beta(a, b) (DESIGN §2), vectorized; ``k`` a
  scalar or a per-prompt integer array; input validated.
* ``compute_mi(a, b, k, backend)`` - the same without validation (callers that validated).
* ``numba_available``, ``numba_disabled``, ``set_num_threads``, ``get_num_threads`` - the
  compiled backend's switches (from insight.selection.mi_numba).

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

* ``mi_numba`` (insight/selection/mi_numba.py): compiled with numba (lazily; the machine code is cached on disk). A block
  kernel takes 128 prompts at a time with the prompt index innermost, so the compiler
  vectorizes across prompts (one division per four reciprocals, a branch-free fdlibm-style
  log for the arguments below 10); slices of the prompts run on a thread pool (the kernel
  releases the GIL; ``set_num_threads``, INSIGHT_NUM_THREADS). A scalar kernel with plain
  libm calls and weight rescaling takes k > 900 and extreme a, b. Used when numba is
  importable and INSIGHT_DISABLE_NUMBA is unset.
* ``mi_numpy``: the same recurrences vectorized over prompts with numpy; the fallback
  without numba and the reference the compiled kernels are tested against.
* ``mi_naive``: the DESIGN formula with scipy per y; benchmark reference only.
"""

from __future__ import annotations

import math

import numpy as np

from insight.selection.mi_constants import (BLOCK as _BLOCK, C1 as _C1, C2 as _C2,
                                            C3 as _C3, C4 as _C4, C5 as _C5, C6 as _C6,
                                            C7 as _C7, G_SERIES_MIN,
                                            RESCALE_AT as _RESCALE_AT)
from insight.selection.mi_numba import (get_num_threads, mi_numba, numba_available,
                                        numba_disabled, set_num_threads)
from insight.selection.validate import check_supported_range, validate_alpha_beta, validate_k

__all__ = ["mutual_information", "compute_mi", "mi_numpy", "mi_naive", "numba_available",
           "numba_disabled", "set_num_threads", "get_num_threads", "NUMBA_MIN_PROMPTS"]


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
    return compute_mi(a, b, kk, backend).reshape(shape)


def compute_mi(a: np.ndarray, b: np.ndarray, k, backend: str = "auto") -> np.ndarray:
    """Unvalidated dispatch (a, b 1-D float64 in the supported range; k int or int64
    array, as ``validate_k`` returns it)."""
    if backend == "auto":
        # The compiled kernel pays a one-off JIT (seconds to tens of seconds per process
        # when its cache is cold); below NUMBA_MIN_PROMPTS the numpy recurrence finishes
        # in milliseconds, so a small pool never waits on a compiler.
        backend = "numba" if a.size >= NUMBA_MIN_PROMPTS and numba_available() else "numpy"
    if backend == "numba":
        if not numba_available():
            raise ValueError("backend 'numba' requested but numba is not importable "
                             "(or INSIGHT_DISABLE_NUMBA is set)")
        return mi_numba(a, b, k)
    if backend == "numpy":
        return mi_numpy(a, b, k)
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


def mi_numpy(a: np.ndarray, b: np.ndarray, k: np.ndarray | int, chunk: int = 8192) -> np.ndarray:
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
