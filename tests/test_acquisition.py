"""Exact mutual information, weights, diagnostics and per-selector scores."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from insight.selection import mi_numba, registry, scores
from insight.selection.mi import (get_num_threads, numba_available, numba_disabled,
                                  set_num_threads)
from insight.selection.mi import mutual_information as MI

BACKENDS = ["numpy"] + (["numba"] if numba_available() else [])


def mi_reference(a: float, b: float, k: int, dps: int = 50) -> float:
    """The DESIGN §2 sum, term by term, in 50-digit arithmetic."""
    with mp.workdps(dps):
        a, b = mp.mpf(a), mp.mpf(b)
        n = a + b
        lbab = mp.log(mp.beta(a, b))
        psi_nk = mp.digamma(n + k)
        total = mp.mpf(0)
        for y in range(k + 1):
            logc = mp.log(mp.binomial(k, y))
            logp = logc + mp.log(mp.beta(a + y, b + k - y)) - lbab
            total += mp.exp(logp) * (logc - logp + y * (mp.digamma(a + y) - psi_nk)
                                     + (k - y) * (mp.digamma(b + k - y) - psi_nk))
        return float(total)


def mi_by_integration(a: float, b: float, k: int) -> float:
    """I = H(Y) - E_p[H(Binomial(k, p))], the expectation by quadrature over p."""
    with mp.workdps(30):
        a, b = mp.mpf(a), mp.mpf(b)
        lbab = mp.log(mp.beta(a, b))
        py = [mp.binomial(k, y) * mp.exp(mp.log(mp.beta(a + y, b + k - y)) - lbab)
              for y in range(k + 1)]
        h_y = -mp.fsum(p * mp.log(p) for p in py if p > 0)

        def h_cond(p):
            terms = [mp.binomial(k, y) * p**y * (1 - p)**(k - y) for y in range(k + 1)]
            return -mp.fsum(t * mp.log(t) for t in terms if t > 0)

        def integrand(p):
            return h_cond(p) * mp.exp((a - 1) * mp.log(p) + (b - 1) * mp.log(1 - p) - lbab)

        e_h = mp.quad(integrand, [0, mp.mpf(1) / 2, 1])
        return float(h_y - e_h)


# -- accuracy ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_mi_matches_50_digit_reference_on_random_points(backend):
    rng = np.random.default_rng(7)
    a = 10 ** rng.uniform(-2, 6, 40)
    b = 10 ** rng.uniform(-2, 6, 40)
    k = rng.integers(1, 81, 40)
    got = MI(a, b, k, backend=backend)
    ref = np.array([mi_reference(x, y, int(kk)) for x, y, kk in zip(a, b, k)])
    np.testing.assert_allclose(got, ref, rtol=1e-8, atol=0)


@pytest.mark.parametrize("a,b,k", [(1e6, 0.01, 64), (0.01, 1e6, 1), (1e6, 1e6, 1),
                                   (1e6, 1e6, 64), (0.01, 0.01, 1), (0.01, 0.01, 64),
                                   (9.999999, 10.0, 16), (10.0, 10.0, 16), (3.0, 5.0, 300),
                                   (1e4, 1e12, 16), (2.5, 1e15, 8)])
def test_mi_corners_of_the_domain(a, b, k):
    ref = mi_reference(a, b, k)
    for backend in BACKENDS:
        assert MI(a, b, k, backend=backend) == pytest.approx(ref, rel=1e-9, abs=0)


@pytest.mark.parametrize("a,b,k", [(1.0, 1.0, 1), (2.0, 3.0, 4), (0.7, 5.5, 8), (12.0, 3.0, 16)])
def test_mi_matches_numerical_integration_over_p(a, b, k):
    assert float(MI(a, b, k)) == pytest.approx(mi_by_integration(a, b, k), rel=1e-8)


def test_mi_large_k_needs_rescaling_and_stays_exact():
    # the unnormalized weights pass 1e250 for k this large: the scalar kernel rescales
    for a, b, k in [(0.01, 0.01, 1500), (1e6, 0.01, 2000)]:
        got = MI(a, b, k)
        assert np.isfinite(got) and got > 0
    assert float(MI(0.5, 2.0, 950)) == pytest.approx(mi_reference(0.5, 2.0, 950, dps=30), rel=1e-9)


def test_naive_formula_agrees_at_moderate_n_and_loses_digits_at_large_n():
    a, b = np.array([2.0, 3.0, 40.0]), np.array([5.0, 1.0, 7.0])
    np.testing.assert_allclose(MI(a, b, 16, backend="naive"), MI(a, b, 16), rtol=1e-10)


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
def test_numba_and_numpy_backends_agree():
    rng = np.random.default_rng(3)
    a = 10 ** rng.uniform(-2, 6, 5000)
    b = 10 ** rng.uniform(-2, 6, 5000)
    for k in (1, 2, 3, 5, 16, 33, 64):
        np.testing.assert_allclose(MI(a, b, k, backend="numba"), MI(a, b, k, backend="numpy"),
                                   rtol=1e-11)
    ks = rng.integers(1, 40, 5000)
    np.testing.assert_allclose(MI(a, b, ks, backend="numba"), MI(a, b, ks, backend="numpy"),
                               rtol=1e-11)


def test_numba_switch_is_scoped_and_restored_even_after_an_error():
    before = numba_available()
    with pytest.raises(RuntimeError):
        with numba_disabled():
            assert not numba_available()
            with pytest.raises(ValueError, match="backend 'numba' requested"):
                MI(2.0, 3.0, 8, backend="numba")
            raise RuntimeError("leave the block by an error")
    assert numba_available() == before
    with numba_disabled(False):
        assert numba_available() == _numba_importable()
    assert numba_available() == before


def _numba_importable() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not numba_available(), reason="numba not installed")
def test_threaded_kernel_and_vector_log():
    rng = np.random.default_rng(8)
    a = 10 ** rng.uniform(-2, 4, 70_000)
    b = 10 ** rng.uniform(-2, 4, 70_000)
    threads = get_num_threads()
    try:
        set_num_threads(1)
        one = MI(a, b, 16, backend="numba")
        set_num_threads(3)
        three = MI(a, b, 16, backend="numba")
    finally:
        set_num_threads(threads)
    np.testing.assert_array_equal(one, three)
    np.testing.assert_allclose(one, MI(a, b, 16, backend="numpy"), rtol=1e-11)
    per_k, _ = mi_numba._build_numba()
    x = np.concatenate([10 ** rng.uniform(-300, 300, 4000), np.nextafter(np.sqrt(2), [0, 3]),
                        [1.0, 2.0, 0.5, 1e-6, 1e60]])
    out, scratch = np.empty_like(x), np.empty_like(x)
    mi_numba._nb_vlog(x, len(x), out, scratch)
    np.testing.assert_allclose(out, np.log(x), rtol=4e-16, atol=0)


def test_per_prompt_k_equals_separate_calls():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([4.0, 3.0, 2.0, 1.0])
    ks = np.array([1, 16, 3, 16])
    got = MI(a, b, ks)
    for i in range(4):
        assert got[i] == pytest.approx(float(MI(a[i], b[i], int(ks[i]))), rel=1e-14)


# -- shape of the function -------------------------------------------------------------------
def test_symmetry_bounds_and_monotonicity():
    rng = np.random.default_rng(11)
    a = 10 ** rng.uniform(-2, 4, 2000)
    b = 10 ** rng.uniform(-2, 4, 2000)
    for k in (1, 8, 64):
        i_ab, i_ba = MI(a, b, k), MI(b, a, k)
        np.testing.assert_allclose(i_ab, i_ba, rtol=1e-12)
        assert (i_ab > 0).all() and (i_ab <= math.log(k + 1)).all()
    # more rollouts, more information; more evidence, less
    assert (MI(a, b, 9) > MI(a, b, 8)).all()
    m = 0.3
    ns = np.geomspace(2.0, 1e6, 60)   # below n ~ 1 (U-shaped Beta) I_k rises with n
    vals = MI(m * ns, (1 - m) * ns, 16)
    assert (np.diff(vals) < 0).all()


@pytest.mark.parametrize("m", [0.1, 0.3, 0.5, 0.8])
@pytest.mark.parametrize("k", [1, 4, 16, 64])
def test_large_n_asymptote(m, k):
    """I -> 1/2 log(1 + k/(n+1)) with relative error O(1/n), uniformly in k; its first-order
    form k/(2(n+1)) has relative error ~ k/(2n) (so only 'about 1/(2(n+1)) per rollout')."""
    for n in (1e3, 1e4, 1e5, 1e6):
        val = float(MI(m * n, (1 - m) * n, k))
        gauss = 0.5 * math.log1p(k / (n + 1))
        assert abs(val / gauss - 1) < 1.5 / n
        assert abs(val * 2 * (n + 1) / k - 1) < (k + 1) / n


def test_variance_reduction_is_difficulty_times_evidence():
    """Var(p) - E_Y[Var(p | Y)] = m(1-m) * k / ((n+1)(n+k)) exactly (DESIGN §2)."""
    a, b, k = 2.5, 4.0, 6
    n, m = a + b, a / (a + b)
    with mp.workdps(30):
        lbab = mp.log(mp.beta(a, b))
        e_post_var = mp.fsum(
            mp.binomial(k, y) * mp.exp(mp.log(mp.beta(a + y, b + k - y)) - lbab)
            * ((a + y) * (b + k - y) / ((n + k) ** 2 * (n + k + 1))) for y in range(k + 1))
    prior_var = a * b / (n ** 2 * (n + 1))
    expected = float(scores.difficulty_factor(a, b) * scores.evidence_factor(a, b, k))
    assert prior_var - float(e_post_var) == pytest.approx(expected, rel=1e-12)
    assert float(scores.difficulty_factor(a, b)) == pytest.approx(m * (1 - m))


def test_difficulty_weights_shape():
    m = np.linspace(0, 1, 101)
    w = scores.difficulty_weight(m)
    assert w[50] == pytest.approx(1.0) and w[0] == 0 and w[-1] == 0
    np.testing.assert_allclose(w, w[::-1], atol=1e-15)
    assert (np.diff(w[:51]) > 0).all()
    np.testing.assert_allclose(scores.difficulty_weight(m, gamma=0.0), 1.0)
    np.testing.assert_allclose(scores.difficulty_weight(m, gamma=2.0), w ** 2, rtol=1e-12)
    g = scores.difficulty_weight(m, "gaussian", tau=0.3, sigma=0.1)
    assert m[np.argmax(g)] == pytest.approx(0.3)
    assert float(scores.difficulty_weight(0.4, "gaussian", tau=0.3, sigma=0.1)) == \
        pytest.approx(math.exp(-0.5))


@given(a=st.floats(0.01, 1e6), b=st.floats(0.01, 1e6), k=st.integers(1, 64))
@settings(max_examples=150, deadline=None)
def test_mi_properties_hypothesis(a, b, k):
    v = float(MI(a, b, k))
    assert 0 < v <= math.log(k + 1)
    assert v == pytest.approx(float(MI(b, a, k)), rel=1e-11)
    # I_k(a, b) <= H(Y) <= log(k+1) and I grows with k
    assert float(MI(a, b, k + 1)) > v


# -- scores ---------------------------------------------------------------------------------
def test_scores_of_each_selector():
    a = np.array([1.0, 5.0, 20.0, 2.0, 50.0])
    b = np.array([1.0, 5.0, 2.0, 20.0, 50.0])
    k = 8
    mi = MI(a, b, k)
    m = a / (a + b)
    np.testing.assert_allclose(registry.score("mi", a, b, k), mi)
    np.testing.assert_allclose(registry.score("insight", a, b, k), 4 * m * (1 - m) * mi)
    np.testing.assert_allclose(registry.score("insight", a, b, k, weight="gaussian", tau=0.3,
                                       sigma=0.2),
                               np.exp(-(m - 0.3) ** 2 / 0.08) * mi)
    np.testing.assert_allclose(registry.score("difficulty", a, b, k, tau=0.3), -(m - 0.3) ** 2)
    p = np.random.default_rng(5).beta(a, b)
    np.testing.assert_allclose(registry.score("mopps", a, b, k, rng=np.random.default_rng(5)),
                               -(p - 0.5) ** 2)
    np.testing.assert_allclose(registry.score("insight-sampled", a, b, k, rng=5),
                               4 * p * (1 - p) * mi)
    u = registry.score("uniform", a, b, k, rng=1)
    assert ((u >= 0) & (u < 1)).all()
    # same seed, same scores
    np.testing.assert_array_equal(registry.score("mopps", a, b, k, rng=3),
                                  registry.score("mopps", a, b, k, rng=3))


def test_score_components_diagnostics():
    a, b = np.array([3.0, 7.0]), np.array([2.0, 1.0])
    comp = registry.score_components("insight", a, b, 4)
    n = a + b
    np.testing.assert_allclose(comp["evidence_factor"], 4 / ((n + 1) * (n + 4)))
    np.testing.assert_allclose(comp["difficulty_factor"], (a / n) * (b / n))
    np.testing.assert_allclose(comp["score"], comp["weight"] * comp["mi"])
    assert np.isnan(comp["sampled_p"]).all()
    comp = registry.score_components("difficulty", a, b, 4)
    assert np.isnan(comp["weight"]).all() and np.isfinite(comp["mi"]).all()


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha,beta,k,match", [
    ([1.0, np.nan], [1.0, 1.0], 4, r"alpha must be finite.*\['q'\]"),
    ([1.0, 1.0], [1.0, -2.0], 4, r"beta must be > 0.*\['q'\]"),
    ([0.0, 1.0], [1.0, 1.0], 4, r"alpha must be > 0.*\['p'\]"),
    ([1.0, np.inf], [1.0, 1.0], 4, r"alpha must be finite"),
    ([1.0, 1.0], [1.0, 1.0], 0, r"k must be an integer >= 1"),
    ([1.0, 1.0], [1.0, 1.0], 2.5, r"k must be an integer >= 1"),
    ([1.0, 1.0], [1.0, 1.0], [4, 0], r"k must be an integer >= 1.*\['q'\]"),
    ([1.0, 1.0], [1.0, 1.0], [4, 4, 4], r"mismatched lengths"),
    ([1.0, 1.0], [1.0], 4, r"mismatched lengths"),
    ([1.0, 1e-12], [1.0, 1.0], 4, r"outside the range.*\['q'\]"),
])
def test_bad_input_raises_naming_offenders(alpha, beta, k, match):
    with pytest.raises(ValueError, match=match):
        MI(alpha, beta, k, prompt_ids=["p", "q"] if len(alpha) == 2 else None)


def test_bad_selector_and_params():
    with pytest.raises(ValueError, match="unknown selector"):
        registry.score("best", [1.0], [1.0], 4)
    with pytest.raises(ValueError, match=r"\['gamma'\] do not apply to selector 'mi'"):
        registry.score("mi", [1.0], [1.0], 4, gamma=2.0)
    with pytest.raises(ValueError, match="pass rng"):
        registry.score("mopps", [1.0], [1.0], 4)
    with pytest.raises(ValueError, match="sigma"):
        registry.score("insight", [1.0], [1.0], 4, weight="gaussian", sigma=0.0)
    with pytest.raises(ValueError, match="weight must be one of"):
        registry.score("insight", [1.0], [1.0], 4, weight="cubic")
    with pytest.raises(ValueError, match="tau"):
        registry.score("difficulty", [1.0], [1.0], 4, tau=1.5)
    with pytest.raises(ValueError, match="mean must lie in"):
        scores.difficulty_weight([1.2])
