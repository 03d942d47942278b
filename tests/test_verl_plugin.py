"""The verl plug-in against verl 0.9.1's real classes (DataProto, its collate_fn, torchdata's
StatefulDataLoader that RayPPOTrainer builds, RayPPOTrainer itself).

verl pins an older transformers than InSight's main environment, so this file runs in the
env that `scripts/verl_env.sh` makes:  .venv-verl/bin/python -m pytest -q tests/test_verl_plugin.py
In the main suite it is skipped (verl is not importable there). A whole RayPPOTrainer.fit
is not run: it needs a vLLM or SGLang rollout server on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

verl = pytest.importorskip("verl", reason="verl is installed in its own env "
                                          "(scripts/verl_env.sh), not the main one")
import torch  # noqa: E402
from torchdata.stateful_dataloader import StatefulDataLoader  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.trainer.ppo.ray_trainer import RayPPOTrainer  # noqa: E402
from verl.utils.dataset.rl_dataset import collate_fn  # noqa: E402

from insight.config import load_config  # noqa: E402
from insight.integrations import verl as plugin  # noqa: E402
from insight.integrations.online import OnlineSelection  # noqa: E402
from insight.record.run import check_config  # noqa: E402
from insight.record.store import RunStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
B, K, T = 4, 3, 5  # prompts a step, responses a prompt, response tokens


@pytest.fixture
def selection(tmp_path):
    cfg = load_config(ROOT / "configs" / "tiny.yaml", {
        "policy.path": str(ROOT / "checkpoints" / "tiny-arith"),
        "data.n_train": 32, "data.n_eval": 8, "rollout.batch_size": B, "rollout.k": K})
    sel = OnlineSelection.open(tmp_path / "run", cfg, *check_config(cfg))
    yield sel
    sel.close()


class Rows(torch.utils.data.Dataset):
    """verl-format rows (what RLHFDataset.__getitem__ returns, minus tokenization)."""

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows[i]
        return {"input_ids": torch.tensor([i]), "extra_info": row["extra_info"],
                "reward_model": row["reward_model"]}


def scored_batch(rows: list[dict], successes: dict[str, int]) -> DataProto:
    """What the trainer holds before the actor update: K responses per prompt, the
    verifiable reward on the last response token, rows shuffled like _balance_batch."""
    infos, scores = [], []
    for row in rows:
        pid = row["extra_info"]["prompt_id"]
        for j in range(K):
            infos.append(row["extra_info"])
            s = torch.zeros(T)
            s[2] = 1.0 if j < successes[pid] else 0.0
            scores.append(s)
    n = len(infos)
    order = np.random.default_rng(0).permutation(n)
    responses = torch.arange(n * T).reshape(n, T) % 20 + 3
    attention = torch.ones(n, 2 + T, dtype=torch.long)
    attention[:, -2:] = 0  # the last two response positions are padding
    return DataProto.from_single_dict({
        "responses": responses[order], "attention_mask": attention[order],
        "token_level_scores": torch.stack(scores)[order],
        "extra_info": np.array(infos, dtype=object)[order]})


def test_verls_data_loader_fetches_the_prompts_insight_draws(selection):
    rows = plugin.verl_rows(selection)
    sampler = plugin.InSightVerlSampler(selection, [r["extra_info"]["prompt_id"] for r in rows])
    loader = StatefulDataLoader(Rows(rows), batch_size=B, sampler=sampler, num_workers=0,
                                drop_last=True, collate_fn=collate_fn)
    it = iter(loader)
    batch = DataProto.from_single_dict(next(it))
    got = [e["prompt_id"] for e in batch.non_tensor_batch["extra_info"]]
    assert got == list(selection.pending[1].prompt_ids)
    # the step's outcomes, then the next step's batch is drawn from the new posterior
    round_ = sampler.update(scored_batch([rows[sampler.row_of[p]] for p in got],
                                         dict(zip(got, [0, 1, 2, 3]))))
    assert round_ == 1
    next(it)
    sel2 = selection.pending[2].table.to_pylist()
    seen = {r["prompt_id"]: (r["alpha"], r["beta"]) for r in sel2}
    assert [seen[p] for p in got] == [(1.0, 4.0), (2.0, 3.0), (3.0, 2.0), (4.0, 1.0)]


def test_update_records_each_response_with_its_prompt_reward_and_tokens(selection):
    rows = plugin.verl_rows(selection)
    sampler = plugin.InSightVerlSampler(selection, [r["extra_info"]["prompt_id"] for r in rows])
    chosen = selection.draw()
    batch = scored_batch([rows[sampler.row_of[p]] for p in chosen], {p: 1 for p in chosen})
    sampler.update(batch)
    ro = pq.read_table(selection.run.run_dir / "parquet" / "round_00001" / "rollouts.parquet")
    assert ro.num_rows == B * K
    assert sorted(set(ro["prompt_id"].to_pylist())) == sorted(chosen)
    assert sum(ro["success"].to_pylist()) == B  # one success per group
    assert all(len(ids) == T - 2 for ids in ro["completion_token_ids"].to_pylist())


def test_a_batch_without_prompt_ids_is_refused_in_one_line(selection):
    batch = DataProto.from_single_dict({
        "responses": torch.zeros(2, T, dtype=torch.long),
        "attention_mask": torch.ones(2, T, dtype=torch.long),
        "token_level_scores": torch.zeros(2, T),
        "extra_info": np.array([{}, {}], dtype=object)})
    with pytest.raises(ValueError, match="extra_info.prompt_id"):
        plugin.outcomes_of(batch)


def test_the_trainer_observes_before_the_actor_update_and_checkpoints_the_selection(
        selection, tmp_path, monkeypatch):
    cls = plugin.InSightRayPPOTrainer
    assert issubclass(cls, RayPPOTrainer)
    rows = plugin.verl_rows(selection)
    sampler = plugin.InSightVerlSampler(selection, [r["extra_info"]["prompt_id"] for r in rows])
    calls = []
    # RayPPOTrainer's own update and checkpoint need its Ray workers: stand them in,
    # to see what the subclass does around them
    monkeypatch.setattr(RayPPOTrainer, "_update_actor",
                        lambda self, batch: calls.append(("actor", selection.last_round)))
    monkeypatch.setattr(RayPPOTrainer, "_save_checkpoint", lambda self: calls.append("save"))
    monkeypatch.setattr(RayPPOTrainer, "_load_checkpoint", lambda self: calls.append("load"))
    trainer = cls.__new__(cls)
    trainer.insight_sampler, trainer.tokenizer = sampler, None

    class Cfg:
        class trainer:
            default_local_dir = str(tmp_path / "ckpt")

    trainer.config, trainer.global_steps = Cfg, 1
    chosen = selection.draw()
    trainer._update_actor(scored_batch([rows[sampler.row_of[p]] for p in chosen],
                                       {p: 0 for p in chosen}))
    assert calls == [("actor", 1)]  # round 1 observed before the actor update
    trainer._save_checkpoint()
    assert (tmp_path / "ckpt" / "global_step_1" / "insight_selection" / "state.json").is_file()
    trainer._load_checkpoint()
    assert selection.last_round == 1 and calls[-1] == "load"
    with RunStore(selection.run.run_dir, read_only=True) as db:
        assert db.committed_rounds(selection.run.run_id) == [0, 1]
