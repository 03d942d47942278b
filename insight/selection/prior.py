"""Empirical-Bayes prior (an extension beyond the InSight paper; DESIGN §2 "Beyond the paper").

With a fixed Beta(1, 1) prior every unseen prompt looks like m = 0.5, the most attractive
difficulty, and the selectors keep probing prompts that the population says are mostly
too easy (or too hard). Here Beta(a0, b0) is fitted to the observed population by
Beta-Binomial maximum marginal likelihood:

    max_{a0, b0}  sum_i [ log B(a0 + s_i, b0 + t_i - s_i) - log B(a0, b0) ]

(the binomial coefficients do not depend on the prior and are dropped; the same expression
is the natural generalization when s_i, t_i are fractional or decayed counts). The fit is
done in (log a0, log b0) with the analytic digamma gradient (L-BFGS-B), bounded to
[``min_param``, ``max_param``] = [0.01, 1e4] by default: a homogeneous population drives
the concentration to infinity, and the result then sits on the bound (``at_bound``).

``empirical_bayes_state`` rebases a ``PosteriorState``: with evidence e_i = (alpha_i - a0,
beta_i - b0) above the prior it was built with (exact for any forgetting factor as long as
every update decayed toward that prior), the posterior under the fitted prior is
(a0' + e_a, b0' + e_b). Prompts without evidence get exactly Beta(a0', b0').
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from insight.selection.posterior import PosteriorState, validate_outcomes
from insight.selection.validate import describe

MIN_PARAM = 1e-2
MAX_PARAM = 1e4


@dataclass(frozen=True)
class BetaBinomialFit:
    a0: float
    b0: float
    n_prompts: int            # prompts with trials > 0 that entered the fit
    log_likelihood: float     # sum over prompts, binomial coefficients dropped
    converged: bool
    at_bound: bool            # a parameter sits on [min_param, max_param]
    message: str = ""

    @property
    def mean(self) -> float:
        return self.a0 / (self.a0 + self.b0)


def _loglik_and_grad(theta, s, f, w):
    from scipy.special import betaln, digamma

    a, b = np.exp(theta)
    t = s + f
    ll = np.sum(w * (betaln(a + s, b + f) - betaln(a, b)))
    common = np.sum(w * (digamma(a + b) - digamma(a + b + t)))
    da = np.sum(w * (digamma(a + s) - digamma(a))) + common
    db = np.sum(w * (digamma(b + f) - digamma(b))) + common
    return ll, np.array([a * da, b * db])


def fit_beta_binomial(successes, trials, *, min_param: float = MIN_PARAM,
                      max_param: float = MAX_PARAM) -> BetaBinomialFit:
    """Beta-Binomial maximum marginal likelihood fit of Beta(a0, b0) to per-prompt counts.

    ``successes`` may be fractional; prompts with ``trials == 0`` are ignored. Needs at
    least two prompts with trials > 0. Bad input raises ValueError (see posterior).
    """
    s, t = validate_outcomes(successes, trials)
    if not (0 < min_param < max_param):
        raise ValueError(f"need 0 < min_param < max_param, got {min_param}, {max_param}")
    keep = t > 0
    if keep.sum() < 2:
        raise ValueError(f"empirical-Bayes fit needs at least 2 prompts with trials > 0, "
                         f"got {int(keep.sum())}")
    s, t = s[keep], t[keep]
    f = t - s
    # identical (s, f) pairs are frequent (integer counts): fit on unique pairs with weights
    pairs, counts = np.unique(np.stack([s, f], axis=1), axis=0, return_counts=True)
    su, fu, w = pairs[:, 0], pairs[:, 1], counts.astype(np.float64)
    # start: method of moments on the rates, clamped into the box
    rates = s / t
    m = float(np.clip(rates.mean(), 0.05, 0.95))
    v = float(rates.var())
    kappa = m * (1 - m) / v - 1 if v > 0 else 10.0
    kappa = float(np.clip(kappa, 1.0, 100.0))
    lo, hi = np.log(min_param), np.log(max_param)
    x0 = np.clip(np.log([m * kappa, (1 - m) * kappa]), lo, hi)
    return fit_weighted_pairs(su, fu, w, x0, n_prompts=int(len(s)), min_param=min_param,
                              max_param=max_param)


def fit_weighted_pairs(su, fu, w, x0, *, n_prompts: int, min_param: float = MIN_PARAM,
                       max_param: float = MAX_PARAM) -> BetaBinomialFit:
    """The maximum of sum_j w_j log BB(su_j, fu_j | a0, b0) over the box, started at ``x0``
    = (log a0, log b0): the optimiser behind ``fit_beta_binomial``, also used by the
    grouped prior (insight/selection/group_prior.py), whose weights include pseudo-prompts."""
    from scipy.optimize import minimize

    lo, hi = np.log(min_param), np.log(max_param)
    total = float(w.sum())

    def fun(theta):
        ll, g = _loglik_and_grad(theta, su, fu, w)
        return -ll / total, -g / total

    res = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=[(lo, hi), (lo, hi)],
                   options={"maxiter": 500, "ftol": 1e-13, "gtol": 1e-9})
    a0, b0 = (float(x) for x in np.exp(res.x))
    at_bound = bool(np.any(np.isclose(res.x, [lo, lo], atol=1e-6)
                           | np.isclose(res.x, [hi, hi], atol=1e-6)))
    ll, grad = _loglik_and_grad(res.x, su, fu, w)
    # L-BFGS-B may stop with "ABNORMAL" when no step improves at machine precision; the
    # fit is converged when the (projected) gradient of the mean log-likelihood vanishes
    free = ~(np.isclose(res.x, lo, atol=1e-6) | np.isclose(res.x, hi, atol=1e-6))
    small_grad = bool(np.all(np.abs(grad[free] / total) < 1e-6))
    return BetaBinomialFit(a0=a0, b0=b0, n_prompts=n_prompts, log_likelihood=float(ll),
                           converged=bool(res.success) or small_grad, at_bound=at_bound,
                           message=str(res.message))


def fit_beta_binomial_prior(successes, trials, **kwargs) -> tuple[float, float]:
    """(a0, b0) of ``fit_beta_binomial``."""
    fit = fit_beta_binomial(successes, trials, **kwargs)
    return fit.a0, fit.b0


def empirical_bayes_state(state: PosteriorState, *, min_prompts: int = 2, tol: float = 1e-9,
                          **fit_kwargs) -> tuple[PosteriorState, BetaBinomialFit | None]:
    """Refit the prior to the state's own evidence and rebase the state onto it.

    Every prompt becomes (a0' + e_a, b0' + e_b): the consistent empirical-Bayes posterior;
    prompts without evidence get exactly Beta(a0', b0'). With fewer than ``min_prompts``
    observed prompts the state is returned unchanged and
    the fit is None. The returned state records (a0', b0') as its prior.
    """
    ea, eb = state.evidence()
    scale = tol * (state.a0 + state.b0)
    bad = (ea < -scale) | (eb < -scale)
    if bad.any():
        raise ValueError("posterior lies below its recorded prior (was it built with another "
                         f"a0, b0?); offending {describe(bad, state.prompt_ids)}")
    ea, eb = np.maximum(ea, 0.0), np.maximum(eb, 0.0)  # rounding noise within tol only
    seen = (ea + eb) > scale
    if seen.sum() < max(min_prompts, 2):
        return state, None
    fit = fit_beta_binomial(ea[seen], (ea + eb)[seen], **fit_kwargs)
    alpha, beta = fit.a0 + ea, fit.b0 + eb
    alpha[~seen], beta[~seen] = fit.a0, fit.b0
    return PosteriorState(state.prompt_ids, alpha, beta, fit.a0, fit.b0), fit


def with_fitted_prior_for_unseen(state: PosteriorState, successes, trials) -> PosteriorState:
    """The empirical-Bayes view the selectors see: prompts never observed (``trials`` 0)
    get Beta(a0', b0') fitted to the observed prompts' totals instead of the fixed prior;
    observed prompts keep their posterior. ``successes``/``trials``: total counts so far,
    aligned with ``state.prompt_ids``. With fewer than two observed prompts, or none left
    unobserved, the state is returned as it is.

    The one rule behind the pipeline's select and update stages and the simulator (it
    differs from ``empirical_bayes_state``, which also rebases the observed prompts)."""
    s, t = validate_outcomes(successes, trials, state.prompt_ids)
    seen = t > 0
    if seen.sum() < 2 or seen.all():
        return state
    a0, b0 = fit_beta_binomial_prior(s[seen], t[seen])
    alpha, beta = state.alpha.copy(), state.beta.copy()
    alpha[~seen], beta[~seen] = a0, b0
    return PosteriorState(state.prompt_ids, alpha, beta, state.a0, state.b0)
