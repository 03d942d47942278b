"""Re-scoring a recorded round: the posterior a round saw, rebuilt from the published
record, and the candidate table its selector drew from it, recomputed.

Why: a round's selection is a deterministic function of the posterior after the round
before, the selector's saved state and the round's seed (`stage_seed(seed, round,
SELECT)`, one more stream per DAPO refill). So the record need not store every
candidate's row (the compact record, `record.candidates: selected`): the audit
recomputes them here, and `insight replay` scores the same inputs with another selector.

Everything is read from the published Parquet (`insight.record.published`), never from
`insight.duckdb`, so both work while a run trains. The posterior is rebuilt the way the
store rebuilds it (`RunStore.posterior_snapshot`): the full snapshot at or before the
round, overwritten by the deltas after it (`insight.record.compact`). The view the round
scored (the run's prior option and forgetting) is then built by the pipeline's one rule
(`insight.selection.views.view_of_record`, as `round_state._posterior_view` does) from
the published outcomes by round, the published prompts' group column and, for the
feature prior, the run's per-checkpoint feature cache (`layout.features_path`), which a
report never recomputes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from insight.config import RunConfig, config_from_dict
from insight.record import compact, layout
from insight.record.published import (RunView, posterior_rows, prompt_groups, run_row,
                                      selector_state_json, stored_selections,
                                      success_counts_by_round)
from insight.record.run import SELECT, stage_seed
from insight.selection.posterior import PosteriorState
from insight.selection.registry import get, make_selector
from insight.selection.selectors import Selector
from insight.selection.views import view_of_record

# The columns a recomputed candidate row carries, in the store's order (schema.py).
SELECTION_COLUMNS = ("run_id", "round", "prompt_id", "selector", "score", "mi", "weight",
                     "alpha", "beta", "mean", "difficulty_factor", "evidence_factor",
                     "selected", "rank", "gen_batch")


@dataclass(frozen=True)
class RecordedRun:
    """What re-scoring needs of a run: its id, config and seed (from runs.parquet)."""

    run_dir: Path
    run_id: str
    config: RunConfig
    seed: int

    @classmethod
    def read(cls, view: RunView) -> "RecordedRun":
        row = run_row(view)
        try:
            cfg = config_from_dict(json.loads(row["config_json"]), source="runs.config_json")
        except ValueError as err:
            raise ValueError(f"cannot re-score {view.run_dir}: its recorded config does not "
                             f"load ({str(err).splitlines()[-1].strip()})") from None
        seed = row["seed"] if row["seed"] is not None else cfg.seed
        return cls(view.run_dir, row["run_id"], cfg, int(seed))

    @property
    def compact_candidates(self) -> bool:
        return self.config.record.candidates != "all"


class PosteriorHistory:
    """The stored posterior after each published round, rebuilt in round order. Walking
    rounds in ascending order reads each round's posterior file once; a jump backwards
    or past a snapshot restarts from the snapshot at or before the target."""

    def __init__(self, view: RunView, run: RecordedRun):
        self.view, self.run = view, run
        self.every = run.config.record.posterior_snapshot_every
        self._round: int | None = None
        self._post: PosteriorState | None = None
        self._totals: tuple[int, np.ndarray, np.ndarray] | None = None  # through round
        self._by_round: dict[int, pa.Table] = {}  # round -> (round, prompt_id, s, n)
        self._group_labels: tuple[list, list] | None = None

    def after(self, round_: int) -> PosteriorState:
        """The posterior stored after round `round_` (no empirical-Bayes view)."""
        base = compact.snapshot_round(round_, self.every)
        if self._round is None or not base <= self._round <= round_:
            self._round, self._post = base, self._snapshot(base)
        while self._round < round_:
            self._round += 1
            self._post = compact.overwrite(self._post, self._rows(self._round))
        return self._post

    def before(self, round_: int) -> PosteriorState:
        """What round `round_`'s selection scored: the view of the posterior after
        round_ - 1 under the run's `posterior` options (prior, forgetting), built by the
        pipeline's own rule (`views.view_of_record`, as `round_state._posterior_view`)."""
        post = self.after(round_ - 1)
        cfg = self.run.config
        return view_of_record(
            post, cfg.posterior, now=round_ - 1, scoring=True,
            totals=lambda: (post.prompt_ids, *self._totals_through(round_ - 1, post)),
            by_round=lambda: self._history_through(round_ - 1),
            groups=lambda: self._groups(cfg.data.group_field),
            features=self._features(round_ - 1)).posterior

    def _rows(self, round_: int) -> pa.Table:
        if round_ not in self.view.rounds:
            raise ValueError(f"round {round_} of {self.view.run_dir} is not published; the "
                             "posterior after it cannot be rebuilt")
        return posterior_rows(self.view, round_)

    def _snapshot(self, round_: int) -> PosteriorState:
        t = self._rows(round_)
        if t.num_rows == 0:
            raise ValueError(f"round {round_} of {self.view.run_dir} holds no posterior "
                             "snapshot")
        return PosteriorState.from_arrow(t)

    def _outcomes(self, round_: int, after: int = -1) -> list[pa.Table]:
        """(round, prompt_id, s, n) of each round in (after, round_], in round order; the
        rounds not read before are read in one scan of their rollouts files."""
        todo = [r for r in self.view.rounds if r <= round_ and r not in self._by_round]
        if todo:
            t = success_counts_by_round(self.view, todo)
            for r in todo:
                self._by_round[r] = t.filter(pc.equal(t["round"], r))
        return [self._by_round[r] for r in sorted(self._by_round) if after < r <= round_]

    def _totals_through(self, round_: int, post: PosteriorState):
        """Successes and rollouts of every prompt in rounds <= round_, aligned with
        `post`; kept across calls so a walk in round order adds each round once."""
        if self._totals is not None and self._totals[0] <= round_:
            done, s, n = self._totals
        else:
            done, s, n = -1, np.zeros(len(post)), np.zeros(len(post))
        s, n = s.copy(), n.copy()
        for t in self._outcomes(round_, after=done):
            idx = post.index_of(np.asarray(t["prompt_id"].to_pylist(), dtype=object))
            np.add.at(s, idx, np.asarray(t["s"]))
            np.add.at(n, idx, np.asarray(t["n"]))
        self._totals = (round_, s, n)
        return s, n

    def _history_through(self, round_: int):
        """(prompt ids, round, s, n): one row per prompt and round <= round_, in round
        order: the history time-aware forgetting weighs."""
        t = pa.concat_tables(self._outcomes(round_))
        return (t["prompt_id"].to_pylist(), np.asarray(t["round"]), np.asarray(t["s"]),
                np.asarray(t["n"]))

    def _groups(self, column: str):
        if self._group_labels is None:
            t = prompt_groups(self.view, column)
            self._group_labels = (t["prompt_id"].to_pylist(), t["grp"].to_pylist())
        return self._group_labels

    def _features(self, policy_round: int):
        """(prompt ids, features) the feature prior scored round policy_round + 1 with,
        from the run's per-checkpoint cache; None where the run computed none (another
        prior, or a selector that ignores the posterior). A missing cache is refused: a
        report does not recompute a policy's embeddings."""
        cfg = self.run.config
        if cfg.posterior.prior != "feature-knn" or not get(cfg.selector.type).uses_posterior:
            return None
        path = layout.features_path(self.view.run_dir, policy_round)
        if not path.is_file():
            raise ValueError(f"cannot re-score round {policy_round + 1} of "
                             f"{self.view.run_dir}: its feature prior's cache {path} is "
                             "missing (written by the run's select stage; a report does "
                             "not recompute embeddings)")
        with np.load(path, allow_pickle=False) as z:
            return z["prompt_ids"].astype(object), z["features"]


def saved_selector(run: RecordedRun, view: RunView, round_: int) -> Selector:
    """The run's selector with the state it saved after round `round_`."""
    selector = make_selector(run.config.selector)
    state = selector_state_json(view, round_) if round_ in view.rounds else None
    if state:
        selector.load_state_dict(json.loads(state))
    return selector


def recompute_selections(view: RunView, run: RecordedRun, round_: int,
                         history: PosteriorHistory | None = None) -> pa.Table:
    """Every candidate row round `round_` scored (every generation batch), recomputed as
    the select and rollout stages computed it, checked against the rows the record
    kept. ValueError when they differ: the run was written by other code or config than
    this one reads it with, and a recomputed row would not be what the run saw."""
    history = history or PosteriorHistory(view, run)
    cfg = run.config
    post = history.before(round_)
    stored = stored_selections(view, round_)
    selector = saved_selector(run, view, round_ - 1)
    rng = np.random.default_rng(stage_seed(run.seed, round_, SELECT))
    first = selector.select(post, cfg.rollout.batch_size, cfg.rollout.k, rng)
    tables = [_with_round(first.table, run, round_, 0)]
    refill_batches = sorted(set(stored["gen_batch"].to_pylist()) - {0})
    if refill_batches:
        # the rollout stage draws refills with the state the select stage saved
        refill = make_selector(cfg.selector)
        refill.load_state_dict(selector.state_dict())
        drawn = set(first.prompt_ids)
        for gen_batch in refill_batches:
            rng = np.random.default_rng(stage_seed(run.seed, round_, SELECT * 1000 + gen_batch))
            sel = refill.select(post, cfg.rollout.batch_size, cfg.rollout.k, rng,
                                exclude=set(drawn))
            tables.append(_with_round(sel.table, run, round_, gen_batch))
            drawn |= set(sel.prompt_ids)
    table = pa.concat_tables(tables)
    _check_against_record(view, round_, table, stored)
    return table


def _with_round(t: pa.Table, run: RecordedRun, round_: int, gen_batch: int) -> pa.Table:
    n = t.num_rows
    cols = {"run_id": pa.array([run.run_id] * n, pa.string()),
            "round": pa.array(np.full(n, round_, np.int32)),
            "gen_batch": pa.array(np.full(n, gen_batch, np.int32))}
    return pa.table({c: cols[c] if c in cols else t[c] for c in SELECTION_COLUMNS})


def _check_against_record(view: RunView, round_: int, table: pa.Table,
                          stored: pa.Table) -> None:
    key = {(p, g): (s, r) for p, g, s, r in zip(*(table[c].to_pylist() for c in
                                                   ("prompt_id", "gen_batch", "score", "rank")))}
    for p, g, s, r in zip(*(stored[c].to_pylist() for c in
                            ("prompt_id", "gen_batch", "score", "rank"))):
        got = key.get((p, g))
        if got is None or got[1] != r or not _same_score(got[0], s):
            raise ValueError(
                f"round {round_} of {view.run_dir}: the recomputed ranking differs from the "
                f"record (prompt {p!r}, gen_batch {g}: recorded rank {r}, recomputed "
                f"{None if got is None else got[1]}); the run was written by another "
                "version of the selector or config, so its unstored candidates cannot be "
                "recomputed")


def _same_score(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (np.isnan(a) and np.isnan(b))
