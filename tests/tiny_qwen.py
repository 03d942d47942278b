"""A tiny random-weight Qwen2 policy with a locally trained BPE tokenizer and a chat
template: the shape of a real Instruct checkpoint (byte-level BPE, ChatML turns, bf16
weights), built in a second on CPU with nothing downloaded."""

from __future__ import annotations

from pathlib import Path

# Qwen2.5's ChatML layout, without its tool-calling branches.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
    "clips in May. How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
    "babysitting. How much did she earn? The answer is 10.",
    "Put the final answer in \\boxed{}. You are a careful math tutor. system user assistant",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 20 42 48 72 100 + - * / = ( ) . , ? !",
]


def build_bpe_tokenizer(vocab_size: int = 400):
    """Byte-level BPE trained on a few sentences, ChatML specials, Qwen's pad/eos."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                 pad_token="<|endoftext|>", padding_side="left")
    hf.chat_template = CHATML_TEMPLATE
    return hf


def build_tiny_qwen(path: Path, *, seed: int = 0, max_position_embeddings: int = 256) -> Path:
    """Save a random-weight Qwen2ForCausalLM (stored in bf16) and its tokenizer to `path`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = build_bpe_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)
