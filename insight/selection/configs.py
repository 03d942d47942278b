"""Selector configurations: one strict pydantic model per selector (unknown fields are
errors, every field documented), shared by the run config, the simulator and the CLI.
The discriminated union of them, ``SelectorConfig``, is built by the registry from its
entries (insight/selection/registry.py), so a selector's config is declared once.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _PoolFields(_Strict):
    pool_ratio: float | None = Field(None, ge=1.0, description=(
        "Candidate pool size as a multiple of the batch size B (MoPPS's ts_ratio, 8-16 in "
        "its scripts): ceil(pool_ratio * B) prompts drawn uniformly each round. None scores "
        "the whole dataset."))
    sampling: Literal["topk", "softmax"] = Field("topk", description=(
        "topk: the B highest scores, ties broken by a seeded RNG. softmax: B draws without "
        "replacement from softmax(score / temperature)."))
    temperature: float = Field(1.0, gt=0, description=(
        "Softmax temperature (only with sampling='softmax'); in units of the score."))


class _WeightFields(_Strict):
    weight: Literal["power", "gaussian"] = Field("power", description=(
        "Difficulty weight: power (4 m (1 - m))**gamma or gaussian "
        "exp(-(m - tau)^2 / (2 sigma^2))."))
    gamma: float = Field(1.0, ge=0, description="Exponent of the power weight (0 = mi alone).")
    tau: float = Field(0.5, ge=0, le=1, description="Target success rate of the gaussian weight.")
    sigma: float = Field(0.25, gt=0, description="Width of the gaussian weight.")


class InsightConfig(_PoolFields, _WeightFields):
    """InSight: weighted mutual information w(m) * I_k(a, b) at the posterior mean."""
    type: Literal["insight"] = Field("insight", description="Selector name.")
    objective: Literal["mi", "mixed", "mi+mixed"] = Field("mi", description=(
        "mi: w(m) I_k (the paper). mixed: P(0 < s < k), the Beta-Binomial predictive chance "
        "that the group carries a gradient (exploitation). mi+mixed: w(m) I_k + "
        "mixed_weight * P(0 < s < k): revisits known informative prompts when that pays "
        "(extension beyond the paper)."))
    mixed_weight: float = Field(1.0, ge=0, description=(
        "Weight of P(0 < s < k) in objective mi+mixed (I_k is in nats, at most log(k+1))."))


class InsightSampledConfig(_PoolFields, _WeightFields):
    """InSight ablation: the weight at a Thompson draw p ~ Beta(a, b) instead of the mean."""
    type: Literal["insight-sampled"] = Field("insight-sampled", description="Selector name.")


class MIConfig(_PoolFields):
    """Mutual information alone (evidence only, no difficulty weight)."""
    type: Literal["mi"] = Field("mi", description="Selector name.")


class DifficultyConfig(_PoolFields):
    """Difficulty only: closeness of the posterior mean to tau, score -(m - tau)^2."""
    type: Literal["difficulty"] = Field("difficulty", description="Selector name.")
    tau: float = Field(0.5, ge=0, le=1, description="Target success rate.")


class MoPPSConfig(_PoolFields):
    """MoPPS (Top-B): Thompson draw p ~ Beta(a, b), the B closest to tau."""
    type: Literal["mopps"] = Field("mopps", description="Selector name.")
    tau: float = Field(0.5, ge=0, le=1, description="Target success rate (MoPPS uses 0.5).")


class UniformConfig(_Strict):
    """Uniform without replacement, epoch-style (every prompt once per epoch)."""
    type: Literal["uniform"] = Field("uniform", description="Selector name.")


class DynamicSamplingConfig(_Strict):
    """DAPO dynamic sampling: draw generation batches uniformly (epoch-style), keep groups
    with 0 < s < k, refill until B are kept or max_num_gen_batches, truncate to B."""
    type: Literal["dynamic-sampling"] = Field("dynamic-sampling", description="Selector name.")
    max_num_gen_batches: int = Field(10, ge=1, description=(
        "Generation batches per round at most (verl's algorithm.filter_groups."
        "max_num_gen_batches); the round trains on fewer than B groups if they run out."))
    gen_batch_ratio: float = Field(1.0, ge=1.0, description=(
        "Prompts per generation batch as a multiple of B (verl's gen_batch_size / "
        "train_batch_size)."))

