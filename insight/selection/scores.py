"""Acquisition scores: the difficulty weights and one score function per selector.

Every score function has the same shape, ``fn(candidates, **params) -> Scored``: it sees
the validated candidates (alpha, beta, k, posterior mean, I_k, the Generator) and returns
the score (higher is better) with the difficulty weight and Thompson draw it used. The
registry (insight/selection/registry.py) names each function next to its selector;
``components`` runs one of them behind the input checks, so a new selector is one function
here and one registry entry, with no dispatch code to edit.

Scores: insight w(m) I_k; insight-sampled w(p) I_k with p ~ Beta(a, b); mi I_k;
difficulty -(m - tau)^2; mopps -(p - tau)^2 with p ~ Beta(a, b); uniform and
dynamic-sampling i.i.d. U(0, 1) keys (their top-B is a uniform draw without replacement).
Weights: ``power`` (4 m (1-m))**gamma or ``gaussian`` exp(-(m-tau)^2 / (2 sigma^2)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from insight.selection.mi import compute_mi
from insight.selection.validate import (as_float_array, check_supported_range, describe,
                                        validate_alpha_beta, validate_k)

WEIGHTS: tuple[str, ...] = ("power", "gaussian")
OBJECTIVES: tuple[str, ...] = ("mi", "mixed", "mi+mixed")

DEFAULT_GAMMA = 1.0
DEFAULT_TAU = 0.5
DEFAULT_SIGMA = 0.25


# --------------------------------------------------------------------------------------
# score parameters: one check per parameter name, whichever selector takes it
# --------------------------------------------------------------------------------------
def _check_weight(weight) -> None:
    if weight not in WEIGHTS:
        raise ValueError(f"weight must be one of {list(WEIGHTS)}, got {weight!r}")


def _check_gamma(gamma) -> None:
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")


def _check_tau(tau) -> None:
    if not (isinstance(tau, (int, float)) and 0.0 <= tau <= 1.0):
        raise ValueError(f"tau must be a number in [0, 1], got {tau!r}")


def _check_sigma(sigma) -> None:
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")


def _check_objective(objective) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")


def _check_mixed_weight(mixed_weight) -> None:
    if isinstance(mixed_weight, bool) or not (isinstance(mixed_weight, (int, float))
                                              and math.isfinite(mixed_weight)
                                              and mixed_weight >= 0):
        raise ValueError(f"mixed_weight must be a finite number >= 0, got {mixed_weight!r}")


PARAM_CHECKS = {"weight": _check_weight, "gamma": _check_gamma, "tau": _check_tau,
                "sigma": _check_sigma, "objective": _check_objective,
                "mixed_weight": _check_mixed_weight}


def check_score_params(params: dict[str, Any]) -> None:
    """ValueError naming the first bad value (in the order given)."""
    for name, value in params.items():
        PARAM_CHECKS[name](value)


# --------------------------------------------------------------------------------------
# difficulty weights and diagnostics
# --------------------------------------------------------------------------------------
def difficulty_weight(mean, weight: str = "power", *, gamma: float = DEFAULT_GAMMA,
                      tau: float = DEFAULT_TAU, sigma: float = DEFAULT_SIGMA) -> np.ndarray:
    """w(m): ``power`` (4 m (1-m))**gamma or ``gaussian`` exp(-(m-tau)^2 / (2 sigma^2)).

    Both equal 1 at the target (m = 1/2, resp. m = tau) and fall toward the extremes.
    """
    check_score_params({"weight": weight, "gamma": gamma, "tau": tau, "sigma": sigma})
    m = as_float_array(mean, "mean")
    bad = (m < 0) | (m > 1)
    if bad.any():
        raise ValueError(f"mean must lie in [0, 1]; offending {describe(bad)}")
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


def mixed_probability(alpha, beta, k) -> np.ndarray:
    """P(0 < s < k) for s ~ Beta-Binomial(k, a, b): the predictive chance that the next k
    rollouts of the prompt come back mixed, i.e. carry a GRPO gradient. Closed form:
    1 - B(a, b + k) / B(a, b) - B(a + k, b) / B(a, b)."""
    a, b = validate_alpha_beta(alpha, beta)
    kk = np.asarray(validate_k(k, a.size if np.ndim(k) else None), dtype=np.float64)
    return _mixed_unchecked(np.atleast_1d(a), np.atleast_1d(b), kk).reshape(np.shape(a))


def _mixed_unchecked(a: np.ndarray, b: np.ndarray, k) -> np.ndarray:
    from scipy.special import betaln

    base = betaln(a, b)
    p = 1.0 - np.exp(betaln(a, b + k) - base) - np.exp(betaln(a + k, b) - base)
    return np.clip(p, 0.0, 1.0)


# --------------------------------------------------------------------------------------
# per-selector score functions
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidates:
    """What a score function sees: validated 1-D alpha, beta, their mean, I_k (NaN where
    the selector's score does not use it and no diagnostics were asked for), k and the
    Generator (None for deterministic selectors)."""

    alpha: np.ndarray
    beta: np.ndarray
    k: int | np.ndarray
    mean: np.ndarray
    mi: np.ndarray
    rng: np.random.Generator | None


@dataclass(frozen=True)
class Scored:
    """A score function's result: the score, the difficulty weight it used and the
    Thompson draw it made (None where it has none)."""

    score: np.ndarray
    weight: np.ndarray | None = None
    sampled_p: np.ndarray | None = None


def score_insight(c: Candidates, *, weight: str = "power", gamma: float = DEFAULT_GAMMA,
                  tau: float = DEFAULT_TAU, sigma: float = DEFAULT_SIGMA,
                  objective: str = "mi", mixed_weight: float = 1.0) -> Scored:
    """InSight: w(m) * I_k at the posterior mean m (``objective="mi"``, the paper).

    ``mixed``: P(0 < s < k) under the Beta-Binomial predictive (exploitation: the chance
    the group carries a gradient). ``mi+mixed``: w(m) I_k + mixed_weight * P(0 < s < k),
    so a known informative prompt can outrank an unseen one (whose I_k is maximal)."""
    w = _weight_unchecked(c.mean, weight, gamma, tau, sigma)
    if objective == "mi":
        return Scored(w * c.mi, weight=w)
    mixed = _mixed_unchecked(c.alpha, c.beta, c.k)
    if objective == "mixed":
        return Scored(mixed)
    return Scored(w * c.mi + mixed_weight * mixed, weight=w)


def score_insight_sampled(c: Candidates, *, weight: str = "power",
                          gamma: float = DEFAULT_GAMMA, tau: float = DEFAULT_TAU,
                          sigma: float = DEFAULT_SIGMA) -> Scored:
    """Ablation: w(p) * I_k at a Thompson draw p ~ Beta(a, b)."""
    p = c.rng.beta(c.alpha, c.beta)
    w = _weight_unchecked(p, weight, gamma, tau, sigma)
    return Scored(w * c.mi, weight=w, sampled_p=p)


def score_mi(c: Candidates) -> Scored:
    """I_k alone (weight 1)."""
    return Scored(c.mi.copy(), weight=np.ones(c.alpha.shape))


def score_difficulty(c: Candidates, *, tau: float = DEFAULT_TAU) -> Scored:
    """-(m - tau)^2: closeness of the posterior mean to the target."""
    return Scored(-((c.mean - tau) ** 2) + 0.0)          # + 0.0: no negative zeros


def score_mopps(c: Candidates, *, tau: float = DEFAULT_TAU) -> Scored:
    """MoPPS: -(p - tau)^2 with a Thompson draw p ~ Beta(a, b)."""
    p = c.rng.beta(c.alpha, c.beta)
    return Scored(-((p - tau) ** 2) + 0.0, sampled_p=p)


def score_random_key(c: Candidates) -> Scored:
    """i.i.d. U(0, 1) keys: the top B are a uniform draw without replacement."""
    return Scored(c.rng.random(c.alpha.shape[0]))


# --------------------------------------------------------------------------------------
# running one score function behind the checks
# --------------------------------------------------------------------------------------
def as_rng(rng, selector: str) -> np.random.Generator:
    """A Generator from ``rng`` (a Generator or an int seed); ValueError naming the
    selector that needs one when it is missing."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        raise ValueError(f"selector {selector!r} draws random numbers: pass "
                         "rng=np.random.default_rng(seed) (or an int seed)")
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ValueError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")


def resolve_params(spec, params: dict[str, Any]) -> dict[str, Any]:
    """The selector's parameters: its defaults, overridden by the non-None ``params``;
    ValueError for a parameter it does not take or a bad value."""
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise ValueError(f"parameter(s) {unknown} do not apply to selector {spec.name!r}; "
                         f"it takes {sorted(spec.params) or 'none'}")
    out = dict(spec.defaults)
    out.update({k: v for k, v in params.items() if v is not None})
    check_score_params(out)
    return out


def components(spec, alpha, beta, k, *, rng=None, diagnostics: bool = True,
               prompt_ids=None, backend: str = "auto", **params) -> dict[str, np.ndarray]:
    """The score of the selector ``spec`` (a registry entry) and its parts, all float64:

    ``score``; ``mi`` (I_k; NaN when ``diagnostics`` is False and the score needs none);
    ``weight`` (the difficulty weight the score used; NaN where it has none); ``mean``;
    ``sampled_p`` (the Thompson draw; NaN where none); with ``diagnostics`` also
    ``difficulty_factor`` m(1-m) and ``evidence_factor`` k/((n+1)(n+k)).

    Random draws, in this order: Thompson draws (one per prompt), then uniform keys.
    ``rng``: a numpy Generator or an int seed; required by the stochastic selectors.
    """
    p = resolve_params(spec, params)
    a, b = validate_alpha_beta(alpha, beta, prompt_ids)
    check_supported_range(a, b, prompt_ids)
    a, b = np.atleast_1d(a).ravel(), np.atleast_1d(b).ravel()
    if a.shape != b.shape:
        a, b = (np.ascontiguousarray(x) for x in np.broadcast_arrays(a, b))
    kk = validate_k(k, a.size if np.ndim(k) else None, prompt_ids)
    gen = as_rng(rng, spec.name) if spec.stochastic else None
    n = a + b
    m = a / n
    mi = compute_mi(a, b, kk, backend) if (spec.uses_mi or diagnostics) \
        else np.full(a.shape, np.nan)
    scored = spec.score(Candidates(a, b, kk, m, mi, gen), **p)
    out = {"score": scored.score, "mi": mi, "weight": _or_nan(scored.weight, a.shape),
           "mean": m, "sampled_p": _or_nan(scored.sampled_p, a.shape)}
    if diagnostics:
        out.update(diagnostic_factors(m, n, kk))
    return out


def diagnostic_factors(m: np.ndarray, n: np.ndarray, k) -> dict[str, np.ndarray]:
    """difficulty_factor m(1-m) and evidence_factor k/((n+1)(n+k)) (validated input)."""
    return {"difficulty_factor": m * (1.0 - m), "evidence_factor": k / ((n + 1.0) * (n + k))}


def _or_nan(x, shape) -> np.ndarray:
    return np.full(shape, np.nan) if x is None else x


def diagnostics(alpha, beta, k, *, backend: str = "auto") -> dict[str, np.ndarray]:
    """The selection table's diagnostic columns (mi, mean, difficulty_factor,
    evidence_factor) for candidates whose score comes from elsewhere (random keys)."""
    a, b = validate_alpha_beta(alpha, beta)
    check_supported_range(a, b)
    a, b = np.atleast_1d(a).ravel(), np.atleast_1d(b).ravel()
    kk = validate_k(k, a.size if np.ndim(k) else None)
    n = a + b
    m = a / n
    return {"mi": compute_mi(a, b, kk, backend), "mean": m, **diagnostic_factors(m, n, kk)}
