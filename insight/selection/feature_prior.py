"""A feature prior from the policy itself: predict a prompt's success from the prompts
that look like it to the current policy (an extension beyond the paper; issue 12).

Why: in a large pool most prompts are seen at most once, so any per-prompt belief starts
from a prior, and a population or group prior says nothing about *this* prompt. The
policy's own representation of a prompt (its mean-pooled hidden states) places it near
prompts whose outcomes are known; their success rates are a cheap, per-prompt guess
(one forward pass over the prompt, next to k sampled completions for a rollout).

The estimator: k-nearest neighbours among the observed prompts (Euclidean distance on
z-scored features; the prompt itself excluded), their smoothed rates (s + 1/2) / (t + 1)
averaged with weights t (more rollouts, more weight). The guess m becomes the prior
Beta(m c, (1 - m) c) with c = ``strength`` pseudo-rollouts, capped small (default 4, half
a group of 8) so a prompt's own outcomes outweigh its neighbours' after one group. Every
prompt is then its feature prior plus its own evidence, refitted each round from the
latest outcomes and the current policy's features.
"""

from __future__ import annotations

import numpy as np

from insight.selection.posterior import validate_outcomes

DEFAULT_NEIGHBOURS = 16
DEFAULT_STRENGTH = 4.0
_BRUTE_FORCE_CHUNK = 2048


def _standardize(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def _neighbours(query: np.ndarray, ref: np.ndarray, n: int) -> np.ndarray:
    """Indices into ``ref`` of the ``n`` nearest rows to each query row (unordered)."""
    if query.shape[1] <= 8:
        from scipy.spatial import cKDTree
        _, idx = cKDTree(ref).query(query, k=n)
        return np.asarray(idx).reshape(len(query), n)
    out = np.empty((len(query), n), dtype=np.int64)
    ref_sq = (ref * ref).sum(axis=1)
    for lo in range(0, len(query), _BRUTE_FORCE_CHUNK):
        q = query[lo:lo + _BRUTE_FORCE_CHUNK]
        d = ref_sq[None, :] - 2.0 * (q @ ref.T)
        out[lo:lo + len(q)] = np.argpartition(d, n - 1, axis=1)[:, :n]
    return out


def knn_prior(features, successes, trials, *, neighbours: int = DEFAULT_NEIGHBOURS,
              strength: float = DEFAULT_STRENGTH,
              fallback: tuple[float, float] = (1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt prior (alpha, beta) from the observed neighbours in feature space.

    ``features``: (n, d) array, one row per prompt; ``successes``/``trials``: each prompt's
    (possibly decayed) counts. A prompt's own outcomes never enter its prior. With fewer
    than two observed prompts every prompt gets ``fallback``.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    s, t = validate_outcomes(successes, trials)
    if x.ndim != 2 or len(x) != len(s) or not np.isfinite(x).all():
        raise ValueError(f"features must be a finite (n_prompts, d) array aligned with the "
                         f"counts ({len(s)} prompts), got shape {x.shape}")
    if isinstance(neighbours, bool) or int(neighbours) != neighbours or neighbours < 1:
        raise ValueError(f"neighbours must be an integer >= 1, got {neighbours!r}")
    if not (np.isfinite(strength) and strength > 0):
        raise ValueError(f"strength must be a finite number > 0, got {strength!r}")
    alpha, beta = np.full(len(s), float(fallback[0])), np.full(len(s), float(fallback[1]))
    obs = np.flatnonzero(t > 0)
    if len(obs) < 2:
        return alpha, beta
    z = _standardize(x)
    n_nb = min(int(neighbours) + 1, len(obs))          # one more: the prompt itself
    nb = obs[_neighbours(z, z[obs], n_nb)]             # (n, n_nb) prompt indices
    rate = (s + 0.5) / (t + 1.0)
    w = np.where(nb == np.arange(len(s))[:, None], 0.0, t[nb])  # never its own outcomes
    if n_nb > int(neighbours):                          # drop the farthest if self absent
        far = np.argmax(((z[nb] - z[:, None, :]) ** 2).sum(axis=2), axis=1)
        keep_self_out = (w > 0).sum(axis=1) > int(neighbours)
        w[np.flatnonzero(keep_self_out), far[keep_self_out]] = 0.0
    m = (w * rate[nb]).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-12)
    m = np.clip(m, 0.005, 0.995)   # a guess never certain: keeps alpha, beta > 0
    return m * strength, (1.0 - m) * strength
