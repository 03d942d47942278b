"""What the policy is given for a problem: the prompt rendered once, for every stage.

A run renders each prompt when it is created (`render_problems`, called by
`record.run.check_config`) and records the text in `prompts.rendered`. Rollout, the
GRPO update and evaluation all read that recorded text (`Problem.model_input`) and
tokenize it with the same call (`tokenizer(text)`, special tokens added as the tokenizer
defines them), so the update scores exactly the prompt tokens generation saw, and an
audit shows exactly what the model saw.

Rendering (`PromptFormat`): with `chat_template`, the tokenizer's chat template over
an optional system turn and a user turn holding the prompt (and the instruction after
a blank line), with the generation prompt appended. A template that writes the BOS
token itself would get a second one when the text is tokenized (Llama 3 does this), so
the template's leading BOS is dropped when the tokenizer adds one anyway. Without a
chat template, the system prompt and the instruction are paragraphs around the prompt.

Length: every rendered prompt must fit `rollout.max_prompt_tokens` (by default the
model's context length less `rollout.max_new_tokens`); a longer one is refused, naming
its id, or left out when `rollout.on_long_prompt` is `skip`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from insight.problems.datasets import Problem

log = logging.getLogger("insight.prompts")


@dataclass(frozen=True)
class PromptFormat:
    chat_template: bool = False
    system_prompt: str | None = None
    instruction: str | None = None

    @property
    def is_identity(self) -> bool:
        """True when the model is given the raw prompt (the embedded default)."""
        return not (self.chat_template or self.system_prompt or self.instruction)


def render(tokenizer, prompt: str, fmt: PromptFormat) -> str:
    """The text the model is given for `prompt` under `fmt`."""
    user = prompt if not fmt.instruction else f"{prompt}\n\n{fmt.instruction}"
    if not fmt.chat_template:
        return user if not fmt.system_prompt else f"{fmt.system_prompt}\n\n{user}"
    messages = [{"role": "user", "content": user}]
    if fmt.system_prompt:
        messages.insert(0, {"role": "system", "content": fmt.system_prompt})
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and _adds_bos(tokenizer):
        text = text[len(bos):]
    return text


def _adds_bos(tokenizer) -> bool:
    """Whether tokenizing text puts the BOS token in front by itself."""
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id and tokenizer.bos_token_id is not None


def prompt_token_counts(tokenizer, texts: Sequence[str]) -> list[int]:
    """Tokens of each text as generation and the update encode it."""
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]


def context_length(model_dir: str | Path) -> int | None:
    """The model's context length (`max_position_embeddings` of its config.json), if given."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    value = config.get("max_position_embeddings")
    if value is None and isinstance(config.get("text_config"), dict):
        value = config["text_config"].get("max_position_embeddings")
    return int(value) if value else None


def prompt_limit(model_dir: str | Path, max_prompt_tokens: int | None,
                 max_new_tokens: int) -> int | None:
    """Most tokens a rendered prompt may have; ValueError when the configured limit and
    the completions cannot fit the model's context together."""
    context = context_length(model_dir)
    if context is None:
        return max_prompt_tokens
    if max_prompt_tokens is None:
        if max_new_tokens >= context:
            raise ValueError(f"rollout.max_new_tokens ({max_new_tokens}) leaves no room for a "
                             f"prompt in the model's context of {context} tokens "
                             f"(max_position_embeddings of {model_dir})")
        return context - max_new_tokens
    if max_prompt_tokens + max_new_tokens > context:
        raise ValueError(f"rollout.max_prompt_tokens ({max_prompt_tokens}) + "
                         f"rollout.max_new_tokens ({max_new_tokens}) exceed the model's "
                         f"context of {context} tokens (max_position_embeddings of {model_dir})")
    return max_prompt_tokens


def render_problems(tokenizer, problems: Sequence[Problem], fmt: PromptFormat, *,
                    limit: int | None, on_long: str = "error",
                    split: str = "train") -> list[Problem]:
    """`problems` with `rendered` set (left None when rendering changes nothing), checked
    against `limit` tokens: a longer prompt raises ValueError naming it, or with
    `on_long="skip"` is left out (logged)."""
    if fmt.chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError("policy.chat_template is true but the policy's tokenizer has no "
                         "chat template (tokenizer_config.json / chat_template.jinja)")
    texts = [render(tokenizer, p.prompt, fmt) for p in problems]
    counts = prompt_token_counts(tokenizer, texts) if limit is not None else [0] * len(texts)
    kept, long = [], []
    for p, text, n in zip(problems, texts, counts):
        if limit is not None and n > limit:
            long.append((p.prompt_id, n))
            continue
        kept.append(p if text == p.prompt else dataclasses.replace(p, rendered=text))
    if long and on_long != "skip":
        named = ", ".join(f"{pid} ({n} tokens)" for pid, n in long[:3])
        more = f" and {len(long) - 3} more" if len(long) > 3 else ""
        raise ValueError(f"{len(long)} {split} prompt(s) longer than the {limit}-token limit "
                         f"(rollout.max_prompt_tokens): {named}{more}; raise the limit, or "
                         "set rollout.on_long_prompt: skip to leave such prompts out")
    if long:
        log.warning("left out %d %s prompt(s) longer than %d tokens (first: %s)", len(long),
                    split, limit, long[0][0])
    return kept
