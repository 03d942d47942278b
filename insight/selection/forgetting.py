"""Time-aware forgetting: evidence counts less the more rounds ago it was observed (an
extension beyond the paper; issue 12).

Why: the posterior's ``lam`` decays a prompt's evidence each time the prompt is observed
again, so a prompt last seen 30 rounds ago (30 policy updates ago) keeps its old counts
in full. For a policy that keeps learning, what matters is how old the evidence is, not
how often the prompt was revisited. Here an outcome observed at round r_obs enters the
selectors' view at round ``now`` with weight

    w = 0.5 ** ((now - r_obs) / half_life)

so after ``half_life`` rounds it counts half, and a prompt unobserved for long drifts back
to its prior (whichever prior the run uses). The weights derive from the stored outcomes
(their round) alone, so a resumed run rebuilds exactly the same view. The stored
posterior is not changed; only what the selectors score is.
"""

from __future__ import annotations

import math

import numpy as np

from insight.selection.posterior import PosteriorState, validate_outcomes


def check_half_life(half_life) -> float:
    if isinstance(half_life, bool) or not isinstance(half_life, (int, float)) \
            or not math.isfinite(half_life) or half_life <= 0:
        raise ValueError(f"half_life must be a finite number of rounds > 0, got {half_life!r}")
    return float(half_life)


def round_discount(half_life: float) -> float:
    """The per-round factor 0.5 ** (1 / half_life)."""
    return 0.5 ** (1.0 / check_half_life(half_life))


def age_weights(observed_round, now: int, half_life: float) -> np.ndarray:
    """0.5 ** ((now - observed_round) / half_life); ValueError for evidence from the future."""
    h = check_half_life(half_life)
    age = now - np.asarray(observed_round, dtype=np.float64)
    if (age < 0).any():
        raise ValueError(f"outcomes observed after round {now} cannot enter its view")
    return np.power(0.5, age / h)


def decayed_counts(positions, observed_round, successes, trials, *, size: int, now: int,
                   half_life: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt decayed (successes, trials), arrays of length ``size``: the sum over the
    outcome rows (prompt position, round observed, s, n) of w * s and w * n."""
    s, n = validate_outcomes(successes, trials)
    pos = np.asarray(positions, dtype=np.int64)
    w = age_weights(observed_round, now, half_life)
    ds, dn = np.zeros(size), np.zeros(size)
    np.add.at(ds, pos, w * s)
    np.add.at(dn, pos, w * n)
    return ds, dn


def decayed_view(state: PosteriorState, prior_alpha, prior_beta, decayed_successes,
                 decayed_trials) -> PosteriorState:
    """Every prompt at its prior plus its decayed evidence (the view the selectors score)."""
    s, n = validate_outcomes(decayed_successes, decayed_trials, state.prompt_ids)
    alpha = np.broadcast_to(np.asarray(prior_alpha, dtype=np.float64), s.shape) + s
    beta = np.broadcast_to(np.asarray(prior_beta, dtype=np.float64), s.shape) + (n - s)
    return PosteriorState(state.prompt_ids, alpha, beta, state.a0, state.b0)
