"""Selectors: which prompts to roll out next, all behind one interface, sharing the posterior.

=====================  =============================================================
name                   rule (score, higher is better)
=====================  =============================================================
``insight``            w(m) * I_k(a, b) at the posterior mean m (the method)
``insight-sampled``    w(p) * I_k(a, b) with a Thompson draw p ~ Beta(a, b) (ablation)
``mi``                 I_k(a, b) alone
``difficulty``         -(m - tau)^2: closeness of the mean to a target
``mopps``              -(p - tau)^2 with p ~ Beta(a, b): MoPPS Top-B
``uniform``            uniform without replacement, epoch-style (state: the epoch)
``dynamic-sampling``   DAPO: uniform epoch-style draws of generation batches; the
                       pipeline filters groups with ``filter_groups`` (keep 0 < s < k),
                       refills with further draws (``exclude`` = already drawn this round)
                       up to ``max_num_gen_batches``, truncates to B and counts every
                       extra rollout (``DynamicSamplingRound`` does the accounting)
=====================  =============================================================

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
same seeded permutation. For uniform and dynamic-sampling the score is the random key: U(1, 2)
for prompts not yet drawn in the current epoch and U(0, 1) for prompts of the next epoch
(only offered when the current epoch has fewer than B prompts left), so rank order is
draw order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol, Union, runtime_checkable

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from insight import acquisition
from insight.posterior import PosteriorState, validate_outcomes

TABLE_SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("score", pa.float64()), ("mi", pa.float64()),
    ("weight", pa.float64()), ("alpha", pa.float64()), ("beta", pa.float64()),
    ("mean", pa.float64()), ("difficulty_factor", pa.float64()),
    ("evidence_factor", pa.float64()), ("selected", pa.bool_()), ("rank", pa.int32()),
    ("selector", pa.string()),
])


# --------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _PoolFields(_Strict):
    pool_ratio: float | None = Field(None, ge=1.0, description=(
        "Candidate pool size as a multiple of the batch size B (MoPPS's ts_ratio, 8-16 in "
        "its scripts): ceil(pool_ratio * B) prompts drawn uniformly each round. None scores "
        "the whole dataset."))
    sampling: Literal["topk", "softmax"] = Field("topk", description=(
        "topk: the B highest scores, ties broken by a seeded RNG. softmax: B draws without "
        "replacement from softmax(score / temperature)."))
    temperature: float = Field(1.0, gt=0, description=(
        "Softmax temperature (only with sampling='softmax'); in units of the score."))


class _WeightFields(_Strict):
    weight: Literal["power", "gaussian"] = Field("power", description=(
        "Difficulty weight: power (4 m (1 - m))**gamma or gaussian "
        "exp(-(m - tau)^2 / (2 sigma^2))."))
    gamma: float = Field(1.0, ge=0, description="Exponent of the power weight (0 = mi alone).")
    tau: float = Field(0.5, ge=0, le=1, description="Target success rate of the gaussian weight.")
    sigma: float = Field(0.25, gt=0, description="Width of the gaussian weight.")


class InsightConfig(_PoolFields, _WeightFields):
    """InSight: weighted mutual information w(m) * I_k(a, b) at the posterior mean."""
    type: Literal["insight"] = Field("insight", description="Selector name.")


class InsightSampledConfig(_PoolFields, _WeightFields):
    """InSight ablation: the weight at a Thompson draw p ~ Beta(a, b) instead of the mean."""
    type: Literal["insight-sampled"] = Field("insight-sampled", description="Selector name.")


class MIConfig(_PoolFields):
    """Mutual information alone (evidence only, no difficulty weight)."""
    type: Literal["mi"] = Field("mi", description="Selector name.")


class DifficultyConfig(_PoolFields):
    """Difficulty only: closeness of the posterior mean to tau, score -(m - tau)^2."""
    type: Literal["difficulty"] = Field("difficulty", description="Selector name.")
    tau: float = Field(0.5, ge=0, le=1, description="Target success rate.")


class MoPPSConfig(_PoolFields):
    """MoPPS (Top-B): Thompson draw p ~ Beta(a, b), the B closest to tau."""
    type: Literal["mopps"] = Field("mopps", description="Selector name.")
    tau: float = Field(0.5, ge=0, le=1, description="Target success rate (MoPPS uses 0.5).")


class UniformConfig(_Strict):
    """Uniform without replacement, epoch-style (every prompt once per epoch)."""
    type: Literal["uniform"] = Field("uniform", description="Selector name.")


class DynamicSamplingConfig(_Strict):
    """DAPO dynamic sampling: draw generation batches uniformly (epoch-style), keep groups
    with 0 < s < k, refill until B are kept or max_num_gen_batches, truncate to B."""
    type: Literal["dynamic-sampling"] = Field("dynamic-sampling", description="Selector name.")
    max_num_gen_batches: int = Field(10, ge=1, description=(
        "Generation batches per round at most (verl's algorithm.filter_groups."
        "max_num_gen_batches); the round trains on fewer than B groups if they run out."))
    gen_batch_ratio: float = Field(1.0, ge=1.0, description=(
        "Prompts per generation batch as a multiple of B (verl's gen_batch_size / "
        "train_batch_size)."))


SelectorConfig = Annotated[
    Union[InsightConfig, InsightSampledConfig, MIConfig, DifficultyConfig, MoPPSConfig,
          UniformConfig, DynamicSamplingConfig],
    Field(discriminator="type"),
]
_CONFIG_ADAPTER = TypeAdapter(SelectorConfig)


def parse_selector_config(cfg: Any) -> Any:
    """A SelectorConfig from a config object, a dict ({"type": ..., ...}) or a name."""
    if isinstance(cfg, BaseModel):
        return cfg
    if isinstance(cfg, str):
        cfg = {"type": cfg}
    return _CONFIG_ADAPTER.validate_python(cfg)


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
    return acquisition.validate_k(k)


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
    """Score a candidate pool with ``acquisition.score_components`` and take B."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.name: str = cfg.type

    def _params(self) -> dict:
        allowed = acquisition.selector_params(self.name)
        return {k: getattr(self.cfg, k) for k in allowed}

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
        comp = acquisition.score_components(self.name, a, b, k, rng=rng, diagnostics=True,
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

    def __init__(self, cfg):
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
        comp = acquisition.score_components("mi", a, b, k, diagnostics=True)
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
        acquisition.check_lengths(ids, successes=successes, trials=trials)
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


def filter_groups(successes, trials) -> np.ndarray:
    """DAPO's filter: keep the groups with mixed outcomes, 0 < s < k (reward std > 0 for
    binary rewards; with fractional rewards pass per-group spread instead)."""
    s, t = validate_outcomes(successes, trials)
    return (s > 0) & (s < t)


def truncate_kept(keep, room: int) -> np.ndarray:
    """Keep only the first ``room`` True entries of ``keep`` (DAPO truncation to B)."""
    keep = np.asarray(keep, dtype=bool).copy()
    idx = np.flatnonzero(keep)
    keep[idx[max(int(room), 0):]] = False
    return keep


@dataclass
class DynamicSamplingRound:
    """Accounting for one round of dynamic sampling (the pipeline drives the loop):

        rnd = DynamicSamplingRound(batch_size=B, max_num_gen_batches=cfg.max_num_gen_batches)
        drawn = set()
        while rnd.wants_more():
            sel = selector.select(post, B, k, rng, exclude=drawn); drawn |= set(sel.prompt_ids)
            if not sel.prompt_ids: break
            s, t = generate_and_verify(sel.prompt_ids)
            kept = rnd.add(sel.prompt_ids, s, t)      # filtered and truncated
        rnd.summary()  # rollouts generated / kept / extra, zero-advantage counts
    """

    batch_size: int
    max_num_gen_batches: int
    gen_batches: int = 0
    kept_ids: list[str] = field(default_factory=list)
    groups_generated: int = 0
    rollouts_generated: float = 0.0
    rollouts_kept: float = 0.0
    all_fail: int = 0
    all_success: int = 0
    truncated: int = 0

    def wants_more(self) -> bool:
        return (len(self.kept_ids) < self.batch_size
                and self.gen_batches < self.max_num_gen_batches)

    def add(self, prompt_ids, successes, trials) -> np.ndarray:
        """Record one generation batch; returns its kept mask (filtered, then truncated)."""
        ids = [str(p) for p in prompt_ids]
        acquisition.check_lengths(ids, successes=successes, trials=trials)
        s, t = validate_outcomes(successes, trials)
        s, t = np.broadcast_to(s, (len(ids),)), np.broadcast_to(t, (len(ids),))
        mixed = filter_groups(s, t)
        keep = truncate_kept(mixed, self.batch_size - len(self.kept_ids))
        self.gen_batches += 1
        self.groups_generated += len(ids)
        self.rollouts_generated += float(t.sum())
        self.rollouts_kept += float(t[keep].sum())
        self.all_fail += int((s == 0).sum())
        self.all_success += int(((s == t) & (t > 0)).sum())
        self.truncated += int(mixed.sum() - keep.sum())
        self.kept_ids.extend(p for p, kf in zip(ids, keep) if kf)
        return keep

    def summary(self) -> dict:
        g = max(self.groups_generated, 1)
        return {"gen_batches": self.gen_batches, "groups_generated": self.groups_generated,
                "groups_kept": len(self.kept_ids), "groups_truncated": self.truncated,
                "rollouts_generated": self.rollouts_generated,
                "rollouts_kept": self.rollouts_kept,
                "extra_rollouts": self.rollouts_generated - self.rollouts_kept,
                "all_fail_share": self.all_fail / g, "all_success_share": self.all_success / g,
                "filtered_share": (self.all_fail + self.all_success) / g,
                "reached_max_gen_batches": (len(self.kept_ids) < self.batch_size
                                            and self.gen_batches >= self.max_num_gen_batches)}


# --------------------------------------------------------------------------------------
# factory
# --------------------------------------------------------------------------------------
def make_selector(cfg, seed: int | None = None) -> Selector:
    """The selector for ``cfg`` (a SelectorConfig, a dict with ``type``, or a name).

    ``seed`` is accepted for call-site compatibility and unused: selectors hold no RNG;
    every ``select`` takes the Generator the pipeline derives from (run seed, round).
    """
    cfg = parse_selector_config(cfg)
    if cfg.type == "uniform":
        return UniformSelector(cfg)
    if cfg.type == "dynamic-sampling":
        return DynamicSamplingSelector(cfg)
    return ScoringSelector(cfg)
