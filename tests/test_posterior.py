"""Posterior state: the conjugate update with forgetting, MoPPS's rule, persistence, bad input."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from insight.selection.posterior import PosteriorState, mopps_update, update

IDS = [f"p{i}" for i in range(6)]


def test_update_formula_integer_and_fractional():
    a, b = np.array([1.0, 2.0, 5.0]), np.array([1.0, 3.0, 0.5])
    a1, b1 = update(a, b, [3, 0.5, 4], [4, 2, 4], lam=0.8, a0=0.5, b0=2.0)
    np.testing.assert_allclose(a1, 0.8 * a + 0.2 * 0.5 + np.array([3, 0.5, 4]), rtol=1e-15)
    np.testing.assert_allclose(b1, 0.8 * b + 0.2 * 2.0 + np.array([1, 1.5, 0]), rtol=1e-15)
    # inputs untouched
    np.testing.assert_array_equal(a, [1.0, 2.0, 5.0])
    # lam = 1 keeps all evidence, scalar trials broadcast
    a2, b2 = update(a, b, [1, 2, 0], 2)
    np.testing.assert_array_equal(a2, a + [1, 2, 0])
    np.testing.assert_array_equal(b2, b + [1, 0, 2])


def mopps_reference(alpha, beta, selected, rates, k, lam, a0=1.0, b0=1.0):
    """MoPPS as published (verl recipe/mopps): for each selected prompt only,
    alpha <- lam*alpha + (1-lam)*a0 + k*s ; beta <- lam*beta + (1-lam)*b0 + k*(1-s)."""
    alpha, beta = list(alpha), list(beta)
    for idx, s in zip(selected, rates):
        alpha[idx] = lam * alpha[idx] + (1 - lam) * a0 + k * s
        beta[idx] = lam * beta[idx] + (1 - lam) * b0 + k * (1 - s)
    return np.array(alpha), np.array(beta)


@pytest.mark.parametrize("lam", [1.0, 0.5, 0.9])
def test_observe_matches_mopps_rule_on_selected_prompts_only(lam):
    rng = np.random.default_rng(0)
    state = PosteriorState.new(IDS)
    alpha, beta = state.alpha.copy(), state.beta.copy()
    k = 8
    for _ in range(5):
        sel = rng.choice(len(IDS), 3, replace=False)
        succ = rng.integers(0, k + 1, 3)
        state = state.observe([IDS[i] for i in sel], succ, k, lam=lam)
        alpha, beta = mopps_reference(alpha, beta, sel, succ / k, k, lam)
        np.testing.assert_allclose(state.alpha, alpha, rtol=1e-15)
        np.testing.assert_allclose(state.beta, beta, rtol=1e-15)
    ra, rb = mopps_update(np.ones(2), np.ones(2), [0.25, 1.0], 4, lam=0.5)
    np.testing.assert_array_equal(ra, [0.5 + 0.5 + 1.0, 0.5 + 0.5 + 4.0])
    np.testing.assert_array_equal(rb, [0.5 + 0.5 + 3.0, 0.5 + 0.5 + 0.0])


def test_decay_all_moves_unobserved_toward_prior():
    state = PosteriorState.new(IDS[:3]).observe(IDS[:3], [4, 0, 2], 4)
    after = state.observe(["p0"], [1], [2], lam=0.5, decay="all")
    np.testing.assert_array_equal(after.alpha, [0.5 * 5 + 0.5 + 1, 0.5 * 1 + 0.5, 0.5 * 3 + 0.5])
    np.testing.assert_array_equal(after.beta, [0.5 * 1 + 0.5 + 1, 0.5 * 5 + 0.5, 0.5 * 3 + 0.5])
    observed_only = state.observe(["p0"], [1], [2], lam=0.5)
    np.testing.assert_array_equal(observed_only.alpha[1:], state.alpha[1:])


def test_per_prompt_trials_and_purity():
    state = PosteriorState.new(IDS[:3], a0=0.5, b0=0.5)
    new = state.observe(["p2", "p0"], [1.5, 7], [2, 16])
    np.testing.assert_array_equal(new.alpha, [7.5, 0.5, 2.0])
    np.testing.assert_array_equal(new.beta, [9.5, 0.5, 1.0])
    np.testing.assert_array_equal(state.alpha, [0.5, 0.5, 0.5])   # unchanged
    np.testing.assert_array_equal(new.mean(), new.alpha / (new.alpha + new.beta))
    with pytest.raises(ValueError):
        new.alpha[0] = 3.0   # read-only arrays


def test_save_load_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(1)
    ids = [f"prompt-{i}" for i in range(200)]
    state = PosteriorState(np.array(ids, dtype=object), rng.uniform(0.01, 1e6, 200),
                           rng.uniform(0.01, 1e6, 200), a0=0.3, b0=1.7)
    path = state.save(tmp_path / "sub" / "post.parquet")
    back = PosteriorState.load(path)
    assert back.equals(state)
    assert back.a0 == 0.3 and back.b0 == 1.7
    assert list(back.to_arrow().column_names) == ["prompt_id", "alpha", "beta"]
    # rows in any order come back aligned by prompt id
    t = state.to_arrow().take(pa.array(rng.permutation(200)))
    again = PosteriorState.from_arrow(t)
    np.testing.assert_array_equal(again.subset(ids).alpha, state.alpha)


@pytest.mark.parametrize("call,match", [
    (lambda s: s.observe(["p0", "p0"], [1, 1], [2, 2]), r"duplicate prompt_ids: \['p0'\]"),
    (lambda s: s.observe(["zz"], [1], [2]), r"unknown prompt ids.*\['zz'\]"),
    (lambda s: s.observe(["p1"], [3], [2]), r"successes must lie in \[0, trials\].*\['p1'\]"),
    (lambda s: s.observe(["p1"], [-1], [2]), r"successes must lie in"),
    (lambda s: s.observe(["p1"], [np.nan], [2]), r"successes must be finite.*\['p1'\]"),
    (lambda s: s.observe(["p1"], [1], [-2]), r"trials must be >= 0"),
    (lambda s: s.observe(["p1", "p2"], [1], [2, 2]), r"mismatched lengths"),
    (lambda s: s.observe(["p1"], [1], [2], lam=1.5), r"lam must be"),
    (lambda s: s.observe(["p1"], [1], [2], decay="some"), r"decay must be one of"),
    (lambda s: PosteriorState(np.array(["a", "b"], dtype=object), [1.0, 0.0], [1.0, 1.0]),
     r"alpha must be > 0.*\['b'\]"),
    (lambda s: PosteriorState(np.array(["a", "a"], dtype=object), [1.0, 1.0], [1.0, 1.0]),
     r"duplicate prompt_ids"),
    (lambda s: PosteriorState(np.array(["a", "b"], dtype=object), [1.0, np.nan], [1.0, 1.0]),
     r"alpha must be finite.*\['b'\]"),
    (lambda s: PosteriorState.new(["a", ""]), r"non-empty strings"),
    (lambda s: update([1.0, 2.0], [1.0], [0, 0], [1, 1]), r"mismatched lengths"),
])
def test_bad_input_raises(call, match):
    state = PosteriorState.new(IDS)
    with pytest.raises(ValueError, match=match):
        call(state)


def test_from_arrow_rejects_missing_columns_and_nulls():
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['beta'\]"):
        PosteriorState.from_arrow(pa.table({"prompt_id": ["a"], "alpha": [1.0]}))
    with pytest.raises(ValueError, match="alpha is null"):
        PosteriorState.from_arrow(pa.table({"prompt_id": ["a", "b"], "alpha": [1.0, None],
                                            "beta": [1.0, 1.0]}))


counts = st.lists(st.tuples(st.integers(0, 32), st.integers(0, 32)), min_size=1, max_size=6)


@given(rounds=st.lists(counts, min_size=1, max_size=4), lam=st.floats(0.0, 1.0),
       decay=st.sampled_from(["observed", "all"]))
@settings(max_examples=80, deadline=None)
def test_update_properties(rounds, lam, decay):
    ids = [f"q{i}" for i in range(6)]
    state = PosteriorState.new(ids, a0=1.0, b0=2.0)
    for r in rounds:
        obs = [(ids[i], min(s, t), t) for i, (s, t) in enumerate(r)]
        n_before = state.concentration().copy()
        new = state.observe([o[0] for o in obs], [o[1] for o in obs], [o[2] for o in obs],
                            lam=lam, decay=decay)
        assert (new.alpha > 0).all() and (new.beta > 0).all()
        idx = new.index_of([o[0] for o in obs])
        trials = np.array([o[2] for o in obs], dtype=float)
        # n' = lam n + (1 - lam)(a0 + b0) + k on observed prompts
        np.testing.assert_allclose(new.concentration()[idx],
                                   lam * n_before[idx] + (1 - lam) * 3.0 + trials, rtol=1e-12)
        # evidence above the prior stays non-negative
        ea, eb = new.evidence()
        assert (ea > -1e-9).all() and (eb > -1e-9).all()
        state = new


@given(batches=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 8), st.integers(0, 8)),
                        min_size=1, max_size=8))
@settings(max_examples=60, deadline=None)
def test_lam_one_is_order_free_and_additive(batches):
    ids = [f"q{i}" for i in range(6)]
    state = PosteriorState.new(ids)
    total_s = np.zeros(6)
    total_t = np.zeros(6)
    for i, s, t in batches:
        s = min(s, t)
        state = state.observe([ids[i]], [s], [t])
        total_s[i] += s
        total_t[i] += t
    np.testing.assert_allclose(state.alpha, 1 + total_s)
    np.testing.assert_allclose(state.beta, 1 + total_t - total_s)
