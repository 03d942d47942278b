"""InSight chooses the prompts of verl's PPO/GRPO trainer (written against verl 0.9.1).

verl 0.9.1's `RayPPOTrainer` takes a `train_sampler` (its data loader is a torchdata
`StatefulDataLoader` with `batch_size = data.train_batch_size`, `num_workers =
data.dataloader_num_workers`): `InSightVerlSampler` is that sampler. Each training step's
batch is one InSight round, drawn by the run's selector when the loader asks for it.

Outcome feedback: verl 0.9.1 no longer calls a sampler back (the `update(batch)` of the
earlier `AbstractCurriculumSampler` is gone from its trainer), so `InSightRayPPOTrainer`
hands each step's scored batch to `InSightVerlSampler.update` before the actor update
(`_update_actor`, the first place the driver holds the step's rewards), and saves and
restores the selection state beside verl's own checkpoint (`global_step_N/`). With
`dataloader_num_workers: 0` the loader fetches a step's batch only after the previous
step trained, so every round is scored on the posterior after the one before it. Keep
`trainer.critic_warmup: 0` (GRPO has no critic): during a warm-up verl skips the actor
update, the step's outcomes would not be observed, and the next draw refuses to run.

Each row of the verl dataset must carry its InSight prompt id in `extra_info.prompt_id`
(`verl_rows` writes such rows from the run's prompts): verl reorders a batch
(`_balance_batch`) and gives groups random uids, so the id travels with the row.

The v1 trainer's `trainer.v1.sampler.custom_sampler.{path,name}` is a `ReplayBuffer`
subclass: it picks which *finished trajectories* train, after generation, not which prompts
are generated, so it is not where prompt selection goes (docs/integrations.md).
"""

from __future__ import annotations

import functools
import os

from torch.utils.data import Sampler

from insight.integrations.online import OnlineSelection


class InSightVerlSampler(Sampler):
    """verl's `train_sampler`: B dataset rows a step, chosen by InSight; `len(dataset) //
    B` steps an epoch. `row_prompt_ids[i]` is the InSight prompt id of dataset row i."""

    def __init__(self, selection: OnlineSelection, row_prompt_ids: list[str]):
        self.selection = selection
        self.row_of = {str(pid): i for i, pid in enumerate(row_prompt_ids)}
        missing = set(selection.problems) - set(self.row_of)
        if missing:
            raise ValueError(f"{len(missing)} training prompts of the run are not rows of the "
                             f"verl dataset, e.g. {sorted(missing)[:3]}")
        self.batches_per_epoch = len(selection.problems) // selection.batch_size

    def __len__(self) -> int:
        return self.batches_per_epoch * self.selection.batch_size

    def __iter__(self):
        for _ in range(self.batches_per_epoch):
            for pid in self.selection.draw():
                yield self.row_of[pid]

    def update(self, batch, tokenizer=None) -> int:
        """Observe one step's scored batch (a verl `DataProto`): per response, its prompt
        id (`extra_info.prompt_id`), its reward (the sum of `token_level_scores`, verl's
        verifiable reward before any KL penalty) and, with a tokenizer, its text.
        Commits the round; returns its number."""
        prompt_ids, rewards, token_ids = outcomes_of(batch)
        texts = ([tokenizer.decode(ids, skip_special_tokens=True) for ids in token_ids]
                 if tokenizer is not None else [""] * len(prompt_ids))
        return self.selection.observe(prompt_ids, texts, rewards,
                                      completion_token_ids=token_ids)

    # torchdata's StatefulDataLoader saves a sampler's state when it has these
    def state_dict(self) -> dict:
        return {"last_round": self.selection.last_round}

    def load_state_dict(self, state: dict) -> None:
        if state.get("last_round") != self.selection.last_round:
            raise ValueError(f"data loader state of round {state.get('last_round')} does not "
                             f"match the restored selection (round "
                             f"{self.selection.last_round})")


def outcomes_of(batch) -> tuple[list[str], list[float], list[list[int]]]:
    """(prompt id, reward, response token ids) of every response of a verl batch."""
    nt = batch.non_tensor_batch
    if "extra_info" not in nt or any(not isinstance(e, dict) or "prompt_id" not in e
                                     for e in nt["extra_info"]):
        raise ValueError("verl batch rows need extra_info.prompt_id (write the dataset with "
                         "insight.integrations.verl.verl_rows)")
    prompt_ids = [str(e["prompt_id"]) for e in nt["extra_info"]]
    scores = batch.batch["token_level_scores"]
    rewards = scores.sum(dim=-1).float().tolist()
    responses = batch.batch["responses"]
    length = responses.shape[-1]
    mask = batch.batch["attention_mask"][:, -length:].bool()
    token_ids = [row[m].tolist() for row, m in zip(responses, mask)]
    return prompt_ids, rewards, token_ids


def verl_rows(selection: OnlineSelection, data_source: str = "insight") -> list[dict]:
    """The run's training prompts as verl RL dataset rows (write them to Parquet for
    `data.train_files`): chat `prompt`, `reward_model.ground_truth`, and
    `extra_info.prompt_id` / `extra_info.index` (the row)."""
    return [{"data_source": data_source,
             "prompt": [{"role": "user", "content": p.model_input}],
             "ability": p.source,
             "reward_model": {"style": "rule", "ground_truth": p.answer},
             "extra_info": {"index": i, "prompt_id": p.prompt_id}}
            for i, p in enumerate(selection.problems.values())]


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float:
    """A verl custom reward function (`reward.custom_reward_function.{path,name}`) that
    scores with InSight's strict verifier of the row's verifier (`extra_info.verifier`,
    default arithmetic). Never executes the completion."""
    from insight.problems import verifiers

    name = (extra_info or {}).get("verifier", "arithmetic")
    return float(verifiers.verify(name, solution_str, ground_truth).reward)


@functools.cache
def _trainer_class():
    """`InSightRayPPOTrainer`, built on import of verl (only installed in its own env)."""
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    class InSightRayPPOTrainer(RayPPOTrainer):
        """`RayPPOTrainer` with InSight choosing the prompts: pass `insight_sampler`
        (it becomes `train_sampler`); every other argument is RayPPOTrainer's."""

        def __init__(self, *args, insight_sampler: InSightVerlSampler, **kwargs):
            self.insight_sampler = insight_sampler
            super().__init__(*args, train_sampler=insight_sampler, **kwargs)

        def _update_actor(self, batch):
            self.insight_sampler.update(batch, self.tokenizer)
            return super()._update_actor(batch)

        def _save_checkpoint(self):
            super()._save_checkpoint()
            self.insight_sampler.selection.save(self._insight_checkpoint_dir())

        def _load_checkpoint(self):
            out = super()._load_checkpoint()
            if self.global_steps > 0:
                self.insight_sampler.selection.restore(self._insight_checkpoint_dir())
            return out

        def _insight_checkpoint_dir(self) -> str:
            return os.path.join(self.config.trainer.default_local_dir,
                                f"global_step_{self.global_steps}")

    return InSightRayPPOTrainer


def __getattr__(name: str):
    """`InSightRayPPOTrainer` subclasses verl's trainer: imported only when asked for, so
    the sampler and its tests need no verl."""
    if name == "InSightRayPPOTrainer":
        return _trainer_class()
    raise AttributeError(name)
