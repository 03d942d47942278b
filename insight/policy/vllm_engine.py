"""The vLLM rollout engine: one long-lived `vllm.LLM` that loads each round's weights in place.

Why one engine for the whole run: building a `vllm.LLM` costs tens of seconds (CUDA graphs,
KV-cache profiling), a round of a small model only seconds. So the engine is built once
per flow process and, after each policy update, reloads the weights from the round's
checkpoint directory with the workers' `reload_weights` (through `LLM.collective_rpc`,
under a timeout). With sleep mode the engine frees its GPU memory (weights and KV cache,
level 2) while the trainer updates the policy on the same GPU, and wakes into the new
weights.

Written against vLLM 0.32.0 (`PINNED_VLLM`, the release the `gpu` extra installs), read
from its wheel: `LLM(model, *, seed, gpu_memory_utilization, **EngineArgs)` with
`max_model_len` and `enable_sleep_mode` as EngineArgs fields; `LLM.generate(prompts,
sampling_params)`; `LLM.collective_rpc(method, timeout=None, args=(), kwargs=None)`; the
GPU worker's `reload_weights(weights_iterator=None, weights_path=None,
is_checkpoint_format=True)`, which with a `weights_path` re-points the model config at
that directory and loads its safetensors; `LLM.sleep(level=1, mode="abort")`;
`LLM.wake_up(tags=None)` with tags "weights" and "kv_cache"; `LLM.reset_prefix_cache()`.
tests/test_vllm_engine.py holds a stand-in with exactly these signatures.

Determinism: vLLM seeds each request's sampler (`SamplingParams.seed`), but its kernels'
numerics depend on the batch, the scheduling and CUDA graphs, so the same seed need not
give the same tokens twice. A round redone after a crash may therefore draw other
rollouts than the interrupted attempt (the HF engine on CPU draws the same ones).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

from insight.policy.generation import Rollout

PINNED_VLLM = "0.32.0"
SLEEP_LEVEL = 2  # free weights and KV cache: the weights are reloaded on wake-up anyway

log = logging.getLogger("insight.vllm")


class VLLMUnavailable(ImportError):
    """vLLM is not installed, or is installed but cannot start here (no GPU, out of
    memory, a model it does not support). An ImportError because either way vLLM is
    not available to this process; never answered by falling back to another engine."""


def import_vllm():
    """The vllm module, or one clear error naming vLLM."""
    try:
        import vllm
    except ImportError as err:
        raise VLLMUnavailable(
            f"policy.engine is 'vllm' but vLLM cannot be imported ({err}): install the GPU "
            f"extra (pip install -e '.[gpu]', vLLM {PINNED_VLLM}) or set policy.engine: hf"
        ) from err
    return vllm


def _eos_token_ids(path: Path, tokenizer) -> list[int]:
    """The ids that end a completion, as the HF engine sees them (tokenizer EOS plus the
    checkpoint's generation_config), so both engines stop on the same tokens."""
    from transformers import GenerationConfig

    from insight.policy.model import eos_ids

    gen = None
    if (path / "generation_config.json").is_file():
        gen = GenerationConfig.from_pretrained(str(path), local_files_only=True)
    return eos_ids(SimpleNamespace(generation_config=gen), tokenizer)


class VLLMEngine:
    """RolloutEngine over one `vllm.LLM`, whose weights follow the policy round by round.

    `load(path)` makes the engine generate with the checkpoint in `path` (an in-place
    reload when it differs from the loaded one); `sleep()` frees the GPU for the update
    when sleep mode is on. Prompts are tokenized here, with the policy's tokenizer, and
    given to vLLM as token ids: vLLM sees exactly the ids the trainer scores.
    """

    def __init__(self, path, *, gpu_memory_utilization: float = 0.5,
                 max_model_len: int | None = None, enable_sleep_mode: bool = True,
                 weight_sync_timeout_s: float = 600.0, seed: int = 0):
        from insight.policy.model import check_model_dir, load_tokenizer

        vllm = import_vllm()
        p = check_model_dir(path).resolve()
        self.tokenizer = load_tokenizer(p)
        self.eos = _eos_token_ids(p, self.tokenizer)
        self.sleep_mode = bool(enable_sleep_mode)
        self.timeout_s = float(weight_sync_timeout_s)
        # No network at run time: a local directory never needs the Hub, and vLLM's
        # worker processes inherit this.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        kwargs = dict(gpu_memory_utilization=gpu_memory_utilization, seed=int(seed),
                      enable_sleep_mode=self.sleep_mode)
        if max_model_len is not None:
            kwargs["max_model_len"] = int(max_model_len)
        try:
            self.llm = vllm.LLM(model=str(p), **kwargs)
        except Exception as err:  # CUDA missing, out of memory, unsupported model...
            raise VLLMUnavailable(f"vLLM could not start on {p}: "
                                  f"{type(err).__name__}: {err}") from err
        self.path = str(p)
        self.asleep = False

    def load(self, path) -> None:
        """Generate with the weights in `path` from now on: wake up if asleep and reload
        in place unless they are loaded already. A failed or timed-out reload leaves the
        engine's weights undefined, so it raises and the caller drops the engine."""
        from insight.policy.model import check_model_dir

        p = str(check_model_dir(path).resolve())
        if p == self.path and not self.asleep:
            return
        if self.asleep:  # weights first: the reload writes into their memory
            self.llm.wake_up(tags=["weights"])
        try:
            self.llm.collective_rpc("reload_weights", timeout=self.timeout_s,
                                    kwargs={"weights_path": p})
        except TimeoutError as err:
            raise TimeoutError(f"vLLM did not load the weights of {p} within "
                               f"{self.timeout_s:g} s (policy.vllm.weight_sync_timeout_s)"
                               ) from err
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        # Cached prefixes hold keys and values of the old weights.
        self.llm.reset_prefix_cache()
        self.path = p
        log.info("vLLM loaded the weights of %s", p)

    def sleep(self) -> None:
        """Free vLLM's GPU memory for the policy update (sleep mode only)."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=SLEEP_LEVEL)
            self.asleep = True

    def generate(self, prompts: Sequence[str], k: int, *, temperature: float = 1.0,
                 top_p: float = 1.0, max_new_tokens: int = 8,
                 seed: int = 0, prompt_seeds: Sequence[int] | None = None) -> list[list[Rollout]]:
        """k completions per prompt; temperature 0 is greedy (vLLM's convention too).
        `prompt_seeds`: one request seed per prompt instead of `seed` for all (vLLM
        seeds each request's sampler; its numerics still depend on the batch)."""
        if self.asleep:
            raise RuntimeError("vLLM is asleep: load the round's weights before generating")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not prompts:
            return []
        vllm = import_vllm()
        seeds = [seed] * len(prompts) if prompt_seeds is None else list(prompt_seeds)
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} prompt seeds for {len(prompts)} prompts")
        params = [vllm.SamplingParams(
            n=k, temperature=float(temperature), top_p=float(top_p),
            max_tokens=int(max_new_tokens), seed=int(s) & 0x7FFF_FFFF,
            stop_token_ids=list(self.eos), detokenize=False) for s in seeds]
        if prompt_seeds is None:
            params = params[0]  # one shared SamplingParams, as vLLM takes it
        token_prompts = [{"prompt_token_ids": self.tokenizer(p)["input_ids"]} for p in prompts]
        outputs = self.llm.generate(token_prompts, params, use_tqdm=False)
        return [[self._rollout(c) for c in out.outputs] for out in outputs]

    def _rollout(self, completion) -> Rollout:
        ids = [int(i) for i in completion.token_ids]
        ended = completion.finish_reason == "stop" and bool(ids) and ids[-1] in self.eos
        text = self.tokenizer.decode(ids[:-1] if ended else ids, skip_special_tokens=True)
        return Rollout(text, ids, truncated=completion.finish_reason == "length",
                       logprob=completion.cumulative_logprob)
