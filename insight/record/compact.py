"""What a round stores of its selections and posteriors: all of it, or the compact record.

Why: every round used to store every candidate's scoring and every prompt's posterior,
so the record grew with pool size x rounds (about 8 MB a round at 200,000 prompts, some
40 GB per 1,000 rounds at 1M). Both are derived data: the outcomes are the source of
truth, and a round's candidate table is a deterministic function of the posterior before
it, the selector's state and the round's seed. The compact record (config `record`)
keeps what cannot be recomputed cheaply and recomputes the rest on demand:

- `candidates: selected` stores the selected candidates' `selections` rows (plus
  `candidates_margin` runners-up); `insight.report.rescore` recomputes every other row.
- `posterior_snapshot_every: N` stores every prompt's posterior at round 0 and every N
  rounds, and in between only the rows the round changed (a delta). The posterior after
  round r is the snapshot at `snapshot_round(r, N)` overwritten, round by round, by the
  deltas after it.

The defaults (`all`, 1) store exactly what runs stored before the option existed.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from insight.config import RecordConfig
from insight.selection.posterior import PosteriorState


def snapshot_round(round_: int, every: int) -> int:
    """The round of the last full posterior snapshot at or before `round_`."""
    return int(round_) - int(round_) % int(every)


def is_full_snapshot(round_: int, every: int) -> bool:
    return snapshot_round(round_, every) == int(round_)


def selection_rows_to_store(table: pa.Table, record: RecordConfig) -> pa.Table:
    """The rows of one generation batch's candidate table the record keeps: all of them,
    or the selected ones and the first `candidates_margin` below the cut (by rank)."""
    if record.candidates == "all" or table.num_rows == 0:
        return table
    n_selected = int(pc.sum(pc.cast(table["selected"], pa.int64())).as_py() or 0)
    keep = pc.less_equal(table["rank"], n_selected + record.candidates_margin)
    return table.filter(keep)


def posterior_rows_to_store(new: PosteriorState, before: PosteriorState | None, round_: int,
                            record: RecordConfig) -> PosteriorState:
    """The posterior rows round `round_` stores: every prompt on a snapshot round, else
    those whose (alpha, beta) differ from `before` (the stored posterior after the
    previous round, reconstructed; never the empirical-Bayes view, whose unseen prompts
    carry a fitted prior that is not stored)."""
    if before is None or is_full_snapshot(round_, record.posterior_snapshot_every):
        return new
    if not np.array_equal(new.prompt_ids, before.prompt_ids):
        raise RuntimeError("the posterior's prompt set changed between two rounds; "
                           "a delta cannot be taken")
    changed = np.flatnonzero((new.alpha != before.alpha) | (new.beta != before.beta))
    return PosteriorState(new.prompt_ids[changed], new.alpha[changed], new.beta[changed],
                          new.a0, new.b0)


def overwrite(state: PosteriorState, delta: pa.Table) -> PosteriorState:
    """`state` with the (prompt_id, alpha, beta) rows of a stored delta applied."""
    if delta.num_rows == 0:
        return state
    idx = state.index_of(np.asarray(delta["prompt_id"].to_pylist(), dtype=object))
    alpha, beta = state.alpha.copy(), state.beta.copy()
    alpha[idx] = np.asarray(delta["alpha"], dtype=np.float64)
    beta[idx] = np.asarray(delta["beta"], dtype=np.float64)
    return PosteriorState(state.prompt_ids, alpha, beta, state.a0, state.b0)
