"""Policy models: a tiny character-level causal LM built locally, and loading of any
Hugging Face causal LM from a local directory.

Everything loads from and saves to directories, so pipeline stages pass paths only.

- `build_char_tokenizer(alphabet)`: character-level tokenizer (the `tokenizers` library,
  wrapped as `transformers.PreTrainedTokenizerFast`) with <pad>, <bos>, <eos>, <unk>; a
  prompt is encoded as `<bos>` followed by one token per character.
- `build_tiny_policy(seed, **size)`: a standard `LlamaForCausalLM` (no custom modelling
  code), so the same load / generate / update code serves real HF models.
- `save_policy` / `load_policy`: `save_pretrained` (safetensors) / `from_pretrained` on a local path;
  `load_policy` fails fast naming the path, sets left padding and falls back to EOS as
  the pad token.
"""

from __future__ import annotations

import contextlib
import os
import string
from pathlib import Path

import torch

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0..3 in this order

# Fallback alphabet when insight.problems.datasets is not importable: digits, operators, the
# usual punctuation of arithmetic / Countdown prompts, letters and space.
_FALLBACK_ALPHABET = string.digits + "+-*/=()., " + string.ascii_letters + ":?"

# Default size of the tiny policy: tuned for learning speed on a 2-core CPU
# (about 0.33 M parameters, 1.3 MB in float32). Per-sample cost is compute-bound at this
# size; 2 layers learned 1-2 digit arithmetic faster per CPU-second than 4.
TINY_DEFAULTS = dict(
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=256,
    max_position_embeddings=64,
)


def default_alphabet() -> str:
    """The character set of the generated tasks: insight.problems.datasets.ALPHABET.

    Kept minimal on purpose: every vocabulary entry the task never uses is probability
    mass a sampled completion can waste. Characters outside it encode as <unk>."""
    try:  # the datasets module is owned by another part of the project
        from insight.problems.datasets import ALPHABET  # type: ignore

        return _dedupe("".join(ALPHABET))
    except Exception:  # pragma: no cover - depends on the module being present
        return _FALLBACK_ALPHABET


def _dedupe(chars: str) -> str:
    seen: dict[str, None] = {}
    for c in chars:
        seen.setdefault(c, None)
    return "".join(seen)


def build_char_tokenizer(alphabet: str | None = None):
    """Character-level `PreTrainedTokenizerFast`.

    Ids: <pad>=0, <bos>=1, <eos>=2, <unk>=3, then one id per alphabet character in
    the given order. Encoding adds <bos> in front; decoding concatenates characters
    (no spaces inserted). Padding side is left (for generation).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = _dedupe(alphabet if alphabet is not None else default_alphabet())
    if not alphabet:
        raise ValueError("alphabet must contain at least one character")
    for tok in SPECIAL_TOKENS:
        if tok in alphabet:
            raise ValueError(f"alphabet must not contain special token {tok!r}")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in alphabet:
        vocab[ch] = len(vocab)

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character is its own "word": split on any single character, keep it.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        model_max_length=TINY_DEFAULTS["max_position_embeddings"],
    )
    return hf


def build_tiny_policy(seed: int = 0, *, tokenizer=None, alphabet: str | None = None, **size):
    """Build a freshly initialised tiny Llama-architecture causal LM and its tokenizer.

    `size` overrides `TINY_DEFAULTS` (hidden_size, num_hidden_layers,
    num_attention_heads, intermediate_size, max_position_embeddings, ...; any
    `LlamaConfig` field). Initialisation is deterministic given `seed`.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if tokenizer is None:
        tokenizer = build_char_tokenizer(alphabet)
    cfg = dict(TINY_DEFAULTS)
    cfg.setdefault("tie_word_embeddings", True)
    cfg.setdefault("attention_dropout", 0.0)
    cfg.update(size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **cfg,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model, tokenizer


@contextlib.contextmanager
def _quiet_progress():
    """Hide transformers' per-file progress bars (one per round is noise in logs)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def save_policy(model, tokenizer, path: str | os.PathLike) -> Path:
    """Save model weights/config and tokenizer to `path` (created if needed). Weights are
    always safetensors: that file is what rollout, evaluation and vLLM read, and it loads
    without unpickling anything."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with _quiet_progress():
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
    return path


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto"/None -> cuda if available else cpu; otherwise `torch.device(device)`."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def check_model_dir(path: str | os.PathLike) -> Path:
    """Fail fast with a message naming `path` unless it is a saved HF model directory."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model path does not exist: {str(p)!r}")
    if not p.is_dir():
        raise ValueError(f"model path is not a directory: {str(p)!r}")
    if not (p / "config.json").is_file():
        raise ValueError(f"not a model directory (no config.json): {str(p)!r}")
    weights = list(p.glob("*.safetensors")) + list(p.glob("*.bin")) + list(
        p.glob("*.safetensors.index.json")
    )
    if not weights:
        raise ValueError(f"not a model directory (no weights file): {str(p)!r}")
    return p


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    p = Path(path)
    tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    tok.padding_side = "left"
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer at {str(p)!r} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


def load_policy(path: str | os.PathLike, device: str | torch.device = "cpu", dtype=None):
    """Load (model, tokenizer) from a local directory saved by `save_policy` or any
    local Hugging Face causal LM checkpoint. Never downloads anything.

    Raises FileNotFoundError / ValueError naming the path if it is missing or not a
    model directory. The tokenizer pads on the left; a missing pad token falls back to
    EOS. The model is returned in eval mode on `device` ("cpu", "cuda", "auto").
    """
    from transformers import AutoModelForCausalLM

    p = check_model_dir(path)
    dev = resolve_device(device)
    tok = load_tokenizer(p)
    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    with _quiet_progress():
        model = AutoModelForCausalLM.from_pretrained(str(p), **kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        if model.generation_config.pad_token_id is None:
            model.generation_config.pad_token_id = tok.pad_token_id
    model.to(dev)
    model.eval()
    return model, tok


def eos_ids(model, tokenizer) -> list[int]:
    """All token ids that end a completion (tokenizer EOS plus generation_config's)."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    gc = getattr(model, "generation_config", None)
    extra = getattr(gc, "eos_token_id", None) if gc is not None else None
    if isinstance(extra, int):
        extra = [extra]
    for e in extra or []:
        if e is not None and int(e) not in ids:
            ids.append(int(e))
    if not ids:
        raise ValueError("no EOS token id: cannot tell where a completion ends")
    return ids


def num_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
