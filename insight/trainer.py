"""The trainer across rounds: the policy being trained, its optimizer and (with a KL
term) the frozen reference, kept alive in the flow process from one round to the next.

Reloading a 7B model and its Adam state from disk for every stage of every round costs
more than the round's own compute on a GPU, so the trainer stays in memory and is reused
only when it holds exactly the checkpoint the record says is policy(r-1) (its weights
file's identity is checked); anything else (a new process, a redone round) loads from
disk. Every round writes the policy weights; the optimizer state is written every
`train.save_state_every` rounds, so a resume after a crash between two saves continues
from the last weights with the last saved optimizer state, and says so in one line.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from insight.policy import grpo, lora, model as policy_model, precision
from insight.record import layout
from insight.record.run import TRAIN, Run, stage_seed

log = logging.getLogger("insight.trainer")

OPTIMIZER_STATE_ROUND = "optimizer_state_round"  # trainer_state.json: where its Adam state is


@dataclass
class Trainer:
    """The policy being trained, its optimizer and (with a KL term) the reference policy,
    kept alive between rounds. `round` is the policy it holds, `weights` the identity of
    that round's weights file as written, so a cached trainer is used only for exactly
    the checkpoint the store says is policy(r-1)."""

    key: tuple
    round: int
    weights: tuple | None
    model: object
    tokenizer: object
    optimizer: object
    ref: object | None = None
    state_round: int | None = None  # the last round whose optimizer state is on disk
    precision: str = "fp32"         # train.precision, resolved for the device


_TRAINER: dict[str, Trainer] = {}  # one slot: the trainer of the run this process trains


def _trainer_key(run: Run) -> tuple:
    return (str(run.run_dir), run.run_id, str(policy_model.resolve_device(run.config.policy.device)))


def _weights_identity(checkpoint: str | Path) -> tuple | None:
    """(name, inode, size, mtime) of each weights file: changes whenever another attempt
    of the round rewrites the checkpoint, even at the same path."""
    files = sorted(Path(checkpoint).glob("*.safetensors"))
    if not files:
        return None
    return tuple((f.name, st.st_ino, st.st_size, st.st_mtime_ns)
                 for f, st in ((f, f.stat()) for f in files))


weights_identity = _weights_identity  # public: shard workers key their policy cache on it


def take_trainer(run: Run, held_round: int, checkpoint: str) -> Trainer:
    """The trainer holding policy(held_round): the one kept alive in this process when
    it holds exactly that checkpoint, else loaded from disk. The cache slot is emptied
    either way: the update changes the model in place, so a failed update must not
    leave a trainer that claims to hold policy(held_round)."""
    cfg = run.config
    cached = _TRAINER.pop("trainer", None)
    if (cached is not None and cached.key == _trainer_key(run) and cached.round == held_round
            and cached.weights is not None and cached.weights == _weights_identity(checkpoint)):
        grpo.set_hyperparameters(cached.optimizer, cfg.train.lr)
        if cfg.train.kl_coef > 0 and cached.ref is None:
            cached.ref = _reference_policy(run)
        return cached
    del cached  # free its memory before loading another copy
    return load_trainer(run, held_round, checkpoint)


def load_trainer(run: Run, held_round: int, checkpoint: str) -> Trainer:
    """Policy(held_round) from `checkpoint` with the newest optimizer state saved at or
    before that round. When that state is older than the weights (a crash between two
    `train.save_state_every` saves), the log says so in one line."""
    cfg = run.config
    state_round, state_dir = last_optimizer_state(run, held_round, checkpoint)
    device = policy_model.resolve_device(cfg.policy.device)
    mode = precision.resolve_precision(cfg.train.precision, device)
    if cfg.train.lora is not None and held_round > 0 and not lora.has_adapter(checkpoint):
        raise ValueError(f"train.lora is set but the checkpoint of round {held_round} has no "
                         f"LoRA adapter ({checkpoint}); it was not written by a LoRA run")
    model, tok, opt = grpo.load_trainer_state(
        checkpoint, lr=cfg.train.lr, device=str(device), optimizer_from=state_dir,
        precision=mode, gradient_checkpointing=cfg.train.gradient_checkpointing,
        lora_options=cfg.train.lora, lora_base=_initial_policy(run),
        lora_seed=stage_seed(cfg.seed, 0, TRAIN))
    if held_round > 0 and state_round != held_round:
        saved = (f"the optimizer state saved at round {state_round}" if state_round is not None
                 else "a fresh optimizer (no saved optimizer state is left)")
        log.warning("round %d continues from the weights of round %d with %s "
                    "(train.save_state_every=%d)", held_round + 1, held_round, saved,
                    cfg.train.save_state_every)
    ref = _reference_policy(run) if cfg.train.kl_coef > 0 else None
    return Trainer(_trainer_key(run), held_round, _weights_identity(checkpoint), model, tok,
                   opt, ref, state_round, mode)


def _reference_policy(run: Run):
    """The frozen KL reference: bf16 storage suffices under bf16 autocast."""
    device = policy_model.resolve_device(run.config.policy.device)
    mode = precision.resolve_precision(run.config.train.precision, device)
    ref, _ = policy_model.load_policy(_initial_policy(run), device=device,
                                      dtype=precision.reference_dtype(mode))
    return ref


def last_optimizer_state(run: Run, held_round: int,
                         checkpoint: str | None = None) -> tuple[int | None, Path | None]:
    """(round, directory) of the newest optimizer state saved at or before `held_round`:
    the checkpoint of policy(held_round) itself, else the newest round checkpoint below
    it that has one; (None, None) when there is none (a fresh optimizer). Round 0 is the
    configured policy: its directory's state, if it ships one."""
    if checkpoint is not None and grpo.has_optimizer_state(checkpoint):
        return held_round, Path(checkpoint)
    if held_round == 0:
        return None, None
    for r in reversed(layout.rounds_in(layout.checkpoints_root(run.run_dir))):
        if 1 <= r < held_round and grpo.has_optimizer_state(layout.checkpoint_dir(run.run_dir, r)):
            return r, layout.checkpoint_dir(run.run_dir, r)
    return None, None


def saves_state(run: Run, round_: int) -> bool:
    """Whether round r writes the full optimizer state: every `train.save_state_every`
    rounds and at the planned last round (a finished run continues exactly)."""
    return round_ % run.config.train.save_state_every == 0 or round_ == run.config.rounds


def write_checkpoint(run: Run, round_: int, trainer: Trainer, stats: dict) -> Path:
    """Checkpoint(r): the policy weights (safetensors) every round, the optimizer state
    when `saves_state`. Written to `round_NNNNN.tmp/` and renamed into place, so a reader
    sees a whole checkpoint or none. The trainer then holds policy(r)."""
    dst = layout.checkpoint_dir(run.run_dir, round_)
    with_state = saves_state(run, round_)
    state_round = round_ if with_state else trainer.state_round
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    grpo.save_trainer_state(tmp, trainer.model, trainer.tokenizer,
                            trainer.optimizer if with_state else None,
                            extra={"round": round_, OPTIMIZER_STATE_ROUND: state_round})
    (tmp / "train_stats.json").write_text(json.dumps(stats))
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)
    trainer.round, trainer.state_round = round_, state_round
    trainer.weights = _weights_identity(dst)
    return dst


def flush_optimizer_state(run: Run) -> int | None:
    """When a flow run ends cleanly before its state save (`--max-new-rounds`, a
    scheduled run), write the kept-alive trainer's optimizer state into the checkpoint
    of the round it holds, so the next flow run (a new process) continues exactly.
    Adds `optimizer.pt` atomically (written aside, renamed); the weights are untouched.
    Returns the round whose state was written, None when there was nothing to do."""
    trainer = _TRAINER.get("trainer")
    if trainer is None or trainer.key != _trainer_key(run) or trainer.state_round == trainer.round:
        return None
    ckpt = layout.checkpoint_dir(run.run_dir, trainer.round)
    if trainer.weights is None or trainer.weights != _weights_identity(ckpt):
        return None  # the checkpoint on disk is not the one this trainer wrote
    grpo.save_optimizer_state(ckpt, trainer.optimizer,
                              extra={"round": trainer.round, OPTIMIZER_STATE_ROUND: trainer.round})
    trainer.state_round = trainer.round
    return trainer.round


def keep_trainer(trainer: Trainer) -> None:
    """Keep the trainer alive for the next round of its run (one slot per process)."""
    _TRAINER["trainer"] = trainer


def drop_trainer() -> None:
    """Forget the kept-alive trainer (its memory is freed with the last reference)."""
    _TRAINER.clear()


def holding(run: Run, checkpoint: str | Path) -> Trainer | None:
    """The kept-alive trainer if it holds exactly `checkpoint` for this run, else None
    (generation may then use its model instead of loading a second copy)."""
    trainer = _TRAINER.get("trainer")
    if (trainer is not None and trainer.key == _trainer_key(run)
            and trainer.weights is not None and trainer.weights == _weights_identity(checkpoint)):
        return trainer
    return None


def _initial_policy(run: Run) -> str:
    """Policy(0): the configured starting checkpoint."""
    return str(run.config.resolved_policy_path())
