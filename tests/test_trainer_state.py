"""State across rounds: the trainer (model and optimizer) stays alive in the process from
one round to the next; every round writes the policy weights (safetensors, atomically);
the optimizer state is written every `train.save_state_every` rounds; a resume after a
crash between two state saves continues from the last weights with the last saved
optimizer state, and says so; pruning never removes the state a resume needs.

The stages are driven directly (no Prefect): what is specified here is the stage
layer's, and a new process is simulated by forgetting the kept-alive trainer.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from insight import stages
from insight import trainer as trainers
from insight.config import config_from_dict
from insight.policy import grpo
from insight.record import layout
from insight.record.run import open_or_create_run
from insight.record.store import RunStore
from tests.test_e2e import tiny_config
from tests.test_round import SHIPPED_POLICY


@pytest.fixture(autouse=True)
def no_trainer_kept_from_another_test():
    stages.drop_trainer()
    yield
    stages.drop_trainer()


def make_run(tmp_path, name="run", rounds=5, **train):
    """A small run of the shipped warm-started policy: its groups have mixed outcomes,
    so every round takes optimizer steps (an untrained policy would fail every prompt)."""
    cfg = tiny_config(SHIPPED_POLICY, rounds=rounds, tracking={"enabled": False},
                      eval={"every": 100, "n_samples": 1, "greedy": False}, train=train)
    return open_or_create_run(tmp_path / name, config_from_dict(cfg))


def run_round(run, r):
    """What the flow does for one round, without Prefect."""
    with RunStore(run.run_dir) as db:
        db.start_round(run.run_id, r, None)
    stages.select(run, r)
    stages.rollout(run, r)
    stages.update_posterior(run, r)
    stages.train(run, r)
    stages.commit(run, r)


def run_rounds(run, rounds, *, new_process_each_round=False):
    if rounds[0] == 1:
        stages.initial_round(run)
    for r in rounds:
        if new_process_each_round:
            stages.drop_trainer()
        run_round(run, r)


def weights(run, r) -> dict[str, torch.Tensor]:
    return load_file(str(layout.checkpoint_dir(run.run_dir, r) / "model.safetensors"))


def count_loads(monkeypatch) -> list:
    loads = []
    real = grpo.load_trainer_state

    def counted(path, *a, **kw):
        loads.append(str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(grpo, "load_trainer_state", counted)
    return loads


@pytest.mark.slow
def test_the_kept_alive_trainer_trains_exactly_what_reloading_from_disk_trains(
        tmp_path, monkeypatch):
    loads = count_loads(monkeypatch)
    alive = make_run(tmp_path, "alive")
    run_rounds(alive, [1, 2])
    assert len(loads) == 1  # round 1 loads policy(0); round 2 reuses the trainer

    reloaded = make_run(tmp_path, "reloaded")
    run_rounds(reloaded, [1, 2], new_process_each_round=True)
    assert len(loads) == 1 + 2
    a, b = weights(alive, 2), weights(reloaded, 2)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    assert any(not torch.equal(a[k], weights(alive, 1)[k]) for k in a)  # and it did train


def test_weights_every_round_and_the_optimizer_state_every_n_rounds(tmp_path, caplog):
    run = make_run(tmp_path, rounds=3, save_state_every=2, keep_checkpoints=5)
    run_rounds(run, [1, 2])
    stages.drop_trainer()  # a resume right after a state save is exact, and silent
    with caplog.at_level(logging.WARNING, logger="insight.trainer"):
        run_rounds(run, [3])
    assert not [r for r in caplog.records if r.name == "insight.trainer"]
    has_state = {r: grpo.has_optimizer_state(layout.checkpoint_dir(run.run_dir, r))
                 for r in range(1, 4)}
    # every 2nd round, and the planned last round (3) so a finished run continues exactly
    assert has_state == {1: False, 2: True, 3: True}
    for r in range(1, 4):
        ckpt = layout.checkpoint_dir(run.run_dir, r)
        assert (ckpt / "model.safetensors").is_file()
        assert not list(ckpt.glob("*.bin"))  # never pickled weights
        state = json.loads((ckpt / grpo.TRAINER_STATE_FILE).read_text())
        assert state[trainers.OPTIMIZER_STATE_ROUND] == {1: None, 2: 2, 3: 3}[r]
    assert not list(layout.checkpoints_root(run.run_dir).glob("*.tmp"))


@pytest.mark.slow
def test_a_resume_between_two_state_saves_continues_with_the_last_saved_optimizer_state(
        tmp_path, caplog, monkeypatch):
    run = make_run(tmp_path, save_state_every=2)
    run_rounds(run, [1, 2, 3])
    stages.drop_trainer()  # the process died after committing round 3
    saved = torch.load(layout.checkpoint_dir(run.run_dir, 2) / grpo.OPTIMIZER_FILE,
                       weights_only=True)
    weights_3 = weights(run, 3)
    started_from = []
    real = trainers.load_trainer

    def spy(run_, held_round, checkpoint):
        trainer = real(run_, held_round, checkpoint)
        started_from.append(({n: p.detach().clone() for n, p in trainer.model.named_parameters()},
                             [trainer.optimizer.state[p]["exp_avg"].clone()
                              for p in trainer.model.parameters()],
                             int(trainer.optimizer.state[next(trainer.model.parameters())]["step"])))
        return trainer

    monkeypatch.setattr(trainers, "load_trainer", spy)
    with caplog.at_level(logging.WARNING, logger="insight.trainer"):
        run_round(run, 4)
    lines = [r.getMessage() for r in caplog.records if r.name == "insight.trainer"]
    assert lines == ["round 4 continues from the weights of round 3 with the optimizer "
                     "state saved at round 2 (train.save_state_every=2)"]

    # round 4 started from the weights of round 3 and the Adam moments of round 2
    (params, moments, step), = started_from
    assert all(torch.equal(params[n], weights_3[n]) for n in params)
    assert all(torch.equal(m, saved["state"][i]["exp_avg"]) for i, m in enumerate(moments))
    assert step == 2  # rounds 1 and 2 each took one optimizer step
    with RunStore(run.run_dir) as db:
        assert db.committed_rounds(run.run_id) == [0, 1, 2, 3, 4]

    # not exact, as documented: an uninterrupted run used the moments of round 3
    monkeypatch.setattr(trainers, "load_trainer", real)
    stages.drop_trainer()
    straight = make_run(tmp_path, "straight", save_state_every=2)
    run_rounds(straight, [1, 2, 3, 4])
    assert all(torch.equal(weights_3[k], weights(straight, 3)[k]) for k in weights_3)
    assert any(not torch.equal(weights(run, 4)[k], weights(straight, 4)[k])
               for k in weights_3)


def test_pruning_keeps_the_last_saved_optimizer_state(tmp_path):
    run = make_run(tmp_path, rounds=4, save_state_every=2, keep_checkpoints=1)
    root = layout.checkpoints_root(run.run_dir)
    run_rounds(run, [1])
    assert layout.rounds_in(root) == [1]  # no state saved yet: nothing else to keep
    run_rounds(run, [2, 3])
    assert layout.rounds_in(root) == [2, 3]  # 3 is the newest, 2 holds the state
    run_rounds(run, [4])
    assert layout.rounds_in(root) == [4]


def test_a_trainer_is_not_reused_when_the_checkpoint_it_wrote_was_replaced(
        tmp_path, monkeypatch):
    """Another attempt of round r rewrote checkpoint r (same path, new file): the
    kept-alive trainer no longer holds what the store says policy(r) is."""
    run = make_run(tmp_path)
    run_rounds(run, [1])
    ckpt = layout.checkpoint_dir(run.run_dir, 1) / "model.safetensors"
    data = ckpt.read_bytes()
    ckpt.unlink()
    ckpt.write_bytes(data)
    loads = count_loads(monkeypatch)
    run_rounds(run, [2])
    assert loads == [str(layout.checkpoint_dir(run.run_dir, 1))]


def test_a_failed_update_leaves_no_trainer_that_claims_the_old_round(
        tmp_path, monkeypatch):
    run = make_run(tmp_path)
    run_rounds(run, [1])

    def broken(model, opt, batch, **kw):
        with torch.no_grad():
            next(model.parameters()).add_(1.0)  # a half-done update changed the model
        raise RuntimeError("out of memory")

    with monkeypatch.context() as m:
        m.setattr(grpo, "policy_update", broken)
        with pytest.raises(RuntimeError):
            run_round(run, 2)
    loads = count_loads(monkeypatch)
    run_round(run, 2)
    assert loads == [str(layout.checkpoint_dir(run.run_dir, 1))]


def test_save_state_every_is_validated():
    from insight.config import ConfigError
    with pytest.raises((ValueError, ConfigError), match="save_state_every"):
        config_from_dict({"train": {"save_state_every": 0}})
    assert config_from_dict({}).train.save_state_every == 1


def test_a_clean_stop_between_two_state_saves_writes_the_exact_optimizer_state(
        tmp_path, caplog):
    """What the flow does when it ends before the next save (--max-new-rounds, a
    scheduled run): the kept-alive trainer's state goes into the last checkpoint, so the
    next flow run, a new process, continues exactly and says nothing."""
    run = make_run(tmp_path, save_state_every=2)
    run_rounds(run, [1, 2, 3])
    ckpt = layout.checkpoint_dir(run.run_dir, 3)
    weights_before = (ckpt / "model.safetensors").stat()
    assert not grpo.has_optimizer_state(ckpt)
    assert stages.flush_optimizer_state(run) == 3
    assert stages.flush_optimizer_state(run) is None  # already written: nothing to do
    kept = trainers._TRAINER["trainer"].optimizer.state_dict()
    saved = torch.load(ckpt / grpo.OPTIMIZER_FILE, weights_only=True)
    assert saved["state"].keys() == kept["state"].keys()
    assert all(torch.equal(saved["state"][i]["exp_avg_sq"], kept["state"][i]["exp_avg_sq"])
               for i in kept["state"])
    state = json.loads((ckpt / grpo.TRAINER_STATE_FILE).read_text())
    assert state[trainers.OPTIMIZER_STATE_ROUND] == 3 and state["optimizer_steps"] == 3
    assert (ckpt / "model.safetensors").stat().st_mtime_ns == weights_before.st_mtime_ns
    assert not list(ckpt.glob("*.tmp"))

    stages.drop_trainer()
    with caplog.at_level(logging.WARNING, logger="insight.trainer"):
        run_rounds(run, [4])
    assert not [r for r in caplog.records if r.name == "insight.trainer"]


def test_rollout_and_evaluation_generate_with_the_trainers_copy(tmp_path, monkeypatch):
    """One copy of the policy in memory: once round 1 has trained, evaluating it and
    rolling out round 2 use the kept-alive trainer's model, not a second copy from disk."""
    from insight.policy import model as policy_model
    run = make_run(tmp_path, rounds=3)
    run_rounds(run, [1])
    loaded = []
    real_load = policy_model.load_policy
    monkeypatch.setattr(policy_model, "load_policy",
                        lambda path, *a, **kw: loaded.append(str(path)) or real_load(path, *a, **kw))
    stages._POLICY_CACHE.clear()
    stages.evaluate(run, 1, force=True)
    with RunStore(run.run_dir) as db:
        db.start_round(run.run_id, 2, None)
    stages.select(run, 2)
    stages.rollout(run, 2)
    assert loaded == []
