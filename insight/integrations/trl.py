"""InSight chooses the prompts of TRL's `GRPOTrainer` (written against TRL 1.16).

TRL draws each generation batch from its `RepeatSampler`: `generation_batch_size /
num_generations` distinct prompts, each repeated `num_generations` times in a row (one
group), the whole batch repeated `num_iterations * steps_per_generation` times (TRL
generates once and slices the batch into that many optimisation steps). `InSightSampler`
keeps exactly that shape; only the choice of the prompts changes: each generation batch
is one InSight round, drawn by the run's selector when the data loader asks for it.

`InSightReward` is the reward function: InSight's strict verifier of each prompt (or a
reward function of yours, success being reward >= `rollout.success_threshold`); it also
hands each generation batch's groups to `OnlineSelection.observe`, which updates the
posteriors and commits the round to the run directory. `InSightCallback` saves the
selection state with every TRL checkpoint and restores it on resume.

Timing: transformers fetches one optimiser step's batches at once and accelerate
prefetches one more, so the next round may be drawn before the current one is scored.
`fetch_lag` computes, from the batch arithmetic, how many rounds behind the posterior a
draw can be; round r is always scored on the posterior after round r - 1 - lag (lag is 1
with TRL's defaults), whatever the timing, so a resume draws what the run would have.

Use `InSightGRPOTrainer` (a `GRPOTrainer` with the three wired in); see
examples/trl_grpo.py and docs/integrations.md. One process only for now: the posteriors
would need every process's rewards (refused in one line otherwise).
"""

from __future__ import annotations

import math
import os
from typing import Callable

from torch.utils.data import Sampler
from transformers import TrainerCallback
from trl import GRPOTrainer

from insight.integrations.online import OnlineSelection


class InSightSampler(Sampler):
    """TRL's `RepeatSampler` shape with InSight's prompts: per generation batch, B prompts
    (asked of the selector when the first index is needed), each `mini_repeat_count`
    times in a row, the batch `repeat_count` times; `len(dataset) // B` batches an epoch."""

    def __init__(self, selection: OnlineSelection, prompt_ids: list[str], *,
                 mini_repeat_count: int, batch_size: int, repeat_count: int):
        self.selection = selection
        self.row_of = {pid: i for i, pid in enumerate(prompt_ids)}
        self.mini_repeat_count = mini_repeat_count
        self.batch_size = batch_size
        self.repeat_count = repeat_count
        self.batches_per_epoch = len(prompt_ids) // batch_size

    def __len__(self) -> int:
        return (self.batches_per_epoch * self.batch_size * self.mini_repeat_count
                * self.repeat_count)

    def __iter__(self):
        for _ in range(self.batches_per_epoch):
            rows = [self.row_of[pid] for pid in self.selection.draw()]
            for _ in range(self.repeat_count):
                for row in rows:
                    for _ in range(self.mini_repeat_count):
                        yield row


class InSightReward:
    """A TRL reward function that scores with InSight's verifier (or `reward_func`) and
    feeds each generation batch's outcomes to the selection. Needs the dataset's
    `prompt_id` column (TRL passes every dataset column to reward functions)."""

    __name__ = "insight_reward"  # TRL names the reward's metrics after it

    def __init__(self, selection: OnlineSelection, reward_func: Callable | None = None,
                 eos_token_id: int | None = None):
        self.selection = selection
        self.reward_func = reward_func
        self.eos_token_id = eos_token_id

    def __call__(self, prompts, completions, completion_ids=None, prompt_id=None, **kwargs):
        if prompt_id is None:
            raise ValueError("InSightReward needs a `prompt_id` column in the train dataset")
        texts = [_completion_text(c) for c in completions]
        if self.reward_func is None:
            results = [self.selection.verify(pid, t) for pid, t in zip(prompt_id, texts)]
            rewards = [float(r.reward) for r in results]
            errors = [r.error for r in results]
        else:
            rewards = [float(x) for x in self.reward_func(
                prompts=prompts, completions=completions, completion_ids=completion_ids,
                prompt_id=prompt_id, **kwargs)]
            errors = None
        truncated = None
        if completion_ids is not None and self.eos_token_id is not None:
            truncated = [self.eos_token_id not in ids for ids in completion_ids]
        self.selection.observe(list(prompt_id), texts, rewards,
                               completion_token_ids=completion_ids, verifier_errors=errors,
                               truncated=truncated)
        return rewards


class InSightCallback(TrainerCallback):
    """Selection state in TRL checkpoints: written beside each one (`on_save`), read back
    when training resumes from one (`on_train_begin` with a global step > 0)."""

    def __init__(self, selection: OnlineSelection):
        self.selection = selection

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0:
            self.selection.restore(_checkpoint_dir(args, state))
        elif self.selection.last_round > 0:
            raise ValueError(f"{self.selection.run.run_dir} already holds "
                             f"{self.selection.last_round} rounds: resume TRL from its "
                             "checkpoint (resume_from_checkpoint) or use a new run directory")

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.selection.save(_checkpoint_dir(args, state))


class InSightGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` whose prompts InSight chooses. `selection` is the run
    (`OnlineSelection.open`); its `rollout.k` must be `num_generations` and its
    `rollout.batch_size` `generation_batch_size / num_generations`. The train dataset is
    the run's training prompts (the text the policy is given, and `prompt_id`)."""

    def __init__(self, *, selection: OnlineSelection, args, reward_func: Callable | None = None,
                 callbacks=None, processing_class=None, **kwargs):
        _check_shapes(selection, args)
        # InSight draws every batch from the restored posteriors: a resume has no batches
        # to fast-forward past (and skipping would draw rounds nobody trains on).
        args.ignore_data_skip = True
        selection.lag = fetch_lag(args.steps_per_generation * args.num_iterations,
                                  args.gradient_accumulation_steps)
        self.selection = selection
        eos = getattr(processing_class, "eos_token_id", None)
        super().__init__(args=args, train_dataset=prompt_dataset(selection),
                         reward_funcs=[InSightReward(selection, reward_func, eos)],
                         callbacks=[InSightCallback(selection), *(callbacks or [])],
                         processing_class=processing_class, **kwargs)
        if self.accelerator.num_processes > 1:
            raise ValueError("the InSight TRL plug-in runs in one process for now "
                             f"(got {self.accelerator.num_processes})")

    def _get_train_sampler(self, dataset=None):
        dataset = self.train_dataset if dataset is None else dataset
        return InSightSampler(
            self.selection, list(dataset["prompt_id"]), mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation)


def prompt_dataset(selection: OnlineSelection):
    """The run's training prompts as TRL's train dataset: `prompt` (the text the policy
    is given, as recorded in `prompts.rendered`) and `prompt_id`."""
    from datasets import Dataset

    return Dataset.from_dict({
        "prompt": [p.model_input for p in selection.problems.values()],
        "prompt_id": list(selection.problems)})


def fetch_lag(generate_every: int, grad_accum: int) -> int:
    """How many rounds behind a draw's posterior must be. Batch j (0-based; a round is
    `generate_every` batches, scored at its first) is fetched with the group of
    `grad_accum` batches holding batch j - 1 (accelerate prefetches one ahead), and a
    round's rewards arrive while its first batch's group is trained. The lag is the
    smallest L such that round q's draw always comes after round q - 1 - L was scored."""
    def group(batch: int) -> int:
        return batch // grad_accum

    period = math.lcm(generate_every, grad_accum) // generate_every + 2
    lag = 0
    for q in range(2, 2 + 2 * period):
        drawn_in = group(max(0, (q - 1) * generate_every - 1))
        while q - 1 - lag >= 1 and group((q - 2 - lag) * generate_every) >= drawn_in:
            lag += 1
    return lag


def _check_shapes(selection: OnlineSelection, args) -> None:
    k, b = selection.k, selection.batch_size
    if args.num_generations != k:
        raise ValueError(f"num_generations ({args.num_generations}) must equal the run's "
                         f"rollout.k ({k})")
    if args.generation_batch_size != b * k:
        raise ValueError(f"generation_batch_size ({args.generation_batch_size}) must be the "
                         f"run's rollout.batch_size x rollout.k ({b} x {k} = {b * k})")
    if args.dataloader_num_workers:
        raise ValueError("the InSight sampler needs dataloader_num_workers=0 (workers fetch "
                         "batches ahead of the rewards that choose them)")


def _checkpoint_dir(args, state) -> str:
    return os.path.join(args.output_dir, f"checkpoint-{state.global_step}")


def _completion_text(completion) -> str:
    """A standard completion is text; a conversational one a list of messages."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content", "")) for m in completion)
