"""`insight bench overhead`: selection-scoring cost at scale against a memory-bandwidth floor.

What is timed (best of ``repeats``, same process, same arrays):

* ``seconds``: ``registry.score("insight", alpha, beta, k)`` on ``n_prompts`` posteriors,
  i.e. input validation + exact I_k + power weight at the mean (the whole insight score).
* ``floor_seconds``: k + 1 (= 17 at k = 16, one per term y = 0..k of the sum) fused
  multiply-add passes over the same arrays, each pass
  ``np.multiply(alpha, beta, out=t); np.add(t, alpha, out=t)`` (reads alpha and beta,
  writes t: 3 x 8 bytes per prompt per pass), single-threaded numpy. It is what a
  one-pass-per-y implementation that does no arithmetic at all would cost in memory traffic.
* ``ratio`` = seconds / floor_seconds.

For reference (labelled *_extrapolated): the literal DESIGN formula with scipy per y
(``mi_naive``: betaln, gammaln, digamma for every y) and the plain numpy recurrences
(``backend="numpy"``), each timed on a subsample and scaled linearly to n_prompts.

The compiled kernel runs one slice of the prompts per thread (``threads``, the CPUs
available); ``ratio_single_thread`` reruns it
with one thread so the comparison with the single-threaded floor is visible both ways.
``peak_memory_mb`` is the tracemalloc peak of Python-visible allocations (numpy arrays) during
one score call; ``rss_peak_mb`` the process's peak resident set so far.

Data: posteriors as a run produces them: p ~ Beta(0.7, 0.7) per prompt, 0..10 rounds of k
rollouts observed, and for a third of the prompts the evidence decayed by a factor in
[0.3, 1] (forgetting), so alpha, beta are a mix of integers and fractions in [1, ~170].
"""

from __future__ import annotations

import resource
import sys
import time
import tracemalloc

import numpy as np

from insight.selection import mi, registry


def _log(msg: str) -> None:
    print(f"[bench overhead] {msg}", file=sys.stderr, flush=True)


def make_posteriors(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.beta(0.7, 0.7, n)
    trials = rng.integers(0, 11, n) * k
    s = rng.binomial(trials, p).astype(np.float64)
    f = trials - s
    decay = np.where(rng.random(n) < 1 / 3, rng.uniform(0.3, 1.0, n), 1.0)
    return 1.0 + decay * s, 1.0 + decay * f


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run_overhead_benchmark(n_prompts: int = 1_000_000, k: int = 16, repeats: int = 3,
                           seed: int = 0) -> dict:
    """Time the insight score on ``n_prompts`` posteriors at ``k`` against the floor."""
    if n_prompts < 1 or k < 1 or repeats < 1:
        raise ValueError("n_prompts, k and repeats must be >= 1")
    _log(f"generating {n_prompts} posteriors (k={k})")
    alpha, beta = make_posteriors(n_prompts, k, seed)
    backend = "numba" if mi.numba_available() else "numpy"
    threads = 1
    t0 = time.perf_counter()
    registry.score("insight", alpha[:1000], beta[:1000], k)   # compile / load the cache
    warm = time.perf_counter() - t0
    if backend == "numba":
        threads = mi.get_num_threads()
    _log(f"backend {backend} ({threads} threads), warm-up {warm:.2f}s")

    t = np.empty_like(alpha)

    def floor():
        for _ in range(k + 1):
            np.multiply(alpha, beta, out=t)
            np.add(t, alpha, out=t)

    def insight():
        registry.score("insight", alpha, beta, k)

    floor()
    floor_s = _best(floor, repeats)
    _log(f"floor ({k + 1} FMA passes): {floor_s:.4f}s")
    secs = _best(insight, repeats)
    _log(f"insight score: {secs:.4f}s  ratio {secs / floor_s:.2f}")
    floor_s = min(floor_s, _best(floor, repeats))   # floor again, after: less noise

    tracemalloc.start()
    insight()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    single = None
    if backend == "numba" and threads > 1:
        mi.set_num_threads(1)
        try:
            single = _best(insight, repeats)
        finally:
            mi.set_num_threads(threads)
        _log(f"insight score, 1 thread: {single:.4f}s")

    sub = min(n_prompts, 100_000)
    t_np = _best(lambda: mi.mutual_information(alpha[:sub], beta[:sub], k,
                                                        backend="numpy"), 1)
    np_full = t_np * n_prompts / sub
    _log(f"numpy recurrences: {t_np:.3f}s on {sub} -> {np_full:.2f}s extrapolated")
    sub_naive = min(n_prompts, 20_000)
    t_nv = _best(lambda: mi.mutual_information(alpha[:sub_naive], beta[:sub_naive], k,
                                                        backend="naive"), 1)
    nv_full = t_nv * n_prompts / sub_naive
    _log(f"naive scipy per y: {t_nv:.3f}s on {sub_naive} -> {nv_full:.2f}s extrapolated")

    check = min(n_prompts, 20_000)
    fast = mi.mutual_information(alpha[:check], beta[:check], k)
    ref = mi.mutual_information(alpha[:check], beta[:check], k, backend="numpy")
    max_rel = float(np.max(np.abs(fast - ref) / ref))

    result = {
        "n_prompts": n_prompts, "k": k, "repeats": repeats, "backend": backend,
        "threads": threads,
        "seconds": secs, "floor_seconds": floor_s, "ratio": secs / floor_s,
        "floor_definition": f"{k + 1} passes of np.multiply(alpha, beta, out=t); "
                            "np.add(t, alpha, out=t), single-threaded, best of repeats",
        "peak_memory_mb": peak / 2**20,
        "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "warmup_seconds": warm,
        "ratio_single_thread": (single / floor_s) if single is not None else secs / floor_s,
        "numpy_recurrence_ratio_extrapolated": np_full / floor_s,
        "numpy_recurrence_subsample": sub,
        "naive_scipy_ratio_extrapolated": nv_full / floor_s,
        "naive_scipy_subsample": sub_naive,
        "max_rel_diff_vs_numpy": max_rel,
    }
    return result

