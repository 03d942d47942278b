"""One round, once: the generation loop (DAPO's filter and refill included) is one
function driven by the pipeline and the simulator alike; the selection state has one
owner; generation and evaluation go through the configured RolloutEngine; each stage
opens the run's store once."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from insight.config import config_from_dict
from insight.policy.generation import Rollout, RolloutEngine, engine_accuracy
from insight.problems.datasets import Problem
from insight.record.run import check_config, open_or_create_run
from insight.selection.dapo import generation_batches
from tests.test_e2e import tiny_config

# The shipped warm-started policy solves some arithmetic and fails some: mixed groups.
SHIPPED_POLICY = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny-arith"


# --- the generation loop ------------------------------------------------------------
def _pool_draw(pool):
    """Draw 4 prompts at a time from `pool`, in order, skipping those already drawn."""
    def draw(gen_batch, drawn):
        return [p for p in pool if p not in drawn][:4]
    return draw


def test_dapo_refills_until_b_mixed_groups_are_kept_and_truncates_the_last_batch():
    k = 4
    successes = {"a": 0, "b": 2, "c": 4, "d": 0, "e": 1, "f": 3, "g": 2, "h": 1, "i": 2}
    seen_batches = []

    def generate(ids, gen_batch):
        seen_batches.append((gen_batch, list(ids)))
        return np.array([successes[i] for i in ids])

    batches, rnd = generation_batches(_pool_draw(list(successes)), generate, batch_size=3,
                                      k=k, dapo=True, max_num_gen_batches=5)
    assert seen_batches == [(0, ["a", "b", "c", "d"]), (1, ["e", "f", "g", "h"])]
    assert batches[0].keep.tolist() == [False, True, False, False]   # only b is mixed
    assert batches[1].keep.tolist() == [True, True, False, False]    # e, f; g, h truncated
    assert rnd.summary()["groups_kept"] == 3 and rnd.summary()["groups_truncated"] == 2


def test_without_dapo_one_batch_is_generated_and_kept_whole():
    batches, _ = generation_batches(_pool_draw(list("abcdef")),
                                    lambda ids, g: np.zeros(len(ids)), batch_size=4, k=8,
                                    dapo=False, max_num_gen_batches=9)
    assert len(batches) == 1 and batches[0].keep.all()   # all-fail groups kept too


def test_dapo_stops_when_the_draw_runs_dry_or_at_max_batches():
    all_fail = lambda ids, g: np.zeros(len(ids))   # noqa: E731 (never a mixed group)
    dry, _ = generation_batches(_pool_draw(list("abcdef")), all_fail, batch_size=4, k=2,
                                dapo=True, max_num_gen_batches=10)
    assert [b.prompt_ids for b in dry] == [list("abcd"), list("ef")]
    capped, rnd = generation_batches(_pool_draw([f"p{i}" for i in range(100)]), all_fail,
                                     batch_size=4, k=2, dapo=True, max_num_gen_batches=3)
    assert len(capped) == 3 and rnd.summary()["reached_max_gen_batches"]


# --- engines and evaluation -----------------------------------------------------------
class ScriptedEngine:
    """A RolloutEngine whose completions are given: evaluation must work through any."""

    def __init__(self, answers):
        self.answers = answers

    def generate(self, prompts, k, *, temperature=1.0, top_p=1.0, max_new_tokens=8, seed=0):
        return [[Rollout(self.answers[p], [1], truncated=False)] * k for p in prompts]


def test_evaluation_runs_through_any_rollout_engine_and_grades_by_the_verifier():
    problems = [Problem(prompt_id=f"q{i}", prompt=f"{i}+1=", answer=str(i + 1),
                        source="test", difficulty=1, verifier="arithmetic") for i in range(4)]
    engine = ScriptedEngine({"0+1=": "1", "1+1=": "2", "2+1=": "4", "3+1=": "sqrt(4)"})
    assert isinstance(engine, RolloutEngine)
    res = engine_accuracy(engine, problems, n_samples=3)
    assert res["accuracy"] == 0.5
    assert [p["successes"] for p in res["per_problem"]] == [3, 3, 0, 0]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_a_vllm_engine_without_vllm_is_refused_before_any_run_exists(tiny_policy_dir, tmp_path):
    cfg = config_from_dict(tiny_config(tiny_policy_dir, policy={"engine": "vllm"}))
    with pytest.raises(ValueError, match="vLLM is not installed"):
        check_config(cfg)
    with pytest.raises(ValueError, match="vLLM"):
        open_or_create_run(tmp_path / "run", cfg)
    assert not (tmp_path / "run").exists()


# --- the stages over the store --------------------------------------------------------
@pytest.fixture
def count_store_opens(monkeypatch):
    from insight.record.store import RunStore
    opened = []
    real_enter = RunStore.__enter__

    def enter(self):
        opened.append(self.path)
        return real_enter(self)

    monkeypatch.setattr(RunStore, "__enter__", enter)
    return opened


def _run_round(run, round_):
    from insight import stages
    _start(run, round_)
    for stage in (stages.select, stages.rollout, stages.update_posterior, stages.train,
                  stages.evaluate, stages.commit):
        stage(run, round_)


def test_each_stage_opens_the_run_store_once(tiny_policy_dir, tmp_path, count_store_opens):
    from insight import stages
    cfg = config_from_dict(tiny_config(tiny_policy_dir, rounds=1, eval={"every": 1},
                                       selector={"type": "dynamic-sampling",
                                                 "max_num_gen_batches": 4}))
    run = open_or_create_run(tmp_path / "run", cfg)
    stages.initial_round(run)
    _start(run, 1)
    steps = {"select": lambda: stages.select(run, 1), "rollout": lambda: stages.rollout(run, 1),
             "update_posterior": lambda: stages.update_posterior(run, 1),
             "train": lambda: stages.train(run, 1), "evaluate": lambda: stages.evaluate(run, 1),
             "commit": lambda: stages.commit(run, 1)}
    for name, step in steps.items():
        count_store_opens.clear()
        step()
        assert len(count_store_opens) == 1, name


def _start(run, round_):
    from insight.record.store import RunStore
    with RunStore(run.run_dir) as db:
        db.start_round(run.run_id, round_, None)


def test_dapo_refills_score_the_same_empirical_bayes_view_as_the_selection(tmp_path):
    """Refill batches used to score the raw posterior while the round's first batch saw
    the empirical-Bayes prior for unseen prompts: one state, one view now."""
    from insight import stages
    from insight.record.store import RunStore
    cfg = config_from_dict(tiny_config(
        SHIPPED_POLICY, seed=4, rounds=2, eval={"every": 5},
        posterior={"prior": "empirical-bayes"},
        selector={"type": "dynamic-sampling", "max_num_gen_batches": 6}))
    run = open_or_create_run(tmp_path / "run", cfg)
    stages.initial_round(run)
    for r in (1, 2):
        _run_round(run, r)
    with RunStore(run.run_dir) as db:
        rows = db.sql("SELECT s.gen_batch, s.alpha, s.beta FROM selections s WHERE round = 2 "
                      "AND prompt_id NOT IN (SELECT prompt_id FROM rollouts WHERE round = 1)"
                      ).to_pylist()
    first = {(r["alpha"], r["beta"]) for r in rows if r["gen_batch"] == 0}
    refill = {(r["alpha"], r["beta"]) for r in rows if r["gen_batch"] > 0}
    assert refill, "the pinned run (seed 4) refills in round 2"
    assert len(first) == 1 and first == refill      # one fitted prior for unseen prompts
    assert first != {(1.0, 1.0)}                    # and it is the fitted one, not Beta(1,1)
