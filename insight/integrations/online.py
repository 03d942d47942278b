"""InSight's selection driven by another trainer: draw a batch, observe its groups, record.

TRL and verl own the training loop; InSight only chooses each generation batch's prompts
and learns from their outcomes. `OnlineSelection` is what both plug-ins share, written
over the library (the selector registry, `SelectionState`, `RunStore`) so the selection
and the record are exactly InSight's own:

- `draw()` scores the pool and returns round r's prompts, lazily, when the trainer's data
  loader asks for them. Round r is scored on the posterior after round r - 1 - `lag`: a
  trainer that fetches its next batch before it has scored the current one (accelerate
  prefetches one batch ahead) sets `lag = 1`, so what each round sees is fixed by the
  round number, not by timing, and a resumed run draws what an uninterrupted one did.
- `observe()` takes the round's completions and rewards, updates the posteriors and
  commits the round to the run directory: `selections` (every scored candidate),
  `rollouts`, `posteriors`, `rounds`, then its Parquet, the same contract as
  `insight train` (docs/storage.md), so `insight audit` and the plots read it.
- `save(dir)` / `restore(dir)` put the selection state (posteriors, the selector's state,
  batches drawn but not yet observed) beside the trainer's checkpoint.

One round is one generation batch. The trainer's policy checkpoints are its own: a
round's `rounds.checkpoint` is NULL, except round 0's, the starting policy.
"""

from __future__ import annotations

import json
import shutil
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from insight.config import RunConfig, config_from_dict
from insight.problems import verifiers
from insight.problems.datasets import Problem
from insight.record import layout
from insight.record.metrics import round_metrics
from insight.record.run import SELECT, Run, _prompt_rows, data_hash, stage_seed
from insight.record.runlock import training_lock
from insight.record.store import RunStore
from insight.round_state import SelectionState
from insight.selection.posterior import PosteriorState
from insight.selection.registry import make_selector
from insight.selection.selectors import Selection

STATE_DIR = "insight_selection"  # inside a trainer checkpoint


class OnlineSelection:
    """The selection of one run directory, fed by an external trainer (one process, the
    only writer of the run). Open it with `open`; `close` releases the run's lock."""

    def __init__(self, run: Run, train: list[Problem], lock: ExitStack, *, last_round: int,
                 posteriors: dict[int, PosteriorState], selector_state: dict):
        self.run = run
        self.problems = {p.prompt_id: p for p in train}
        self.lag = 0
        self.last_round = last_round          # the last round observed and committed
        self.posteriors = posteriors          # after round r, for the rounds draws still need
        self.selector = make_selector(run.config.selector)
        if selector_state:
            self.selector.load_state_dict(selector_state)
        self.pending: dict[int, Selection] = {}   # drawn, not yet observed
        self._replay: list[int] = []   # restored pending rounds the trainer has to fetch again
        self._lock = lock

    # -- opening a run ---------------------------------------------------------------
    @classmethod
    def open(cls, run_dir: str | Path, cfg: RunConfig, train: list[Problem],
             held_out: list[Problem]) -> "OnlineSelection":
        """Create the run (round 0: every prompt at the prior) or reopen the same
        experiment; refused if the config or the prompts changed. Holds the run's lock
        until `close`, so a second trainer cannot write the same run."""
        if cfg.posterior.prior != "fixed":
            raise ValueError("the trainer plug-ins support posterior.prior: fixed only")
        run_dir = Path(run_dir).resolve()
        lock = ExitStack()
        lock.enter_context(training_lock(run_dir))
        try:
            with RunStore(run_dir) as db:
                run = _create_or_check(db, run_dir, cfg, train, held_out)
                last = db.last_committed_round(run.run_id)
                post = PosteriorState.from_arrow(db.posterior_snapshot(run.run_id, last))
                state = db.selector_state(run.run_id, last)
        except BaseException:
            lock.close()
            raise
        return cls(run, train, lock, last_round=last, posteriors={last: post},
                   selector_state=state)

    def close(self) -> None:
        self._lock.close()

    # -- selection -----------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.run.config.rollout.batch_size

    @property
    def k(self) -> int:
        return self.run.config.rollout.k

    def next_round(self) -> int:
        return self.last_round + len(self.pending) + 1

    def draw(self) -> list[str]:
        """The next round's B prompts, scored on the posterior after round r - 1 - lag
        (round 0's prior for the first rounds). A batch saved as drawn but not observed
        (restored from a checkpoint) is returned as it was drawn."""
        if self._replay:
            return list(self.pending[self._replay.pop(0)].prompt_ids)
        r = self.next_round()
        if r in self.pending:  # never: pending holds the rounds before r
            raise RuntimeError(f"round {r} drawn twice")
        seen = max(0, r - 1 - self.lag)
        if seen not in self.posteriors:
            raise RuntimeError(
                f"round {r} needs the posterior after round {seen}, but round {self.last_round} "
                f"is the last observed: the trainer fetched batches further ahead than lag="
                f"{self.lag} (set dataloader_num_workers=0)")
        state = SelectionState(self.run, self.posteriors[seen], self.selector)
        sel = state.draw(np.random.default_rng(stage_seed(self.run.config.seed, r, SELECT)))
        self.pending[r] = sel
        return list(sel.prompt_ids)

    # -- outcomes ------------------------------------------------------------------
    def verify(self, prompt_id: str, completion: str) -> verifiers.VerifyResult:
        """InSight's verifier of the prompt (never executes the completion)."""
        p = self.problems[prompt_id]
        return verifiers.verify(p.verifier, completion, p.answer)

    def observe(self, prompt_ids: list[str], completions: list[str], rewards: list[float], *,
                completion_token_ids: list[list[int]] | None = None,
                verifier_errors: list[str | None] | None = None,
                truncated: list[bool] | None = None) -> int:
        """The oldest pending round's outcomes: k completions of each of its prompts, in
        any order. Updates the posteriors and commits the round; returns its number."""
        if not self.pending:
            raise RuntimeError("outcomes observed with no batch drawn")
        r = min(self.pending)
        sel = self.pending[r]
        rows = _rollout_rows(self, r, sel, prompt_ids, completions, rewards,
                             completion_token_ids, verifier_errors, truncated)
        outcomes = (rows.group_by("prompt_id")
                    .aggregate([("success", "sum"), ("success", "count")])
                    .select(["prompt_id", "success_sum", "success_count"])  # by name:
                    .rename_columns(["prompt_id", "s", "n"]))  # pyarrow's order has varied
        state = SelectionState(self.run, self.posteriors[r - 1], self.selector)
        post = state.observe(outcomes.cast(pa.schema([("prompt_id", pa.string()),
                                                      ("s", pa.float64()),
                                                      ("n", pa.float64())])))
        self._commit(r, sel, rows, post)
        del self.pending[r]
        self.posteriors[r] = post
        self.last_round = r
        for old in [q for q in self.posteriors if q < r - self.lag]:
            del self.posteriors[old]  # no later draw scores on them
        return r

    def _commit(self, r: int, sel: Selection, rows: pa.Table, post: PosteriorState) -> None:
        run_id = self.run.run_id
        with RunStore(self.run.run_dir) as db:
            db.start_round(run_id, r, None)
            db.replace_round_rows("selections", run_id, r,
                                  _with_round(sel.table, run_id, r, gen_batch=0))
            db.replace_round_rows("rollouts", run_id, r, rows)
            db.replace_round_rows("posteriors", run_id, r, _with_round(
                post.to_arrow().select(["prompt_id", "alpha", "beta"]), run_id, r))
            db.save_selector_state(run_id, r, self.selector.state_dict())
            metrics = round_metrics(db, run_id, r, train_stats={})
            db.commit_round(run_id, r, checkpoint=None, rollouts_consumed=rows.num_rows,
                            metrics=metrics)
            db.export_round(run_id, r)

    # -- checkpoints -----------------------------------------------------------------
    def save(self, checkpoint_dir: str | Path) -> Path:
        """Write the selection state into `checkpoint_dir/insight_selection/`."""
        out = Path(checkpoint_dir) / STATE_DIR
        out.mkdir(parents=True, exist_ok=True)
        for r, post in self.posteriors.items():
            post.save(out / f"posterior_{r:05d}.parquet")
        for r, sel in self.pending.items():
            pq.write_table(sel.table, out / f"pending_{r:05d}.parquet")
        state = {"run_id": self.run.run_id, "last_round": self.last_round, "lag": self.lag,
                 "posterior_rounds": sorted(self.posteriors),
                 "pending": {str(r): list(s.prompt_ids) for r, s in self.pending.items()},
                 "selector_state": self.selector.state_dict()}
        (out / "state.json").write_text(json.dumps(state, indent=1))
        return out

    def restore(self, checkpoint_dir: str | Path) -> None:
        """Continue from a checkpoint's selection state: rounds the run recorded after
        it are discarded (the trainer redoes them), and the batches it had drawn but not
        observed are drawn again as they were."""
        src = Path(checkpoint_dir) / STATE_DIR
        if not (src / "state.json").is_file():
            raise FileNotFoundError(f"no InSight selection state in {checkpoint_dir} "
                                    f"(expected {STATE_DIR}/state.json)")
        state = json.loads((src / "state.json").read_text())
        if state["run_id"] != self.run.run_id:
            raise ValueError(f"checkpoint {checkpoint_dir} belongs to run {state['run_id']}, "
                             f"not {self.run.run_id}")
        if state["lag"] != self.lag:
            raise ValueError(f"checkpoint {checkpoint_dir} was drawn with lag {state['lag']}, "
                             f"this trainer fetches with lag {self.lag}: keep "
                             "steps_per_generation and num_iterations as they were")
        self.last_round = int(state["last_round"])
        self.posteriors = {r: PosteriorState.load(src / f"posterior_{r:05d}.parquet")
                           for r in state["posterior_rounds"]}
        self.pending = {int(r): Selection(ids, pq.read_table(src / f"pending_{int(r):05d}.parquet"))
                        for r, ids in state["pending"].items()}
        self._replay = sorted(self.pending)
        self.selector = make_selector(self.run.config.selector)
        self.selector.load_state_dict(state["selector_state"])
        with RunStore(self.run.run_dir) as db:
            discard_rounds_after(db, self.run, self.last_round)


def _create_or_check(db: RunStore, run_dir: Path, cfg: RunConfig, train, held_out) -> Run:
    dh = data_hash(train, held_out)
    existing = db.get_run()
    if existing is not None:
        old = config_from_dict(json.loads(existing["config_json"]))
        if old.identity_hash() != cfg.identity_hash() or existing["data_hash"] != dh:
            raise ValueError(f"{run_dir} holds run {existing['run_id']} with another config "
                             "or prompt set: use a new run directory")
        return Run(run_dir, existing["run_id"], cfg)
    run_id = f"{cfg.name}-{np.random.default_rng().integers(1 << 32):08x}"
    run = Run(run_dir, run_id, cfg)
    with db.transaction():
        db.create_run(run_id, config_json=cfg.model_dump_json(), config_hash=cfg.identity_hash(),
                      data_hash=dh, seed=cfg.seed, selector=cfg.selector.type)
        db.insert("prompts", _prompt_rows(run_id, train, "train"))
        db.insert("prompts", _prompt_rows(run_id, held_out, "eval"))
    db.export_run_tables(run_id)
    prior = PosteriorState.new(np.asarray([p.prompt_id for p in train], dtype=object),
                               a0=cfg.posterior.a0, b0=cfg.posterior.b0)
    db.start_round(run_id, 0, None)
    db.replace_round_rows("posteriors", run_id, 0, _with_round(
        prior.to_arrow().select(["prompt_id", "alpha", "beta"]), run_id, 0))
    db.save_selector_state(run_id, 0, make_selector(cfg.selector).state_dict())
    db.commit_round(run_id, 0, checkpoint=cfg.policy.path, rollouts_consumed=0, metrics={})
    db.export_round(run_id, 0)
    return run


def discard_rounds_after(db: RunStore, run: Run, round_: int) -> list[int]:
    """Forget the rounds after `round_` (the trainer resumed from an earlier checkpoint
    and redoes them): their rows, their `rounds` entries and their published Parquet."""
    later = db.delete_rounds_after(run.run_id, round_)
    for r in later:
        shutil.rmtree(layout.round_dir(run.run_dir, r), ignore_errors=True)
    return later


def _rollout_rows(sel_state: OnlineSelection, r: int, sel: Selection, prompt_ids, completions,
                  rewards, token_ids, errors, truncated) -> pa.Table:
    """The round's rollouts in selection order, k per prompt; refused unless they are
    exactly k completions of each prompt drawn for the round."""
    n = len(prompt_ids)
    if not (len(completions) == len(rewards) == n):
        raise ValueError("observe: prompt_ids, completions and rewards differ in length")
    k = sel_state.k
    want = list(sel.prompt_ids)
    order: dict[str, list[int]] = {}
    for i, pid in enumerate(prompt_ids):
        order.setdefault(str(pid), []).append(i)
    if set(order) != set(want) or any(len(v) != k for v in order.values()):
        raise ValueError(f"round {r}'s outcomes are not {k} completions of each of its "
                         f"{len(want)} prompts (got {n} completions of {len(order)} prompts): "
                         "the trainer must score each generation batch the sampler gave it")
    threshold = sel_state.run.config.rollout.success_threshold
    idx = [i for pid in want for i in order[pid]]
    reward = [float(rewards[i]) for i in idx]
    text = [str(completions[i]) for i in idx]
    return _with_round(pa.table({
        "prompt_id": pa.array([str(prompt_ids[i]) for i in idx], pa.string()),
        "sample_idx": pa.array([j for _ in want for j in range(k)], pa.int32()),
        "completion": pa.array([t[:verifiers.MAX_COMPLETION_CHARS] for t in text], pa.string()),
        "completion_chars": pa.array([len(t) for t in text], pa.int32()),
        "completion_token_ids": pa.array([list(map(int, token_ids[i])) if token_ids else None
                                          for i in idx], pa.list_(pa.int32())),
        "reward": pa.array(reward, pa.float64()),
        "success": pa.array([verifiers.is_success(x, threshold) for x in reward]),
        "verifier_error": pa.array([errors[i] if errors else None for i in idx], pa.string()),
        "truncated": pa.array([bool(truncated[i]) if truncated else None for i in idx],
                              pa.bool_()),
        "kept": pa.array([True] * n),
    }), sel_state.run.run_id, r, policy_round=r - 1, gen_batch=0)


def _with_round(t: pa.Table, run_id: str, round_: int, **int_columns: int) -> pa.Table:
    n = t.num_rows
    t = t.append_column("run_id", pa.array([run_id] * n, pa.string()))
    t = t.append_column("round", pa.array([round_] * n, pa.int32()))
    for name, value in int_columns.items():
        t = t.append_column(name, pa.array([value] * n, pa.int32()))
    return t
