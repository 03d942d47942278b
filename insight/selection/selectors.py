"""Selector objects: draw the next batch from the shared posterior, behind one interface.

Three ways to draw, each used by the selectors the registry (insight/selection/registry.py)
assigns to it: ``ScoringSelector`` scores a candidate pool with the selector's score
function (insight/selection/scores.py) and takes the B best (or samples B); ``UniformSelector``
draws uniformly without replacement, epoch-style (state: the epoch);
``DynamicSamplingSelector`` draws DAPO's generation batches the same way (the pipeline
filters and refills, insight/selection/dapo.py).

Candidates: the whole dataset (``pool_ratio=None``) or a uniformly drawn pool of
ceil(pool_ratio * B) prompts (MoPPS's ts_ratio), minus ``exclude``. Choice: ``topk`` (the
B best scores; ties broken by a seeded random permutation) or ``softmax`` (B draws without
replacement from softmax(score / temperature), done exactly with the Gumbel-top-k trick).

Randomness: selectors hold no RNG. ``select`` takes the Generator the pipeline derives
from (run seed, round) and consumes it in a fixed order: pool draw, Thompson draws (one
per candidate), the tie-break permutation, Gumbel keys (softmax) or uniform keys. The same state,
posterior and Generator state give the same Selection.

The selection table has one row per scored candidate with exactly the store's columns:
prompt_id, score, mi, weight, alpha, beta, mean, difficulty_factor, evidence_factor,
selected, rank, selector. ``mi`` is I_k for every selector (a diagnostic where the score does
not use it); ``weight`` is the difficulty weight the score used (w(m) for insight, w(p)
for insight-sampled, 1 for mi) and null for selectors without one. ``rank``: 1..B for the
selected prompts in selection order (score order for topk, draw order for softmax);
the unselected candidates continue B+1, B+2, ... in descending score, ties broken by the
same seeded permutation. For the epoch-style draws (uniform, dynamic-sampling) the score is the random key: U(1, 2)
for prompts not yet drawn in the current epoch and U(0, 1) for prompts of the next epoch
(only offered when the current epoch has fewer than B prompts left), so rank order is
draw order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from insight.selection import scores
from insight.selection.posterior import PosteriorState, validate_outcomes
from insight.selection.validate import check_lengths, validate_k

TABLE_SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("score", pa.float64()), ("mi", pa.float64()),
    ("weight", pa.float64()), ("alpha", pa.float64()), ("beta", pa.float64()),
    ("mean", pa.float64()), ("difficulty_factor", pa.float64()),
    ("evidence_factor", pa.float64()), ("selected", pa.bool_()), ("rank", pa.int32()),
    ("selector", pa.string()),
])



# --------------------------------------------------------------------------------------
# selection result and protocol
# --------------------------------------------------------------------------------------
@dataclass
class Selection:
    prompt_ids: list[str]          # the chosen batch, in rank order
    table: pa.Table                # every scored candidate (TABLE_SCHEMA)
    info: dict = field(default_factory=dict)   # counts for logs: candidates, pool, epoch


@runtime_checkable
class Selector(Protocol):
    name: str

    def select(self, posterior: PosteriorState, batch_size: int, k: int,
               rng: np.random.Generator, exclude=frozenset()) -> Selection: ...

    def observe(self, prompt_ids, successes, trials) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def _check_batch(batch_size, k) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if np.ndim(k) != 0:
        raise ValueError("select takes one k (rollouts per prompt) for the round")
    return validate_k(k)


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError("select needs rng: a numpy Generator derived from (run seed, round)")
    return rng


def _available(posterior: PosteriorState, exclude) -> np.ndarray:
    """Boolean mask of prompts not in ``exclude`` (unknown excluded ids are ignored)."""
    mask = np.ones(len(posterior), dtype=bool)
    if exclude:
        index = posterior.index_map()
        pos = [index[p] for p in exclude if p in index]
        mask[np.asarray(pos, dtype=np.int64)] = False
    return mask


def _order(scores: np.ndarray, n_select: int, rng: np.random.Generator, sampling: str,
           temperature: float) -> np.ndarray:
    """Candidate positions: the selected first (selection order), then the rest by score.

    Ties break uniformly at random: a stable sort of the scores taken in a random
    permutation of the candidates. topk: the order by descending score. softmax: the
    Gumbel-top-k trick, keys score / temperature + Gumbel noise, whose order is the order
    of n_select successive draws without replacement from softmax(score / temperature);
    the unselected candidates follow by descending score.
    """
    n = scores.shape[0]
    perm = rng.permutation(n)
    by_score = perm[np.argsort(-scores[perm], kind="stable")]
    if sampling == "topk":
        return by_score
    keys = scores / temperature + rng.gumbel(size=n)
    top = np.argpartition(-keys, n_select - 1)[:n_select] if n_select < n else np.arange(n)
    chosen = top[np.argsort(-keys[top], kind="stable")]
    rest = np.ones(n, dtype=bool)
    rest[chosen] = False
    return np.concatenate([chosen, by_score[rest[by_score]]])


def _build_table(ids: np.ndarray, comp: dict, alpha: np.ndarray, beta: np.ndarray,
                 order: np.ndarray, n_select: int, name: str) -> tuple[list[str], pa.Table]:
    n = len(ids)
    rank = np.empty(n, dtype=np.int32)
    rank[order] = np.arange(1, n + 1, dtype=np.int32)
    selected = rank <= n_select
    weight = comp["weight"]
    cols = [
        pa.array(ids.tolist(), pa.string()),
        pa.array(comp["score"], pa.float64()),
        pa.array(comp["mi"], pa.float64()),
        pa.array(weight, pa.float64(), mask=np.isnan(weight)),
        pa.array(alpha, pa.float64()), pa.array(beta, pa.float64()),
        pa.array(comp["mean"], pa.float64()),
        pa.array(comp["difficulty_factor"], pa.float64()),
        pa.array(comp["evidence_factor"], pa.float64()),
        pa.array(selected, pa.bool_()), pa.array(rank, pa.int32()),
        pa.array([name], pa.string()).take(np.zeros(n, dtype=np.int32)),
    ]
    chosen = [str(x) for x in ids[order[:n_select]]]
    return chosen, pa.Table.from_arrays(cols, schema=TABLE_SCHEMA)


def empty_table() -> pa.Table:
    return TABLE_SCHEMA.empty_table()


# --------------------------------------------------------------------------------------
# scoring selectors (insight, insight-sampled, mi, difficulty, mopps)
# --------------------------------------------------------------------------------------
class ScoringSelector:
    """Score a candidate pool with the selector's score function and take B.

    ``spec`` is the selector's registry entry: its score function and the parameters it
    takes from ``cfg``."""

    def __init__(self, cfg, spec):
        self.cfg = cfg
        self.spec = spec
        self.name: str = cfg.type

    def _params(self) -> dict:
        return {k: getattr(self.cfg, k) for k in self.spec.params}

    def select(self, posterior: PosteriorState, batch_size: int, k: int,
               rng: np.random.Generator, exclude=frozenset()) -> Selection:
        k = _check_batch(batch_size, k)
        rng = _check_rng(rng)
        avail = np.flatnonzero(_available(posterior, exclude))
        pool = avail
        if self.cfg.pool_ratio is not None:
            size = min(len(avail), math.ceil(self.cfg.pool_ratio * batch_size))
            pool = np.sort(rng.choice(avail, size=size, replace=False))
        if len(pool) == 0:
            return Selection([], empty_table(), {"candidates": 0, "available": 0})
        a, b = posterior.alpha[pool], posterior.beta[pool]
        comp = scores.components(self.spec, a, b, k, rng=rng, diagnostics=True,
                                 **self._params())
        n_select = min(batch_size, len(pool))
        order = _order(comp["score"], n_select, rng, self.cfg.sampling, self.cfg.temperature)
        chosen, table = _build_table(posterior.prompt_ids[pool], comp, a, b, order,
                                     n_select, self.name)
        return Selection(chosen, table, {"candidates": int(len(pool)),
                                         "available": int(len(avail))})

    def observe(self, prompt_ids, successes, trials) -> None:
        """Nothing to record: the belief lives in the PosteriorState."""
        validate_outcomes(successes, trials)

    def state_dict(self) -> dict:
        return {"type": self.name}

    def load_state_dict(self, state: dict) -> None:
        _check_state_type(state, self.name)


def _check_state_type(state: dict, name: str) -> None:
    if not isinstance(state, dict):
        raise ValueError(f"selector state must be a dict, got {type(state).__name__}")
    if "type" in state and state["type"] != name:
        raise ValueError(f"selector state is for {state['type']!r}, not {name!r}")


# --------------------------------------------------------------------------------------
# uniform (epoch-style) and dynamic sampling
# --------------------------------------------------------------------------------------
class UniformSelector:
    """Uniform without replacement, epoch-style.

    State: ``epoch`` and the prompts already rolled out in it (``consumed``), recorded by
    ``observe`` (the finished groups). ``select`` draws B prompts uniformly among the
    prompts not yet consumed this epoch (and not excluded); when fewer than B remain it
    takes all of them and fills up with prompts of the next epoch. Those are recorded in
    ``next_consumed`` by ``observe``; once every prompt of the dataset is consumed the
    epoch advances and ``next_consumed`` becomes the new epoch's ``consumed``.
    """

    def __init__(self, cfg, spec=None):
        self.cfg = cfg
        self.name: str = cfg.type
        self.epoch = 0
        self.n_prompts: int | None = None
        self.consumed: set[str] = set()
        self.next_consumed: set[str] = set()

    def _draw_size(self, batch_size: int) -> int:
        return batch_size

    def select(self, posterior: PosteriorState, batch_size: int, k: int,
               rng: np.random.Generator, exclude=frozenset()) -> Selection:
        k = _check_batch(batch_size, k)
        rng = _check_rng(rng)
        n_draw = self._draw_size(batch_size)
        self.n_prompts = len(posterior)
        avail = _available(posterior, exclude)
        index = posterior.index_map()
        done = np.zeros(len(posterior), dtype=bool)
        done[[index[p] for p in self.consumed if p in index]] = True
        current = np.flatnonzero(avail & ~done)
        keys = {"current": rng.random(len(current)) + 1.0}
        cand = current
        n_next = 0
        if len(current) < n_draw:
            nxt_done = np.zeros(len(posterior), dtype=bool)
            nxt_done[[index[p] for p in self.next_consumed if p in index]] = True
            nxt = np.flatnonzero(avail & done & ~nxt_done)
            keys["next"] = rng.random(len(nxt))
            cand = np.concatenate([current, nxt])
            n_next = len(nxt)
        if len(cand) == 0:
            return Selection([], empty_table(), {"candidates": 0, "epoch": self.epoch})
        score = np.concatenate(list(keys.values()))
        cand_order = np.argsort(cand, kind="stable")
        cand, score = cand[cand_order], score[cand_order]
        a, b = posterior.alpha[cand], posterior.beta[cand]
        comp = scores.diagnostics(a, b, k)
        comp["score"] = score
        comp["weight"] = np.full(len(cand), np.nan)
        n_select = min(n_draw, len(cand))
        order = np.argsort(-score, kind="stable")
        chosen, table = _build_table(posterior.prompt_ids[cand], comp, a, b, order,
                                     n_select, self.name)
        from_next = int(min(n_select, max(0, n_select - len(current))))
        return Selection(chosen, table, {"candidates": int(len(cand)), "epoch": self.epoch,
                                         "from_next_epoch": from_next,
                                         "next_epoch_candidates": int(n_next)})

    def observe(self, prompt_ids, successes, trials) -> None:
        """Record the prompts rolled out this round (the epoch bookkeeping)."""
        ids = [str(p) for p in np.asarray(prompt_ids, dtype=object).tolist()]
        check_lengths(ids, successes=successes, trials=trials)
        validate_outcomes(successes, trials)
        for p in ids:
            if p in self.consumed:
                self.next_consumed.add(p)
            else:
                self.consumed.add(p)
        if self.n_prompts is not None and len(self.consumed) >= self.n_prompts:
            self.epoch += 1
            self.consumed, self.next_consumed = self.next_consumed, set()

    def state_dict(self) -> dict:
        return {"type": self.name, "epoch": self.epoch, "n_prompts": self.n_prompts,
                "consumed": sorted(self.consumed), "next_consumed": sorted(self.next_consumed)}

    def load_state_dict(self, state: dict) -> None:
        _check_state_type(state, self.name)
        unknown = set(state) - {"type", "epoch", "n_prompts", "consumed", "next_consumed"}
        if unknown:
            raise ValueError(f"unknown keys in {self.name} selector state: {sorted(unknown)}")
        self.epoch = int(state.get("epoch", 0))
        n = state.get("n_prompts")
        self.n_prompts = None if n is None else int(n)
        self.consumed = set(map(str, state.get("consumed", [])))
        self.next_consumed = set(map(str, state.get("next_consumed", [])))


class DynamicSamplingSelector(UniformSelector):
    """DAPO dynamic sampling: each ``select`` draws one generation batch of
    ceil(gen_batch_ratio * B) prompts, uniformly and epoch-style; call it again with
    ``exclude`` = the prompts already drawn this round for the refill batches."""

    def _draw_size(self, batch_size: int) -> int:
        return math.ceil(self.cfg.gen_batch_ratio * batch_size)
