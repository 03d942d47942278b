"""Empirical-Bayes prior (extension): Beta-Binomial maximum marginal likelihood."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import betaln

from insight.selection.posterior import PosteriorState
from insight.selection.prior import (MAX_PARAM, empirical_bayes_state, fit_beta_binomial,
                                     fit_beta_binomial_prior, with_fitted_prior_for_unseen)


def simulate(a0, b0, n, k, seed=0):
    rng = np.random.default_rng(seed)
    t = np.full(n, k)
    return rng.binomial(t, rng.beta(a0, b0, n)), t


@pytest.mark.parametrize("a0,b0", [(2.0, 5.0), (0.5, 0.5), (8.0, 2.0)])
def test_fit_recovers_the_population(a0, b0):
    s, t = simulate(a0, b0, 20000, 16)
    fit = fit_beta_binomial(s, t)
    assert fit.converged and not fit.at_bound
    assert fit.a0 == pytest.approx(a0, rel=0.1)
    assert fit.b0 == pytest.approx(b0, rel=0.1)
    assert fit.mean == pytest.approx(a0 / (a0 + b0), abs=0.01)
    assert fit_beta_binomial_prior(s, t) == (fit.a0, fit.b0)


def test_fit_is_the_maximum_of_the_marginal_likelihood():
    s, t = simulate(1.5, 3.0, 300, 8, seed=3)
    fit = fit_beta_binomial(s, t)

    def ll(a, b):
        return np.sum(betaln(a + s, b + t - s) - betaln(a, b))

    assert ll(fit.a0, fit.b0) == pytest.approx(fit.log_likelihood, rel=1e-12)
    for da, db in [(1.05, 1), (0.95, 1), (1, 1.05), (1, 0.95), (1.05, 1.05)]:
        assert ll(fit.a0 * da, fit.b0 * db) < fit.log_likelihood


def test_homogeneous_population_hits_the_bound_and_fractional_counts_work():
    fit = fit_beta_binomial(np.full(50, 8), np.full(50, 16))
    assert fit.at_bound and fit.a0 == pytest.approx(MAX_PARAM)
    s, t = simulate(2.0, 6.0, 5000, 8, seed=1)
    frac = fit_beta_binomial(0.5 * s + 0.25, t.astype(float))
    assert frac.converged and 0 < frac.mean < 1


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2 prompts"):
        fit_beta_binomial([1, 0], [2, 0])
    with pytest.raises(ValueError, match="successes must lie in"):
        fit_beta_binomial([3, 1], [2, 2])
    with pytest.raises(ValueError, match="finite"):
        fit_beta_binomial([np.nan, 1], [2, 2])


@pytest.mark.parametrize("lam", [1.0, 0.7])
def test_empirical_bayes_state_rebases_every_prompt(lam):
    rng = np.random.default_rng(4)
    ids = [f"p{i}" for i in range(400)]
    state = PosteriorState.new(ids)
    p = rng.beta(2.0, 8.0, 400)
    for _ in range(3):
        obs = rng.choice(300, 150, replace=False)      # p300..p399 are never seen
        k = 8
        state = state.observe([ids[i] for i in obs], rng.binomial(k, p[obs]), k, lam=lam)
    new, fit = empirical_bayes_state(state)
    assert fit is not None and new.a0 == fit.a0 and new.b0 == fit.b0
    ea, eb = state.evidence()
    np.testing.assert_allclose(new.alpha, fit.a0 + ea, rtol=1e-12)
    np.testing.assert_allclose(new.beta, fit.b0 + eb, rtol=1e-12)
    unseen = new.mean()[300:]
    np.testing.assert_allclose(unseen, fit.a0 / (fit.a0 + fit.b0))
    assert unseen[0] < 0.4        # no longer the m = 0.5 of Beta(1, 1)
    # evidence is preserved: a second refit of the rebased state changes nothing
    again, fit2 = empirical_bayes_state(new)
    assert fit2.a0 == pytest.approx(fit.a0, rel=1e-4)


def test_empirical_bayes_state_needs_evidence():
    state = PosteriorState.new(["a", "b", "c"])
    same, fit = empirical_bayes_state(state)
    assert fit is None and same is state
    bad = PosteriorState(np.array(["a", "b"], dtype=object), [0.5, 2.0], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"below its recorded prior.*\['a'\]"):
        empirical_bayes_state(bad)


def test_unseen_prompts_get_the_prior_fitted_to_the_seen_ones():
    s, t = simulate(2.0, 5.0, 300, 8, seed=3)
    ids = [f"p{i}" for i in range(400)]
    post = PosteriorState.new(ids).observe(ids[:300], s, t)
    succ, trials = np.zeros(400), np.zeros(400)
    succ[:300], trials[:300] = s, t
    view = with_fitted_prior_for_unseen(post, succ, trials)
    a0, b0 = fit_beta_binomial_prior(s, t)
    np.testing.assert_array_equal(view.alpha[300:], a0)
    np.testing.assert_array_equal(view.beta[300:], b0)
    np.testing.assert_array_equal(view.alpha[:300], post.alpha[:300])   # seen: untouched
    np.testing.assert_array_equal(view.beta[:300], post.beta[:300])
    assert a0 / (a0 + b0) == pytest.approx(2 / 7, abs=0.05)


def test_fitted_prior_view_leaves_the_state_alone_without_two_seen_or_any_unseen():
    post = PosteriorState.new(["a", "b", "c"]).observe(["a"], [3.0], [8.0])
    assert with_fitted_prior_for_unseen(post, [3, 0, 0], [8, 0, 0]) is post
    full = post.observe(["b", "c"], [1.0, 5.0], [8.0, 8.0])
    assert with_fitted_prior_for_unseen(full, [3, 1, 5], [8, 8, 8]) is full
    with pytest.raises(ValueError, match="mismatched lengths"):
        with_fitted_prior_for_unseen(post, [3, 0], [8, 0])
