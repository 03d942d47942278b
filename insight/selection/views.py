"""The posterior view the selectors score: the stored posterior under the run's prior
option and forgetting. One rule shared by the pipeline (insight/round_state.py) and the
simulator (insight/report/simulate.py), so both score the same view.

* ``fixed``: the stored posterior as it is.
* ``empirical-bayes``: never-observed prompts get the population's Beta-Binomial fit
  (``prior.with_fitted_prior_for_unseen``, unchanged).
* ``grouped-empirical-bayes``: never-observed prompts get their group's prior
  (``group_prior.fit_grouped_priors``); observed prompts keep their posterior.
* ``feature-knn``: every prompt is its feature prior (``feature_prior.knn_prior``: its
  nearest observed neighbours under the policy's features, capped pseudo-counts) plus
  its own evidence.
* with ``half_life`` (``forgetting``): every prompt is its prior (as above, fitted to the
  decayed counts) plus its decayed evidence; the stored posterior is not used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from insight.selection.feature_prior import DEFAULT_NEIGHBOURS, DEFAULT_STRENGTH, knn_prior
from insight.selection.forgetting import decayed_counts, decayed_view
from insight.selection.group_prior import DEFAULT_SHRINKAGE, fit_grouped_priors
from insight.selection.posterior import PosteriorState, validate_outcomes
from insight.selection.prior import fit_beta_binomial_prior, with_fitted_prior_for_unseen

PRIORS = ("fixed", "empirical-bayes", "grouped-empirical-bayes", "feature-knn")


@dataclass
class View:
    """The scored posterior and the priors behind it ({group: [a0, b0, prompts,
    observed]}, "*" for a single population prior; empty for the fixed prior)."""

    posterior: PosteriorState
    priors: dict[str, list[float]] = field(default_factory=dict)


def selection_view(state: PosteriorState, *, prior: str, successes, trials, groups=None,
                   shrinkage: float = DEFAULT_SHRINKAGE, decayed=None, features=None,
                   neighbours: int = DEFAULT_NEIGHBOURS,
                   strength: float = DEFAULT_STRENGTH) -> View:
    """The view of ``state`` the selectors score.

    ``successes``/``trials``: every prompt's total counts so far (aligned with
    ``state.prompt_ids``); ``groups``: its group label (grouped prior only); ``decayed``:
    (successes, trials) weighted by age (``forgetting.decayed_counts``) or None;
    ``features``: (n_prompts, d) policy features (feature-knn only).
    """
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {list(PRIORS)}, got {prior!r}")
    if decayed is None:
        if prior == "fixed":
            return View(state)
        if prior == "empirical-bayes":  # the rule the pipeline has always used
            return View(with_fitted_prior_for_unseen(state, successes, trials))
    s, t = validate_outcomes(successes, trials, state.prompt_ids)
    fs, ft = (s, t) if decayed is None else validate_outcomes(*decayed, state.prompt_ids)
    if prior == "feature-knn":
        if features is None:
            raise ValueError("the feature prior needs each prompt's features")
        pa_, pb_ = knn_prior(features, fs, ft, neighbours=neighbours, strength=strength,
                             fallback=(state.a0, state.b0))
        return View(decayed_view(state, pa_, pb_, fs, ft),
                    {"knn": [float(np.mean(pa_ / (pa_ + pb_))), float(strength),
                             len(state), int((ft > 0).sum())]})
    prior_a, prior_b, priors = _prior_arrays(state, prior, fs, ft, groups, shrinkage)
    if decayed is not None:
        return View(decayed_view(state, prior_a, prior_b, fs, ft), priors)
    unseen = t <= 0
    alpha, beta = state.alpha.copy(), state.beta.copy()
    alpha[unseen], beta[unseen] = prior_a[unseen], prior_b[unseen]
    return View(PosteriorState(state.prompt_ids, alpha, beta, state.a0, state.b0), priors)


def _prior_arrays(state, prior, s, t, groups, shrinkage):
    n = len(state)
    a, b = np.full(n, state.a0), np.full(n, state.b0)
    if prior == "fixed" or (t > 0).sum() < 2:
        return a, b, {}
    if prior == "empirical-bayes":
        a0, b0 = fit_beta_binomial_prior(s[t > 0], t[t > 0])
        return np.full(n, a0), np.full(n, b0), {"*": [a0, b0, n, int((t > 0).sum())]}
    if groups is None:
        raise ValueError("the grouped empirical-Bayes prior needs each prompt's group")
    fit = fit_grouped_priors(s, t, groups, shrinkage=shrinkage, fallback=(state.a0, state.b0))
    return fit.alpha, fit.beta, fit.summary()


# -- the view of a recorded round, from the record's tables ------------------------------
# A reader gives (prompt ids, values...) and the arrays are aligned here, so the pipeline
# (insight/round_state.py, over insight.duckdb) and the re-scoring of a recorded round
# (insight/report/rescore.py, over the published Parquet) build the same view.
Loader = Callable[[], tuple]


def view_is_stored_posterior(prior: str, half_life, *, scoring: bool,
                             has_features: bool) -> bool:
    """True when the view is the stored posterior as it is, so no outcome need be read:
    the fixed prior without forgetting, and the feature prior where no features were
    computed (a selector that ignores the posterior) or for the posterior update (which
    keeps the stored Beta(a0, b0) posterior). Forgetting is a view for scoring only."""
    forget = half_life is not None and scoring
    if prior == "fixed" and not forget:
        return True
    return prior == "feature-knn" and (not scoring or not has_features)


def view_of_record(state: PosteriorState, cfg, *, now: int, scoring: bool,
                   totals: Loader, by_round: Loader, groups: Loader | None = None,
                   features=None) -> View:
    """The view scored after round ``now`` under the run's ``posterior`` config ``cfg``.

    ``totals()``: (prompt ids, successes, trials) of every prompt in rounds <= ``now``;
    ``by_round()``: (prompt ids, round, successes, trials), one row per prompt and round
    in round order (read only when forgetting applies); ``groups()``: (prompt ids, group
    labels), read only for the grouped prior; ``features``: (prompt ids, (n, d) array)."""
    if view_is_stored_posterior(cfg.prior, cfg.half_life, scoring=scoring,
                                has_features=features is not None):
        return View(state)
    ids, s, n = totals()
    successes, trials = np.zeros(len(state)), np.zeros(len(state))
    idx = state.index_of(_ids(ids))
    successes[idx], trials[idx] = s, n
    decayed = None
    if cfg.half_life is not None and scoring:
        ids, rounds, s, n = by_round()
        decayed = decayed_counts(state.index_of(_ids(ids)), rounds, s, n, size=len(state),
                                 now=now, half_life=cfg.half_life)
    labels = None
    if cfg.prior == "grouped-empirical-bayes":
        ids, grp = groups()
        labels = np.full(len(state), "", dtype=object)
        labels[state.index_of(_ids(ids))] = _ids(grp)
    feats = None
    if cfg.prior == "feature-knn":
        ids, arr = features
        feats = np.empty((len(state), arr.shape[1]))
        feats[state.index_of(_ids(ids))] = arr
    return selection_view(state, prior=cfg.prior, successes=successes, trials=trials,
                          groups=labels, shrinkage=cfg.group_shrinkage, decayed=decayed,
                          features=feats, neighbours=cfg.knn_neighbours,
                          strength=cfg.feature_strength)


def _ids(values) -> np.ndarray:
    return np.asarray(values, dtype=object)
