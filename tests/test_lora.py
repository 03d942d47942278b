"""train.lora: only the adapter trains, checkpoints are plain merged HF models, and a
resume (adapter + optimizer state on the run's base policy) continues exactly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("peft")  # the `lora` extra (also in `test`)

from insight import stages
from insight import trainer as trainers
from insight.policy import lora
from insight.policy.model import load_policy
from insight.record import layout
from tests.test_round import SHIPPED_POLICY
from tests.test_trainer_state import make_run, run_rounds, weights

LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}


@pytest.fixture(autouse=True)
def no_trainer_kept_from_another_test():
    stages.drop_trainer()
    yield
    stages.drop_trainer()


def test_lora_trains_only_the_adapter_and_checkpoints_merged_weights(tmp_path):
    run = make_run(tmp_path, rounds=2, lora=LORA, lr=1e-2)
    run_rounds(run, [1, 2])
    trainer = trainers._TRAINER["trainer"]
    assert lora.is_lora(trainer.model)
    named = dict(trainer.model.named_parameters())
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    adapter = {n for n, p in named.items() if id(p) in in_optimizer}
    assert adapter and all(".lora_A." in n or ".lora_B." in n for n in adapter)
    assert len(adapter) == 2 * 2 * 2  # (A, B) x (q, v) x 2 layers
    assert all(not p.requires_grad for n, p in named.items() if n not in adapter)

    ckpt = layout.checkpoint_dir(run.run_dir, 2)
    assert lora.has_adapter(ckpt)
    merged, base = weights(run, 2), load_file(str(SHIPPED_POLICY / "model.safetensors"))
    assert merged.keys() == base.keys()  # a plain HF model: no lora_ or base_layer keys
    changed = {k for k in base if not torch.equal(merged[k], base[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)
    model, _ = load_policy(ckpt)  # rollout/eval/vLLM read it without peft
    assert not lora.is_lora(model)


def test_a_lora_run_resumed_in_a_new_process_each_round_trains_exactly_the_same(tmp_path):
    alive = make_run(tmp_path, "alive", rounds=2, lora=LORA, lr=1e-2)
    run_rounds(alive, [1, 2])
    reloaded = make_run(tmp_path, "reloaded", rounds=2, lora=LORA, lr=1e-2)
    run_rounds(reloaded, [1, 2], new_process_each_round=True)
    a, b = weights(alive, 2), weights(reloaded, 2)
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit (save_state_every=1)
    assert any(not torch.equal(a[k], weights(alive, 1)[k]) for k in a)  # round 2 trained
