"""A round's generation loop, and DAPO dynamic sampling's rule within it: keep the groups
with mixed outcomes (0 < s < k), keep at most B of them, refill with further generation
batches until B are kept or `max_num_gen_batches` ran, and count what the extra batches
cost. One implementation (`generation_batches`), driven by the pipeline's rollout stage
(real generation, verified rewards) and by the simulator (a toy learner) alike; a
selector without DAPO's refill runs the same loop for exactly one batch, keeping all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from insight.selection.posterior import validate_outcomes
from insight.selection.validate import check_lengths


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
    filter_mixed: bool = True  # False: keep every group (a selector without DAPO)
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
        check_lengths(ids, successes=successes, trials=trials)
        s, t = validate_outcomes(successes, trials)
        s, t = np.broadcast_to(s, (len(ids),)), np.broadcast_to(t, (len(ids),))
        mixed = filter_groups(s, t) if self.filter_mixed else np.ones(len(ids), dtype=bool)
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



@dataclass(frozen=True)
class GenerationBatch:
    """One generation batch of a round: its prompts, their successes of k, which groups
    the update keeps."""

    prompt_ids: list[str]
    successes: np.ndarray
    keep: np.ndarray


def generation_batches(draw: Callable[[int, frozenset], Sequence[str]],
                       generate: Callable[[list[str], int], np.ndarray], *,
                       batch_size: int, k: int, dapo: bool,
                       max_num_gen_batches: int = 1
                       ) -> tuple[list[GenerationBatch], DynamicSamplingRound]:
    """Run one round's generation: `draw(gen_batch, drawn)` gives the prompts of batch
    `gen_batch` (batch 0: the round's selection; later ones: refills that exclude the
    prompts in `drawn`), `generate(prompt_ids, gen_batch)` rolls them out k times and
    returns each group's successes. With `dapo`, groups without mixed outcomes are
    dropped and batches are drawn until `batch_size` groups are kept, the draw runs dry,
    or `max_num_gen_batches` ran; without it, one batch is generated and kept whole."""
    rnd = DynamicSamplingRound(batch_size=batch_size,
                               max_num_gen_batches=max_num_gen_batches if dapo else 1,
                               filter_mixed=dapo)
    drawn: set[str] = set()
    batches: list[GenerationBatch] = []
    while rnd.wants_more():
        ids = [str(p) for p in draw(rnd.gen_batches, frozenset(drawn))]
        if not ids:
            break
        drawn.update(ids)
        successes = np.asarray(generate(ids, rnd.gen_batches))
        keep = rnd.add(ids, successes, np.full(len(ids), float(k)))
        batches.append(GenerationBatch(ids, successes, keep))
    return batches, rnd
