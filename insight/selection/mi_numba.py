"""Compiled I_k kernels (numba) and the thread pool that runs them.

The math is the one documented in insight/selection/mi.py; this module holds its
compiled form: a block kernel that takes 128 prompts at a time with the prompt index
innermost (so the compiler vectorizes across prompts: one division per four reciprocals,
a branch-free fdlibm-style log for arguments below 10), a scalar kernel with plain libm
calls and weight rescaling for k > 900 and extreme a, b, and a pool of threads that runs
slices of the prompts (the kernels release the GIL). Kept apart from mi.py because it is
the only code that needs numba, compiles lazily (importing this module does not import
numba) and owns process-wide state: the thread count and the "numba disabled" switch.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager

import numpy as np

from insight.selection.mi_constants import (BLOCK as _BLOCK, C1 as _C1, C2 as _C2,
                                            C3 as _C3, C4 as _C4, C5 as _C5, C6 as _C6,
                                            C7 as _C7, G_SERIES_MIN,
                                            RESCALE_AT as _RESCALE_AT)

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

_NUMBA_DISABLED = os.environ.get("INSIGHT_DISABLE_NUMBA", "") not in ("", "0")
_numba_kernels = None  # (scalar kernel, lane kernel) once compiled


def numba_available() -> bool:
    """numba is importable and not disabled (INSIGHT_DISABLE_NUMBA, ``numba_disabled``)."""
    if _NUMBA_DISABLED:
        return False
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def numba_disabled(disabled: bool = True):
    """Within the block the compiled kernel counts as unavailable when ``disabled`` (the
    "auto" backend then picks numpy; asking for "numba" raises) and as available when numba
    is importable otherwise; the previous setting is restored on exit. The programmatic form of
    INSIGHT_DISABLE_NUMBA, for callers (the simulator) whose many small pools would pay the
    compiler's one-off JIT without ever gaining from it."""
    global _NUMBA_DISABLED
    old = _NUMBA_DISABLED
    _NUMBA_DISABLED = bool(disabled)
    try:
        yield
    finally:
        _NUMBA_DISABLED = old


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


def mi_numba(a: np.ndarray, b: np.ndarray, k: np.ndarray | int) -> np.ndarray:
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
