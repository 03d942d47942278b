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
round, overwritten by the deltas after it (`insight.record.compact`); with
`posterior.prior: empirical-bayes` unseen prompts get the prior fitted to the outcomes
before the round, as the select stage does (`round_state._posterior_view`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from insight.config import RunConfig, config_from_dict
from insight.record import compact
from insight.record.published import (RunView, posterior_rows, round_success_counts,
                                      run_row, selector_state_json, stored_selections)
from insight.record.run import SELECT, stage_seed
from insight.selection.posterior import PosteriorState
from insight.selection.prior import with_fitted_prior_for_unseen
from insight.selection.registry import make_selector
from insight.selection.selectors import Selector

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
        """What round `round_`'s selection scored: the posterior after round_ - 1, with
        unseen prompts at the fitted prior under `posterior.prior: empirical-bayes`."""
        post = self.after(round_ - 1)
        if self.run.config.posterior.prior != "empirical-bayes":
            return post
        successes, trials = self._outcomes_through(round_ - 1, post)
        return with_fitted_prior_for_unseen(post, successes, trials)

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

    def _outcomes_through(self, round_: int, post: PosteriorState):
        """Successes and rollouts of every prompt in rounds 1..round_, aligned with
        `post`; kept across calls so a walk in round order reads each round once."""
        if self._totals is not None and self._totals[0] <= round_:
            done, s, n = self._totals
            rounds = range(done + 1, round_ + 1)
        else:
            s, n = np.zeros(len(post)), np.zeros(len(post))
            rounds = range(1, round_ + 1)
        if len(rounds):
            t = round_success_counts(self.view, rounds)
            idx = post.index_of(np.asarray(t["prompt_id"].to_pylist(), dtype=object))
            s, n = s.copy(), n.copy()
            np.add.at(s, idx, np.asarray(t["s"]))
            np.add.at(n, idx, np.asarray(t["n"]))
        self._totals = (round_, s, n)
        return s, n


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
