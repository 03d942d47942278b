"""The run configuration: one pydantic schema, loaded from YAML, validated before training.

Why pydantic with `extra="forbid"` everywhere: a typo in a YAML key (`temprature: 0.7`)
must stop the run before it burns compute, with a message naming the field. Variants
(data sources, selectors) are unions keyed on `type`, as in prime-rl.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from insight.selection.registry import SelectorConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
# A wheel (`pip install .`, the Docker images) has no checkout around the package; it
# carries configs/ and checkpoints/tiny-arith inside, as insight/shipped/ (see setup.py),
# in the same layout. Relative paths (the default config, policy.path) resolve against
# that copy when it exists, else against the checkout.
SHIPPED_ROOT = Path(__file__).resolve().parent / "shipped"
ASSET_ROOT = SHIPPED_ROOT if SHIPPED_ROOT.is_dir() else REPO_ROOT
DEFAULT_CONFIG = ASSET_ROOT / "configs" / "tiny.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VLLMOptions(_Strict):
    """How the vLLM engine is built (read only when `policy.engine` is `vllm`)."""

    gpu_memory_utilization: float = Field(0.5, gt=0, le=0.95, description=(
        "Share of the GPU's memory vLLM may take for weights and KV cache. The trainer "
        "shares the GPU, so leave it room: 0.5 suits a colocated 0.5B-1.5B policy."))
    max_model_len: int | None = Field(None, ge=16, description=(
        "Longest prompt + completion vLLM plans its KV cache for; None takes the "
        "model's context length."))
    enable_sleep_mode: bool = Field(True, description=(
        "Put vLLM to sleep (weights and KV cache freed) while the policy is updated on "
        "the same GPU, and wake it with the new weights; off keeps vLLM's memory "
        "reserved during training."))
    weight_sync_timeout_s: float = Field(600.0, gt=0, description=(
        "Seconds vLLM may take to load a round's weights in place before the stage "
        "fails (the round is then not committed)."))


class PolicyConfig(_Strict):
    path: str = Field("checkpoints/tiny-arith", description=(
        "Local directory of a Hugging Face causal LM and its tokenizer (save_pretrained "
        "layout). Relative paths resolve against the repository root (in an installed "
        "package: its shipped copy of checkpoints/). Never downloaded."))
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description=(
        "Where generation and the update run; auto picks CUDA when present."))
    engine: Literal["hf", "vllm"] = Field("hf", description=(
        "Rollout engine: hf samples with the transformers model (CPU or GPU); vllm "
        "with one long-lived vLLM engine per process that loads each round's weights "
        "in place (GPU extra, see docs/gpu.md)."))
    threads: int | None = Field(None, ge=1, description=(
        "torch CPU threads; None keeps torch's default."))
    chat_template: bool = Field(False, description=(
        "Render each prompt through the tokenizer's chat template (as a user turn, after "
        "data.system_prompt, with the generation prompt appended): what an Instruct or "
        "chat model expects. False gives the model the raw prompt text."))
    vllm: VLLMOptions = Field(default_factory=VLLMOptions, description=(
        "vLLM engine options (policy.engine: vllm)."))


class _PromptFields(_Strict):
    """What every data source may add around a prompt (rendered by insight.policy.prompts)."""

    system_prompt: str | None = Field(None, min_length=1, description=(
        "System message before each prompt (with policy.chat_template; without it, a "
        "paragraph before the prompt)."))
    instruction: str | None = Field(None, min_length=1, description=(
        "Text appended to every prompt, after a blank line, e.g. 'Put the final answer "
        "in \\boxed{}.'"))
    group_field: Literal["difficulty", "source"] | None = Field(None, description=(
        "The prompts column that groups prompts for posterior.prior "
        "grouped-empirical-bayes: difficulty (generated arithmetic: the digit count; local "
        "data: the column data.difficulty_field names, e.g. MATH's level) or source."))


class ArithmeticData(_PromptFields):
    type: Literal["arithmetic"] = "arithmetic"
    n_train: int = Field(512, ge=1, description="Generated training prompts (the selection pool).")
    n_eval: int = Field(128, ge=1, description="Generated held-out prompts, disjoint from training.")
    min_digits: int = Field(1, ge=1, description="Fewest digits of an operand (easiest level).")
    max_digits: int = Field(3, ge=1, description="Most digits of an operand (hardest level).")
    ops: tuple[str, ...] = Field(("+", "-"), description="Operators to draw from: + - *.")
    seed: int = Field(1234, description="Seed of the generator (independent of the run seed).")

    @model_validator(mode="after")
    def _digits_ordered(self):
        if self.min_digits > self.max_digits:
            raise ValueError(f"min_digits ({self.min_digits}) > max_digits ({self.max_digits})")
        return self


class CountdownData(_PromptFields):
    type: Literal["countdown"] = "countdown"
    n_train: int = Field(512, ge=1, description="Generated training prompts.")
    n_eval: int = Field(128, ge=1, description="Generated held-out prompts.")
    n_numbers: int = Field(3, ge=2, description="Numbers given per instance.")
    max_number: int = Field(9, ge=2, description="Largest number drawn.")
    seed: int = Field(1234, description="Seed of the generator.")


class LocalData(_PromptFields):
    type: Literal["local"] = "local"
    train_path: str = Field(description=(
        "Training prompts: .jsonl, .json, .csv, .parquet, or a directory written by "
        "datasets' save_to_disk (one split: point at its subdirectory)."))
    eval_path: str = Field(description="Held-out prompts, same formats.")
    id_field: str | None = Field("prompt_id", description=(
        "Column holding a unique prompt id; null gives each row a stable id from its "
        "prompt and answer (exact repeats are dropped)."))
    prompt_field: str = Field("prompt", description=(
        "Column holding the prompt: text, or a single user turn of chat messages "
        "(DAPO-Math). Dotted paths reach nested columns."))
    answer_field: str = Field("answer", description=(
        "Column holding the reference answer; dotted paths reach nested columns "
        "(DAPO-Math: reward_model.ground_truth)."))
    answer_format: Literal["plain", "gsm8k", "boxed"] = Field("plain", description=(
        "How the answer column writes the answer: plain (as is), gsm8k (after the last "
        "'####'), boxed (the last \\boxed{} of a solution, as in MATH)."))
    difficulty_field: str | None = Field("difficulty", description=(
        "Column with an integer level or 'Level N' (MATH); absent values are -1."))
    verifier: Literal["arithmetic", "countdown", "math"] = Field(
        "math", description="Verifier applied to every row.")


DataConfig = Annotated[Union[ArithmeticData, CountdownData, LocalData],
                       Field(discriminator="type")]


class RolloutConfig(_Strict):
    k: int = Field(8, ge=1, description="Completions sampled per selected prompt (group size).")
    batch_size: int = Field(16, ge=1, description="Prompts selected per round (B).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(8, ge=1, description="Cap on generated tokens per completion.")
    max_prompt_tokens: int | None = Field(None, ge=1, description=(
        "Longest rendered prompt, in tokens; with max_new_tokens it must fit the model's "
        "context (max_position_embeddings). None: whatever the context leaves after "
        "max_new_tokens."))
    on_long_prompt: Literal["error", "skip"] = Field("error", description=(
        "A prompt over max_prompt_tokens: refuse the run naming it (error), or leave it "
        "out of the run (skip, with a log line saying how many)."))
    success_threshold: float = Field(1.0, description=(
        "A rollout counts as a success when its reward is at or above this."))
    max_tokens_per_generation_batch: int | None = Field(None, ge=1, description=(
        "hf engine: decode as many consecutive sequences at once as keep sequences x "
        "(longest prompt + max_new_tokens) within this many tokens (rollouts and "
        "evaluation). None: fixed batches of 256 (rollout) / 512 (evaluation) sequences. "
        "Rollout draws are seeded per prompt and do not depend on it; evaluation's "
        "sampled draws do, so setting it changes the sampled held-out accuracy."))


class PosteriorConfig(_Strict):
    lam: float = Field(1.0, gt=0, le=1, description=(
        "Forgetting factor: 1 keeps all evidence, <1 decays it toward the prior."))
    a0: float = Field(1.0, gt=0, description="Prior alpha.")
    b0: float = Field(1.0, gt=0, description="Prior beta.")
    decay: Literal["observed", "all"] = Field("observed", description=(
        "Decay only the prompts observed this round (MoPPS) or every prompt."))
    prior: Literal["fixed", "empirical-bayes", "grouped-empirical-bayes", "feature-knn"] = Field(
        "fixed", description=(
            "fixed: Beta(a0, b0) for unseen prompts; empirical-bayes (extension): refit the "
            "prior of unseen prompts to the observed population each round; "
            "grouped-empirical-bayes (extension): one prior per group of data.group_field, "
            "shrunk toward the population's (insight/selection/group_prior.py); feature-knn "
            "(extension): each prompt's prior from its nearest observed prompts under the "
            "current policy's mean-pooled hidden states (insight/selection/feature_prior.py)."))
    knn_neighbours: int = Field(16, ge=1, description=(
        "feature-knn: observed prompts whose success rates make a prompt's prior."))
    feature_strength: float = Field(4.0, gt=0, description=(
        "feature-knn: pseudo-rollouts of the feature prior (small, so a prompt's own "
        "outcomes outweigh its neighbours' after one group)."))
    group_shrinkage: float = Field(20.0, ge=0, description=(
        "grouped-empirical-bayes: weight of the population prior in each group's fit, in "
        "prompts (a group with far more observed prompts follows its own data)."))
    half_life: float | None = Field(None, gt=0, description=(
        "Time-aware forgetting (extension): the selectors see each outcome weighted "
        "0.5 ** (rounds since it was observed / half_life), every prompt decaying toward "
        "its prior; None keeps all evidence. Needs lam = 1 (lam decays per observation)."))

    @model_validator(mode="after")
    def _one_forgetting(self):
        if self.half_life is not None and self.lam != 1.0:
            raise ValueError("posterior.half_life and posterior.lam < 1 both forget; "
                             "set lam: 1 to use half_life")
        return self


class LoraOptions(_Strict):
    r: int = Field(16, ge=1, description="LoRA rank (rows of A, columns of B).")
    alpha: float = Field(32.0, gt=0, description="LoRA scale numerator: the update is alpha/r * B A.")
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj"), min_length=1, description=(
            "Names of the linear modules that get an adapter (peft's target_modules)."))


class TrainConfig(_Strict):
    lr: float = Field(5e-4, gt=0, description="Adam learning rate.")
    clip_eps: float = Field(0.2, gt=0, description="PPO clip range (low side, and high unless set).")
    clip_eps_high: float | None = Field(None, gt=0, description="Upper clip (DAPO clip-higher).")
    kl_coef: float = Field(0.0, ge=0, description="Weight of the k3 KL to the initial policy.")
    epochs: int = Field(1, ge=1, description="Passes over the round's rollouts.")
    micro_batch_size: int = Field(64, ge=1, description="Sequences per forward/backward.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    normalize_std: bool = Field(True, description="Divide group advantages by the group std.")
    keep_checkpoints: int = Field(2, ge=1, description=(
        "Round checkpoints kept on disk (older ones are pruned after each commit; the "
        "newest saved optimizer state is kept too, since a resume needs it)."))
    save_state_every: int = Field(1, ge=1, description=(
        "Write the full optimizer state every N rounds (and at the planned last round); "
        "the policy weights are written every round. 1 keeps resume exact; larger saves "
        "disk and time on big models, and a resume after a crash between two saves "
        "continues from the last weights with the last saved optimizer state."))
    precision: Literal["auto", "fp32", "bf16-mixed", "bf16"] = Field("auto", description=(
        "Training precision. fp32: weights, Adam state and compute in float32. "
        "bf16-mixed: float32 master weights and Adam state (checkpoints keep them), "
        "forward and backward under bf16 autocast. bf16: everything in bfloat16 (half "
        "the memory, but small updates round away). auto: bf16-mixed on CUDA, fp32 on CPU."))
    gradient_checkpointing: bool = Field(False, description=(
        "Recompute decoder activations in the backward pass (less memory, about one "
        "more forward pass of compute)."))
    max_tokens_per_micro_batch: int | None = Field(None, ge=1, description=(
        "Size micro-batches by padded tokens (sequences x longest prompt+completion) "
        "instead of micro_batch_size; None keeps micro_batch_size."))
    lora: LoraOptions | None = Field(None, description=(
        "Train a LoRA adapter (peft, the `lora` extra) instead of every weight: the "
        "optimizer holds only the adapter; each checkpoint holds the merged weights "
        "(a plain HF model for rollout, evaluation and vLLM) and the adapter under "
        "adapter/. None: full fine-tuning."))


class EvalConfig(_Strict):
    every: int = Field(5, ge=1, description="Held-out evaluation every N rounds (and the last).")
    n_samples: int = Field(4, ge=1, description="Samples per held-out prompt (avg@n accuracy).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the evaluation.")
    greedy: bool = Field(True, description="Also report greedy accuracy.")
    seed: int | None = Field(None, description=(
        "Seed of the sampled evaluation's draws. None: derived from the run seed (each "
        "run draws its own samples, the same ones at every evaluation). A number: every "
        "run with this eval set and seed draws the same samples, so seeds and selectors "
        "differ by their policies, not by evaluation noise (benchmarks set it)."))


class TrackingConfig(_Strict):
    enabled: bool = Field(True, description="Log to MLflow (the store is the record either way).")
    tracking_uri: str | None = Field(None, description=(
        "MLflow tracking URI; None keeps a SQLite store inside the run directory."))
    experiment: str = Field("insight", description="MLflow experiment name.")


class RecordConfig(_Strict):
    """How much of each round the record keeps (docs/storage.md, "The compact record").
    The defaults keep everything, as every run before this option did; the compact
    settings keep "why was X (not) picked in round R" answerable at a fraction of the
    size on large pools, the audit and `insight replay` recomputing the rest."""

    candidates: Literal["all", "selected"] = Field("all", description=(
        "all: a `selections` row for every scored candidate. selected: only the selected "
        "prompts (plus `candidates_margin` runners-up per generation batch); the audit "
        "recomputes every other candidate's row from the reconstructed posterior and the "
        "round's seed."))
    candidates_margin: int = Field(0, ge=0, description=(
        "With candidates=selected: also keep the next N candidates below the cut, so SQL "
        "on the record sees how close the runners-up came."))
    posterior_snapshot_every: int = Field(1, ge=1, description=(
        "Every prompt's posterior is stored at round 0 and every N rounds; the rounds in "
        "between store only the prompts whose (alpha, beta) the round changed. 1 stores "
        "a full snapshot every round."))

    def is_default(self) -> bool:
        return self == RecordConfig()


class OrchestrationConfig(_Strict):
    """Where the stages run. It changes where work happens, never what is drawn (a
    sharded run equals the single-process run row for row), so it is not part of the
    run's identity: a run may be resumed on Ray that began locally, and back."""

    task_runner: Literal["local", "ray"] = Field("local", description=(
        "local: every stage in the flow process (Prefect's default runner). ray: the "
        "rollout shards run as Prefect tasks on Ray workers through prefect-ray's "
        "RayTaskRunner (the `ray` extra); the other stages stay in the flow process, "
        "the only writer of the run's store."))
    ray_address: str | None = Field(None, description=(
        "Address of a running Ray cluster (e.g. ray://head:10001 or auto); None starts "
        "a local Ray for the flow run. Read only with task_runner: ray."))
    rollout_shards: int = Field(1, ge=1, description=(
        "Split each generation batch's prompts into this many rollout tasks, each "
        "returning its rows to the flow process. Draws are seeded per prompt, so the "
        "record does not depend on it. 1 with task_runner: local is today's single "
        "in-process rollout."))


NOT_IDENTITY = {"rounds", "tracking", "orchestration"}  # may change between invocations


class RunConfig(_Strict):
    """Everything that defines a training run. Hash-stable: resume compares hashes."""

    name: str = Field("tiny", description="Human-readable run name prefix.")
    seed: int = Field(0, description="Run seed; selection and generation seeds derive from (seed, round).")
    rounds: int = Field(60, ge=1, description="Training rounds to reach.")
    policy: PolicyConfig = PolicyConfig()
    data: DataConfig = ArithmeticData()
    rollout: RolloutConfig = RolloutConfig()
    posterior: PosteriorConfig = PosteriorConfig()
    selector: SelectorConfig = Field(default_factory=lambda: _default_selector(),
                                     description="Which prompts to roll out next.")
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    record: RecordConfig = Field(default_factory=RecordConfig, description=(
        "What the record keeps of each round (all of it by default)."))
    orchestration: OrchestrationConfig = Field(default_factory=OrchestrationConfig,
                                               description=(
        "Where the stages run (local process or Ray workers); not part of the identity."))

    @model_validator(mode="after")
    def _grouped_prior_has_groups(self):
        if self.posterior.prior == "grouped-empirical-bayes" and self.data.group_field is None:
            raise ValueError("posterior.prior grouped-empirical-bayes needs data.group_field "
                             "(difficulty or source)")
        return self

    def resolved_policy_path(self) -> Path:
        p = Path(self.policy.path).expanduser()
        return p if p.is_absolute() else ASSET_ROOT / p

    def identity_hash(self) -> str:
        """Hash of what must not change under a resume (everything but `rounds`,
        `tracking` and `orchestration`, which may legitimately differ between
        invocations)."""
        d = self.model_dump(mode="json", exclude=NOT_IDENTITY)
        if self.record.is_default():
            # runs created before the record section existed keep their identity
            d.pop("record")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _default_selector():
    from insight.selection.configs import InsightConfig
    return InsightConfig()


class ConfigError(ValueError):
    """A config file that is missing, unparsable, or fails validation."""


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load YAML, apply dotted overrides ({"rollout.k": 4, "selector.type": "uniform"}),
    and validate. Errors name the file and the offending field."""
    path = resolve_config_path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return config_from_dict(raw, source=str(path))


def resolve_config_path(path: str | Path | None) -> Path:
    """The config file to read: the path as given when it exists; else, for a relative
    path, the shipped copy (`--config configs/gsm8k.yaml` works from any directory of an
    installed package, e.g. inside the Docker images); None is the embedded default."""
    if path is None:
        return DEFAULT_CONFIG
    path = Path(path)
    shipped = ASSET_ROOT / path
    if not path.is_file() and not path.is_absolute() and shipped.is_file():
        return shipped
    return path


def config_from_dict(raw: dict, source: str = "<dict>") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        lines = [f"{source}: invalid config"]
        for e in err.errors():
            loc = ".".join(str(x) for x in e["loc"])
            lines.append(f"  {loc}: {e['msg']}")
        raise ConfigError("\n".join(lines)) from None


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        nxt = d.setdefault(key, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted}: {key} is not a section")
        d = nxt
    if keys[-1] == "type" and isinstance(d.get("type"), str) and d["type"] != value:
        # Switching a union variant: the old variant's fields do not apply to the new one.
        d.clear()
    d[keys[-1]] = value
