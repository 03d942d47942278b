"""What selection carries from one round to the next, and its one owner in the pipeline.

Three stages touch it: `select` draws the round's batch, `rollout` draws DAPO's refill
batches, `update_posterior` feeds the round's outcomes back. Each used to re-read and
re-write `rounds.selector_state` on its own, with its own idea of the prior of unseen
prompts; `SelectionState` is now the only code that loads the posterior and the
selector's state from the record and saves the selector's state back, so every draw of a
round sees the same posterior view (the empirical-Bayes prior included) and a stage
retried after a failure starts from what the previous stage saved.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from insight.record.run import Run
from insight.record.store import RunStore
from insight.selection.posterior import PosteriorState
from insight.selection.views import view_of_record
from insight.selection.registry import make_selector
from insight.selection.selectors import Selection, Selector


_log = logging.getLogger(__name__)


@dataclass
class SelectionState:
    """The posterior a round scores (after round `posterior_round`, unseen prompts given
    the fitted prior when `posterior.prior` is empirical-bayes) and the selector with
    the state it had after round `selector_round`."""

    run: Run
    posterior: PosteriorState
    selector: Selector

    @classmethod
    def load(cls, db: RunStore, run: Run, *, posterior_round: int, selector_round: int,
             for_update: bool = False, features=None) -> "SelectionState":
        """``for_update``: the view the posterior update starts from, which never applies
        time-aware forgetting (that is a view for scoring; the stored posterior keeps
        every count, so forgetting is never applied twice)."""
        post = _posterior_view(db, run, posterior_round, scoring=not for_update,
                               features=features)
        selector = make_selector(run.config.selector)
        state = db.selector_state(run.run_id, selector_round)
        if state:
            selector.load_state_dict(state)
        return cls(run, post, selector)

    @classmethod
    def initial(cls, run: Run, prompt_ids) -> "SelectionState":
        """Round 0: every training prompt at the configured prior, a fresh selector."""
        cfg = run.config.posterior
        post = PosteriorState.new(np.asarray(prompt_ids, dtype=object), a0=cfg.a0, b0=cfg.b0)
        return cls(run, post, make_selector(run.config.selector))

    def draw(self, rng: np.random.Generator, exclude=None) -> Selection:
        """One generation batch: B prompts (fewer when the pool runs dry), scored."""
        cfg = self.run.config.rollout
        if exclude:
            return self.selector.select(self.posterior, cfg.batch_size, cfg.k, rng,
                                        exclude=exclude)
        return self.selector.select(self.posterior, cfg.batch_size, cfg.k, rng)

    def observe(self, outcomes: pa.Table) -> PosteriorState:
        """Conjugate update with one round's (prompt_id, s, n); returns the new posterior."""
        cfg = self.run.config.posterior
        ids = np.asarray(outcomes["prompt_id"].to_pylist(), dtype=object)
        s, n = np.asarray(outcomes["s"]), np.asarray(outcomes["n"])
        self.posterior = self.posterior.observe(ids, s, n, lam=cfg.lam, a0=cfg.a0, b0=cfg.b0,
                                                decay=cfg.decay)
        self.selector.observe(ids, s, n)
        return self.posterior

    def save(self, db: RunStore, round_: int) -> None:
        """The selector's state, stored with round `round_` (read by the next round)."""
        db.save_selector_state(self.run.run_id, round_, self.selector.state_dict())


def stored_posterior(db: RunStore, run: Run, round_: int) -> PosteriorState:
    """The posterior stored after round `round_` (snapshot and deltas), as it is: without
    the empirical-Bayes view of unseen prompts. What a compact round's delta is taken
    against."""
    return PosteriorState.from_arrow(db.posterior_snapshot(
        run.run_id, round_, every=run.config.record.posterior_snapshot_every))


def _posterior_view(db: RunStore, run: Run, round_: int, *, scoring: bool,
                    features=None) -> PosteriorState:
    t = db.posterior_snapshot(run.run_id, round_,
                              every=run.config.record.posterior_snapshot_every)
    if t.num_rows == 0:
        raise RuntimeError(f"no posterior snapshot for round {round_} in {run.run_dir}")
    post = PosteriorState.from_arrow(t)
    cfg = run.config.posterior

    # Extensions beyond the paper (insight/selection/views.py): a fitted prior for
    # never-observed prompts (population or per group), and age-weighted evidence.
    def totals():
        t = db.outcome_totals_before(run.run_id, round_ + 1)
        return t["prompt_id"].to_pylist(), np.asarray(t["s"]), np.asarray(t["n"])

    def by_round():
        h = db.outcomes_by_round_before(run.run_id, round_ + 1)
        return (h["prompt_id"].to_pylist(), np.asarray(h["round"]), np.asarray(h["s"]),
                np.asarray(h["n"]))

    def groups():
        g = db.prompt_groups(run.run_id, run.config.data.group_field)
        return g["prompt_id"].to_pylist(), g["grp"].to_pylist()

    view = view_of_record(post, cfg, now=round_, scoring=scoring, totals=totals,
                          by_round=by_round, groups=groups, features=features)
    if view.priors and scoring:
        _log.info("round %d scored under prior(s) {group: [a0, b0, prompts, observed]}: %s",
                  round_ + 1, view.priors)
    return view.posterior
