"""Supervised warm start of the tiny policy on generated arithmetic.

    python -m flows.cli_bootstrap --out checkpoints/tiny-arith --seed 0 [--steps N]

Trains a freshly built tiny policy (insight.policy.model.build_tiny_policy) with teacher
forcing on `prompt -> answer<eos>` pairs from insight.problems.datasets.generate_arithmetic.
The warm start is deliberately left uncertain: a short schedule (1500 steps of 128) and
label smoothing 0.1, so that sampling at temperature 1 solves many prompts only
*sometimes* (its sampled accuracy sits well below its greedy accuracy). That is where
GRPO has signal and where prompt selection matters; RL's first gains are sharpening the
policy, then fixing answers it gets wrong. Reproducible given the seed on CPU.

Default task range: 1-2 digit operands, + and -. (Plain left-to-right 3-digit
arithmetic is learned far more slowly by a model this size: after 4000 steps it still
had ~10% greedy accuracy, too little for RL to work with in a CPU budget.)

The bootstrap data come from their own generator seed (BOOTSTRAP_DATA_SEED_OFFSET +
seed) so they are a different draw from the training and held-out pools that a run
generates with its own seed (short problems, e.g. 1-digit ones, necessarily recur).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

BOOTSTRAP_DATA_SEED_OFFSET = 1_000_003

@dataclass
class BootstrapConfig:
    seed: int = 0
    steps: int = 1500
    batch_size: int = 128
    lr: float = 3e-3
    warmup_steps: int = 50
    label_smoothing: float = 0.1
    min_digits: int = 1
    max_digits: int = 2
    ops: tuple[str, ...] = ("+", "-")
    n_problems: int = 15_000  # capped at the number of distinct prompts the range has
    model_size: dict = field(default_factory=dict)
    eval_problems: int = 256
    log_every: int = 100


def _sft_batch(tokenizer, problems, device):
    """Left-aligned teacher-forcing batch: [bos prompt answer eos pad...], loss only on
    answer + eos tokens (labels -100 elsewhere)."""
    seqs, labels = [], []
    eos = tokenizer.eos_token_id
    for p in problems:
        pid = tokenizer(p.prompt, add_special_tokens=True)["input_ids"]
        aid = tokenizer(p.answer, add_special_tokens=False)["input_ids"] + [eos]
        seqs.append(pid + aid)
        labels.append([-100] * len(pid) + aid)
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), tokenizer.pad_token_id, dtype=torch.long)
    lab = torch.full((len(seqs), L), -100, dtype=torch.long)
    att = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, (s, l) in enumerate(zip(seqs, labels)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(l)] = torch.tensor(l)
        att[i, : len(s)] = 1
    return ids.to(device), att.to(device), lab.to(device)


def sft_loss(model, ids, att, lab, label_smoothing: float = 0.0) -> torch.Tensor:
    """Token-mean cross-entropy on the labelled (answer + eos) positions."""
    logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        lab[:, 1:].reshape(-1),
        ignore_index=-100,
        label_smoothing=label_smoothing,
    )


def bootstrap(cfg: BootstrapConfig, *, out: str | Path | None = None, device: str = "cpu", log=print):
    """Build and warm-start a tiny policy; save it to `out` if given.

    Returns (model, tokenizer, info) where info holds the config, the final SFT loss,
    held-out accuracies (greedy and avg@4 at temperature 1) on a fresh draw, and timing.
    """
    from insight.problems.datasets import generate_arithmetic
    from insight.policy.generation import evaluate_accuracy
    from insight.policy.model import build_tiny_policy, num_parameters, resolve_device, save_policy

    dev = resolve_device(device)
    t0 = time.time()
    model, tok = build_tiny_policy(cfg.seed, **cfg.model_size)
    model.to(dev).train()
    data_seed = BOOTSTRAP_DATA_SEED_OFFSET + cfg.seed
    n = cfg.n_problems
    while True:  # small ranges have fewer distinct prompts than asked for
        try:
            data = generate_arithmetic(
                n, data_seed, min_digits=cfg.min_digits, max_digits=cfg.max_digits,
                ops=tuple(cfg.ops), id_prefix="boot",
            )
            break
        except ValueError:
            if n <= 16:
                raise
            n //= 2
    rng = random.Random(f"bootstrap:{cfg.seed}")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    log(
        f"bootstrap: {num_parameters(model):,} params, {cfg.steps} steps x {cfg.batch_size}, "
        f"digits {cfg.min_digits}-{cfg.max_digits} ops {''.join(cfg.ops)}, seed {cfg.seed}"
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        ema = None
        for step in range(cfg.steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            batch = [data[rng.randrange(len(data))] for _ in range(cfg.batch_size)]
            ids, att, lab = _sft_batch(tok, batch, dev)
            loss = sft_loss(model, ids, att, lab, cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            lv = float(loss.detach())
            ema = lv if ema is None else 0.95 * ema + 0.05 * lv
            if cfg.log_every and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps):
                log(f"  step {step + 1:5d}/{cfg.steps}  loss {ema:.4f}  lr {lr_at(step):.2e}  {time.time() - t0:6.1f}s")
    model.eval()
    info: dict = {
        "config": asdict(cfg),
        "final_loss": ema,
        "train_seconds": time.time() - t0,
        # float reductions may differ with the thread count: rebuild with the same one
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    if cfg.eval_problems > 0:
        probe = generate_arithmetic(
            cfg.eval_problems, data_seed + 1, min_digits=cfg.min_digits,
            max_digits=cfg.max_digits, ops=tuple(cfg.ops), id_prefix="probe",
        )
        g = evaluate_accuracy(model, tok, probe, greedy=True, seed=0)
        s = evaluate_accuracy(model, tok, probe, n_samples=4, temperature=1.0, seed=0)
        info["probe_greedy_accuracy"] = g["accuracy"]
        info["probe_avg_t1_accuracy"] = s["accuracy"]
        mid = sum(1 for r in s["per_problem"] if 0 < r["successes"] < r["n"])
        info["probe_intermediate_share"] = mid / max(1, len(probe))
        log(
            f"probe ({len(probe)} fresh problems): greedy {g['accuracy']:.3f}, "
            f"avg@4 T=1 {s['accuracy']:.3f}, share with 0<s<4: {info['probe_intermediate_share']:.2f}"
        )
    if out is not None:
        save_policy(model, tok, out)
        (Path(out) / "bootstrap_info.json").write_text(json.dumps(info, indent=2, sort_keys=True))
        log(f"saved to {out}")
    return model, tok, info

