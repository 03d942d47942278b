"""Tiny policy, character tokenizer, save/load from directories."""

import json

import pytest
import torch

from insight.problems.datasets import ALPHABET
from insight.policy.model import (
    BOS,
    EOS,
    PAD,
    UNK,
    build_char_tokenizer,
    build_tiny_policy,
    check_model_dir,
    load_policy,
    load_tokenizer,
    num_parameters,
    resolve_device,
    save_policy,
)

SMALL = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


def test_tokenizer_is_character_level_with_bos_and_round_trips():
    tok = build_char_tokenizer("0123456789+-=")
    assert [tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token] == [PAD, BOS, EOS, UNK]
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    ids = tok("47+385=")["input_ids"]
    assert ids == [1, 8, 11, 14, 7, 12, 9, 16]  # <bos> then one id per character
    assert tok.decode(ids, skip_special_tokens=True) == "47+385="
    assert tok.decode(tok("-12", add_special_tokens=False)["input_ids"] + [2]) == "-12" + EOS
    assert tok("7x")["input_ids"][-1] == tok.unk_token_id  # unknown characters -> <unk>
    assert len(tok) == 4 + 13


def test_default_alphabet_covers_the_datasets_alphabet_and_spaces_survive():
    tok = build_char_tokenizer()
    text = ALPHABET
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    with pytest.raises(ValueError):
        build_char_tokenizer("")


def test_batch_encoding_pads_on_the_left():
    tok = build_char_tokenizer("0123456789+-=")
    enc = tok(["1+2=", "10+20="], padding=True)
    assert enc["input_ids"][0][:2] == [0, 0] and enc["attention_mask"][0][:2] == [0, 0]


def test_tiny_policy_is_deterministic_given_the_seed():
    m1, tok = build_tiny_policy(3, **SMALL)
    m2, _ = build_tiny_policy(3, **SMALL)
    m3, _ = build_tiny_policy(4, **SMALL)
    assert type(m1).__name__ == "LlamaForCausalLM"
    assert m1.config.vocab_size == len(tok)
    assert m1.config.eos_token_id == tok.eos_token_id
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(m1.parameters(), m3.parameters()))
    # the default size stays small enough to ship as a checkpoint (< 5 MB in float32)
    m, _ = build_tiny_policy(0)
    assert num_parameters(m) * 4 < 5e6


def test_save_and_load_round_trip(tmp_path):
    model, tok = build_tiny_policy(0, **SMALL)
    save_policy(model, tok, tmp_path / "ckpt")
    m2, tok2 = load_policy(tmp_path / "ckpt", device="cpu")
    assert not m2.training and tok2.padding_side == "left"
    ids = torch.tensor([tok("12+3=")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, m2(ids).logits)
    assert tok2("12+3=")["input_ids"] == tok("12+3=")["input_ids"]


def test_load_policy_fails_fast_naming_the_path(tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(FileNotFoundError, match="no-such-checkpoint"):
        load_policy(missing)
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty-dir"):
        load_policy(empty)
    (empty / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no weights"):
        check_model_dir(empty)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="file.txt"):
        load_policy(a_file)


def test_tokenizer_without_pad_token_falls_back_to_eos(tmp_path):
    _, tok = build_tiny_policy(0, **SMALL)
    tok.save_pretrained(tmp_path)
    cfg_path = tmp_path / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("pad_token", None)
    cfg["padding_side"] = "right"
    cfg_path.write_text(json.dumps(cfg))
    tok2 = load_tokenizer(tmp_path)
    assert tok2.pad_token == EOS and tok2.padding_side == "left"


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(None).type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")
