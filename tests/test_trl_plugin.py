"""The TRL plug-in: InSight chooses GRPOTrainer's prompts, records the run, resumes.

Runs TRL 1.16's real GRPOTrainer on the shipped tiny policy (CPU, seconds per run) with a
small pool: 64 training prompts, B = 4 prompts x k = 4 completions per generation batch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("trl")
import torch  # noqa: E402
from trl import GRPOConfig  # noqa: E402
from trl.trainer.utils import RepeatSampler  # noqa: E402

from insight.config import load_config  # noqa: E402
from insight.integrations.online import OnlineSelection  # noqa: E402
from insight.integrations.trl import (InSightGRPOTrainer, InSightSampler,  # noqa: E402
                                      fetch_lag)
from insight.policy.model import load_policy  # noqa: E402
from insight.record.run import check_config  # noqa: E402
from insight.record.store import RunStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
B, K = 4, 4


def small_config():
    return load_config(ROOT / "configs" / "tiny.yaml", {
        "policy.path": str(ROOT / "checkpoints" / "tiny-arith"),
        "data.n_train": 64, "data.n_eval": 16, "rollout.batch_size": B, "rollout.k": K})


def trainer_for(run_dir: Path, max_steps: int, *, save_steps: int = 500, **extra):
    cfg = small_config()
    selection = OnlineSelection.open(run_dir, cfg, *check_config(cfg))
    model, tok = load_policy(cfg.policy.path)
    opts = dict(output_dir=str(run_dir / "trl"), max_steps=max_steps,
                per_device_train_batch_size=B * K, num_generations=K, max_completion_length=6,
                learning_rate=2e-4, report_to=[], use_cpu=True, bf16=False, seed=0,
                save_steps=save_steps, disable_tqdm=True, lr_scheduler_type="constant")
    args = GRPOConfig(**{**opts, **extra})
    return InSightGRPOTrainer(model=model, processing_class=tok, args=args,
                              selection=selection), selection


def train(run_dir: Path, max_steps: int, resume: bool = False, **kw) -> OnlineSelection:
    torch.manual_seed(0)
    trainer, selection = trainer_for(run_dir, max_steps, **kw)
    try:
        trainer.train(resume_from_checkpoint=True if resume else None)
    finally:
        selection.close()
    return selection


def table(run_dir: Path, name: str, round_: int):
    return pq.read_table(run_dir / "parquet" / f"round_{round_:05d}" / f"{name}.parquet")


@pytest.fixture(scope="module")
def run4(tmp_path_factory) -> Path:
    """Four generation batches, uninterrupted, a checkpoint after the second."""
    run_dir = tmp_path_factory.mktemp("trl") / "run"
    train(run_dir, 4, save_steps=2)
    return run_dir


# -- the batch arithmetic --------------------------------------------------------------
def test_sampler_has_repeat_samplers_shape_with_the_selectors_prompts():
    class Draws:  # the selection's draw, as a list of batches
        def __init__(self):
            self.batches = [["c", "a"], ["d", "b"], ["e", "f"]]

        def draw(self):
            return self.batches.pop(0)

    ids = ["a", "b", "c", "d", "e", "f", "g"]
    ours = list(InSightSampler(Draws(), ids, mini_repeat_count=2, batch_size=2,
                               repeat_count=3))
    theirs = RepeatSampler(ids, mini_repeat_count=2, batch_size=2, repeat_count=3)
    assert len(ours) == len(theirs) == 3 * 2 * 2 * 3
    # the same pattern: each prompt twice in a row, each batch three times
    assert ours[:12] == [2, 2, 0, 0] * 3
    assert ours[12:24] == [3, 3, 1, 1] * 3
    assert ours[24:] == [4, 4, 5, 5] * 3


@pytest.mark.parametrize("generate_every, grad_accum, lag", [
    (1, 1, 1),   # TRL's default: the next batch is prefetched before this one is scored
    (2, 1, 0),   # a round spans two fetches: its rewards are in before the next draw
    (2, 2, 1),   # steps_per_generation = gradient_accumulation_steps (TRL's default)
    (4, 4, 1),
    (8, 2, 0),
    (1, 4, 4),   # four rounds fetched per optimiser step
])
def test_fetch_lag_is_how_far_ahead_transformers_and_accelerate_fetch(generate_every,
                                                                      grad_accum, lag):
    assert fetch_lag(generate_every, grad_accum) == lag


# -- the record ----------------------------------------------------------------------------
def test_each_generation_batch_is_one_committed_round(run4):
    with RunStore(run4, read_only=True) as db:
        run_id = db.get_run()["run_id"]
        assert db.committed_rounds(run_id) == [0, 1, 2, 3, 4]
    for r in range(1, 5):
        sel = table(run4, "selections", r)
        assert sel.num_rows == 64  # every candidate scored
        assert sum(sel["selected"].to_pylist()) == B
        ro = table(run4, "rollouts", r)
        assert ro.num_rows == B * K
        chosen = set(sel.filter(sel["selected"])["prompt_id"].to_pylist())
        assert set(ro["prompt_id"].to_pylist()) == chosen
        assert ro["policy_round"].to_pylist() == [r - 1] * (B * K)
        # strict verifier: reward 1 exactly when the answer is right
        assert ro["success"].to_pylist() == [x == 1.0 for x in ro["reward"].to_pylist()]


def test_posteriors_add_each_rounds_successes_and_failures(run4):
    for r in range(1, 5):
        before = {row["prompt_id"]: (row["alpha"], row["beta"])
                  for row in table(run4, "posteriors", r - 1).to_pylist()}
        after = {row["prompt_id"]: (row["alpha"], row["beta"])
                 for row in table(run4, "posteriors", r).to_pylist()}
        ro = table(run4, "rollouts", r).to_pylist()
        for pid in {row["prompt_id"] for row in ro}:
            s = sum(row["success"] for row in ro if row["prompt_id"] == pid)
            assert after[pid] == (before[pid][0] + s, before[pid][1] + K - s)
        untouched = set(after) - {row["prompt_id"] for row in ro}
        assert all(after[p] == before[p] for p in untouched)


def test_round_r_is_scored_on_the_posterior_after_round_r_minus_2(run4):
    """TRL's defaults fetch one batch ahead (lag 1): what each draw saw is on record."""
    for r in range(1, 5):
        seen = table(run4, "posteriors", max(0, r - 2)).to_pylist()
        post = {row["prompt_id"]: (row["alpha"], row["beta"]) for row in seen}
        for row in table(run4, "selections", r).to_pylist():
            assert (row["alpha"], row["beta"]) == post[row["prompt_id"]]


def test_insight_audit_reads_a_trl_run(run4):
    out = subprocess.run([sys.executable, "-m", "flows.cli", "audit", "--run-dir", str(run4),
                          "--round", "3", "--format", "json"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["candidates"], report["selected"]) == (64, B)
    picked = {r["prompt_id"]: r["successes"] for r in report["rows"] if r["selected"]}
    ro = table(run4, "rollouts", 3).to_pylist()
    assert picked == {p: sum(r["success"] for r in ro if r["prompt_id"] == p) for p in picked}


# -- checkpoints -------------------------------------------------------------------------
def test_checkpoint_holds_the_selection_state(run4):
    state_dir = run4 / "trl" / "checkpoint-2" / "insight_selection"
    state = json.loads((state_dir / "state.json").read_text())
    assert state["last_round"] == 2 and state["lag"] == 1
    assert list(state["pending"]) == ["3"]  # drawn (prefetched) before the save
    assert state["pending"]["3"] == [
        r["prompt_id"] for r in table(run4, "selections", 3).sort_by("rank").to_pylist()
        if r["selected"]]
    saved = pq.read_table(state_dir / "posterior_00002.parquet").sort_by("prompt_id")
    recorded = table(run4, "posteriors", 2).sort_by("prompt_id")
    np.testing.assert_array_equal(saved["alpha"], recorded["alpha"])
    np.testing.assert_array_equal(saved["beta"], recorded["beta"])


def test_resume_from_a_checkpoint_draws_what_the_uninterrupted_run_drew(run4, tmp_path):
    """Train 2 steps, then 2 more from checkpoint-2 in a new trainer: rounds 3 and 4 pick
    the same prompts from the same posteriors as the run that never stopped (their draws
    depend only on rounds 1-2; later rounds depend on sampled completions)."""
    run_dir = tmp_path / "run"
    train(run_dir, 2, save_steps=2)
    train(run_dir, 4, resume=True, save_steps=2)
    with RunStore(run_dir, read_only=True) as db:
        assert db.committed_rounds(db.get_run()["run_id"]) == [0, 1, 2, 3, 4]
    for r in (1, 2, 3, 4):
        ours, theirs = table(run_dir, "selections", r), table(run4, "selections", r)
        for col in ("prompt_id", "selected", "rank", "alpha", "beta", "score"):
            assert ours[col].to_pylist() == theirs[col].to_pylist(), (r, col)


def test_resume_discards_rounds_recorded_after_the_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    train(run_dir, 3, save_steps=2)   # checkpoint-2, then round 3 recorded
    trainer, selection = trainer_for(run_dir, 3)
    try:
        selection.restore(run_dir / "trl" / "checkpoint-2")
        with RunStore(run_dir, read_only=True) as db:
            assert db.committed_rounds(selection.run.run_id) == [0, 1, 2]
        assert not (run_dir / "parquet" / "round_00003").exists()
        assert selection.next_round() == 4 and selection.last_round == 2  # 3 pending
    finally:
        selection.close()


# -- refusals ------------------------------------------------------------------------------
def test_group_size_must_be_the_runs_k(tmp_path):
    with pytest.raises(ValueError, match="num_generations"):
        trainer_for(tmp_path / "run", 1, num_generations=2, per_device_train_batch_size=8)


def test_a_run_directory_with_rounds_is_not_silently_restarted(run4, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(run4, copy, ignore=shutil.ignore_patterns("trl"))
    with pytest.raises(ValueError, match="already holds 4 rounds"):
        train(copy, 1)


# -- the example -----------------------------------------------------------------------------
@pytest.mark.slow
def test_example_trains_and_insight_audit_reads_its_run(tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run([sys.executable, "examples/trl_grpo.py", "--run-dir", str(run_dir),
                          "--max-steps", "2", "--no-eval"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "rounds 1..2" in out.stdout
    audit = subprocess.run([sys.executable, "-m", "flows.cli", "audit", "--run-dir",
                            str(run_dir), "--round", "2"], capture_output=True, text=True,
                           cwd=ROOT, timeout=120)
    assert audit.returncode == 0, audit.stderr
    assert "512 candidates scored, 32 selected" in audit.stdout
