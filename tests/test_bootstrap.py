"""Supervised warm start: reproducible, runnable for a few steps, shipped checkpoint."""

import json
from pathlib import Path

import pytest
import torch

from flows.cli_bootstrap import main
from insight.policy.bootstrap import BootstrapConfig, bootstrap
from insight.policy.model import load_policy

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "tiny-arith"
SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def _cfg(**kw):
    base = dict(steps=3, batch_size=8, n_problems=200, eval_problems=0, log_every=0, model_size=SMALL)
    base.update(kw)
    return BootstrapConfig(**base)


def test_bootstrap_is_reproducible_given_the_seed():
    m1, _, info1 = bootstrap(_cfg(seed=1), log=lambda *_: None)
    m2, _, info2 = bootstrap(_cfg(seed=1), log=lambda *_: None)
    m3, _, _ = bootstrap(_cfg(seed=2), log=lambda *_: None)
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    assert info1["final_loss"] == info2["final_loss"]
    assert any(not torch.equal(p, q) for p, q in zip(m1.parameters(), m3.parameters()))


def test_bootstrap_loss_goes_down():
    _, _, short = bootstrap(_cfg(steps=1, lr=3e-3, warmup_steps=1), log=lambda *_: None)
    _, _, longer = bootstrap(_cfg(steps=30, lr=3e-3, warmup_steps=1), log=lambda *_: None)
    assert longer["final_loss"] < short["final_loss"]


def test_command_line_rebuild_writes_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "ckpt"
    main(["--out", str(out), "--seed", "0", "--steps", "2", "--batch-size", "4", "--eval-problems", "4"])
    printed = capsys.readouterr().out
    assert "step" in printed and "saved to" in printed
    model, tok = load_policy(out)
    info = json.loads((out / "bootstrap_info.json").read_text())
    assert info["config"]["steps"] == 2 and "probe_avg_t1_accuracy" in info
    assert model.config.vocab_size == len(tok)


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped checkpoint")
def test_shipped_checkpoint_is_small_loadable_and_uncertain():
    size = sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file())
    assert size < 5_000_000
    model, tok = load_policy(SHIPPED)
    info = json.loads((SHIPPED / "bootstrap_info.json").read_text())
    # the warm start is deliberately uncertain: it solves many prompts only sometimes
    assert 0.1 < info["probe_avg_t1_accuracy"] < 0.8
    assert info["probe_intermediate_share"] > 0.3
    from insight.policy.generation import greedy_answers

    # pinned greedy answers of the shipped weights (all correct; it still fails "1+1=")
    prompts = ["12+34=", "50-7=", "99+1=", "45+45=", "3-80="]
    assert greedy_answers(model, tok, prompts) == ["46", "43", "100", "90", "-77"]
    assert info["config"]["steps"] == 1500 and info["config"]["seed"] == 0
