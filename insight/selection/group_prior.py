"""Grouped empirical-Bayes prior: one Beta prior per group of prompts (an extension beyond
the paper; issue 12, "priors that generalise across prompts").

Why: under a fixed or a population-wide prior every unseen prompt looks alike, so a
selector cannot tell an unseen level-1 problem from an unseen level-5 one. Datasets
carry a label that predicts difficulty (MATH's level, a source, the digit count of
generated arithmetic); a prior per label lets the first look at a prompt already be an
informed guess.

The estimator: penalised Beta-Binomial marginal maximum likelihood per group,

    max_{a, b}  sum_{i in g} log BB(s_i | t_i, a, b)
              + c * sum_{s=0..T} BB(s | T, a0, b0) * log BB(s | T, a, b)

where (a0, b0) is the population's own fit (``prior.fit_beta_binomial``), T the median
trials of the observed prompts and c = ``shrinkage``. The penalty is the expected
log-likelihood of c pseudo-prompts drawn from the population's predictive: it peaks
exactly at (a0, b0) (Gibbs' inequality), so a group with few observed prompts stays near
the population prior, one with many (n_g >> c) follows its own data, and the weight of
the population is stated in prompts, a unit a user can reason about. A method-of-moments
fit per group would be simpler but is unstable with a handful of prompts and k = 8
rollouts each (binomial noise dominates the rate variance); the ML fit matches the
population's empirical-Bayes fit. Groups with no observed prompt get the population
prior; with fewer than two observed prompts in all, every prompt gets ``fallback``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from insight.selection.posterior import validate_outcomes
from insight.selection.prior import BetaBinomialFit, fit_beta_binomial, fit_weighted_pairs

DEFAULT_SHRINKAGE = 20.0


@dataclass(frozen=True)
class GroupPrior:
    """The prior one group got: Beta(a0, b0), fitted from ``n_observed`` prompts of it
    (0: the population prior, unchanged)."""

    a0: float
    b0: float
    n_prompts: int
    n_observed: int

    @property
    def mean(self) -> float:
        return self.a0 / (self.a0 + self.b0)


@dataclass(frozen=True)
class GroupedPriors:
    """Per-prompt prior arrays (aligned with the input) and the fit behind them."""

    alpha: np.ndarray
    beta: np.ndarray
    groups: dict[str, GroupPrior] = field(default_factory=dict)
    population: BetaBinomialFit | None = None

    def summary(self) -> dict[str, list[float]]:
        """{group: [a0, b0, prompts, observed prompts]} for logs and the audit."""
        return {g: [round(p.a0, 6), round(p.b0, 6), p.n_prompts, p.n_observed]
                for g, p in self.groups.items()}


def group_labels(values) -> np.ndarray:
    """Group labels as strings (a missing label, None or NaN, is its own group "")."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iub":             # integer levels: vectorised
        return arr.astype(str).astype(object)
    out = ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
           for v in arr.tolist()]
    return np.asarray(out, dtype=object)


def _pseudo_prompts(a0: float, b0: float, trials: int, weight: float):
    """(s, f, w): ``weight`` prompts of ``trials`` trials spread over the population's
    Beta-Binomial predictive."""
    from scipy.special import betaln, gammaln

    s = np.arange(trials + 1, dtype=np.float64)
    f = trials - s
    log_pmf = (gammaln(trials + 1.0) - gammaln(s + 1.0) - gammaln(f + 1.0)
               + betaln(a0 + s, b0 + f) - betaln(a0, b0))
    return s, f, weight * np.exp(log_pmf)


def fit_grouped_priors(successes, trials, groups, *, shrinkage: float = DEFAULT_SHRINKAGE,
                       fallback: tuple[float, float] = (1.0, 1.0)) -> GroupedPriors:
    """A Beta prior per group (see the module docstring), as per-prompt arrays.

    ``successes``/``trials``: each prompt's (possibly decayed, fractional) counts so far;
    ``groups``: its label (any values; compared as strings); all three aligned.
    """
    if not (isinstance(shrinkage, (int, float)) and np.isfinite(shrinkage) and shrinkage >= 0):
        raise ValueError(f"shrinkage must be a finite number >= 0, got {shrinkage!r}")
    s, t = validate_outcomes(successes, trials)
    labels = group_labels(groups)
    if len(labels) != len(s):
        raise ValueError(f"groups has {len(labels)} entries, successes {len(s)}")
    seen = t > 0
    alpha, beta = np.full(len(s), float(fallback[0])), np.full(len(s), float(fallback[1]))
    if seen.sum() < 2:
        return GroupedPriors(alpha, beta)
    pop = fit_beta_binomial(s[seen], t[seen])
    t_star = max(1, int(round(float(np.median(t[seen])))))
    ps, pf, pw = _pseudo_prompts(pop.a0, pop.b0, t_star, float(shrinkage))
    x0 = np.log([pop.a0, pop.b0])
    fits: dict[str, GroupPrior] = {}
    names, codes = np.unique(labels.astype(str), return_inverse=True)
    for code, g in enumerate(names.tolist()):
        members = codes == code
        obs = members & seen
        a0, b0 = pop.a0, pop.b0
        if obs.any():
            a0, b0 = _fit_group(s[obs], t[obs], ps, pf, pw, x0)
        alpha[members], beta[members] = a0, b0
        fits[g] = GroupPrior(a0, b0, int(members.sum()), int(obs.sum()))
    return GroupedPriors(alpha, beta, fits, pop)


def _fit_group(s, t, ps, pf, pw, x0) -> tuple[float, float]:
    # identical (s, f) pairs are frequent: one complex number per pair sorts fast
    pairs, counts = np.unique(s + 1j * (t - s), return_counts=True)
    su = np.concatenate([pairs.real, ps])
    fu = np.concatenate([pairs.imag, pf])
    w = np.concatenate([counts.astype(np.float64), pw])
    keep = w > 0
    fit = fit_weighted_pairs(su[keep], fu[keep], w[keep], x0, n_prompts=int(len(s)))
    return fit.a0, fit.b0
