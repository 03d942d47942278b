"""The selector registry: THE place a selector is declared.

One ``SelectorSpec`` per selector holds everything the rest of the code asks about it:
its config class, its score function, the parameters that function takes from the config,
whether it draws random numbers, whether its score needs I_k, whether it reads the shared
posterior, whether its score is a random key (rank order = draw order), whether the
pipeline runs DAPO's filter-and-refill loop for it, and the object that draws its batches.
Everything else (the run config's union of selector configs, ``make_selector``, the
scoring API, the pipeline's rollout stage, the audit, the simulator, ``insight score``)
asks the registry instead of naming selectors. Adding a selector: one score function in
scores.py (and a config class in configs.py), one entry below, one test.

=====================  =============================================================
name                   rule (score, higher is better)
=====================  =============================================================
``insight``            w(m) * I_k(a, b) at the posterior mean m (the method); with
                       ``objective`` mixed / mi+mixed also P(0 < s < k) (extension)
``insight-sampled``    w(p) * I_k(a, b) with a Thompson draw p ~ Beta(a, b) (ablation)
``mi``                 I_k(a, b) alone
``difficulty``         -(m - tau)^2: closeness of the mean to a target
``mopps``              -(p - tau)^2 with p ~ Beta(a, b): MoPPS Top-B
``uniform``            uniform without replacement, epoch-style (state: the epoch)
``dynamic-sampling``   DAPO: uniform epoch-style draws of generation batches; the
                       pipeline filters groups (keep 0 < s < k), refills with further
                       draws (excluding those already drawn this round) up to
                       ``max_num_gen_batches``, truncates to B and counts every extra
                       rollout (insight/selection/dapo.py)
=====================  =============================================================
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Union

import numpy as np
from pydantic import BaseModel, Field, TypeAdapter

from insight.selection import configs, scores
from insight.selection.selectors import (DynamicSamplingSelector, ScoringSelector, Selector,
                                         UniformSelector)


@dataclass(frozen=True)
class SelectorSpec:
    """Everything the code needs to know about one selector (see the module docstring)."""

    name: str
    config: type[BaseModel]                 # its pydantic config (``type`` literal = name)
    score: Callable[..., scores.Scored]     # fn(Candidates, **params) -> Scored
    selector_class: type                    # the Selector class that draws its batches
    params: tuple[str, ...] = ()            # keyword parameters of ``score``, from the config
    stochastic: bool = False                # the score draws random numbers (needs rng)
    uses_mi: bool = False                   # the score needs I_k (computed even without
                                            # diagnostics)
    uses_posterior: bool = True             # the choice reads the shared posterior
    random_key: bool = False                # the score is a random key: rank = draw order
    dapo_refill: bool = False               # the pipeline filters groups and refills (DAPO)
    defaults: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self):
        sig = inspect.signature(self.score).parameters
        object.__setattr__(self, "defaults", {p: sig[p].default for p in self.params
                                              if p in sig})


_WEIGHT_PARAMS = ("weight", "gamma", "tau", "sigma")

_SPECS = (
    SelectorSpec("insight", configs.InsightConfig, scores.score_insight, ScoringSelector,
                 params=_WEIGHT_PARAMS + ("objective", "mixed_weight"), uses_mi=True),
    SelectorSpec("insight-sampled", configs.InsightSampledConfig,
                 scores.score_insight_sampled, ScoringSelector, params=_WEIGHT_PARAMS,
                 stochastic=True, uses_mi=True),
    SelectorSpec("mi", configs.MIConfig, scores.score_mi, ScoringSelector, uses_mi=True),
    SelectorSpec("difficulty", configs.DifficultyConfig, scores.score_difficulty,
                 ScoringSelector, params=("tau",)),
    SelectorSpec("mopps", configs.MoPPSConfig, scores.score_mopps, ScoringSelector,
                 params=("tau",), stochastic=True),
    SelectorSpec("uniform", configs.UniformConfig, scores.score_random_key, UniformSelector,
                 stochastic=True, uses_posterior=False, random_key=True),
    SelectorSpec("dynamic-sampling", configs.DynamicSamplingConfig, scores.score_random_key,
                 DynamicSamplingSelector, stochastic=True, uses_posterior=False,
                 random_key=True, dapo_refill=True),
)

SELECTORS: dict[str, SelectorSpec] = {spec.name: spec for spec in _SPECS}
NAMES: tuple[str, ...] = tuple(SELECTORS)

# The run config's ``selector`` field: a union of the entries' configs keyed on ``type``.
SelectorConfig = Annotated[Union[tuple(spec.config for spec in _SPECS)],
                           Field(discriminator="type")]
_CONFIG_ADAPTER = TypeAdapter(SelectorConfig)


def get(name: str) -> SelectorSpec:
    """The registry entry of ``name``; ValueError listing the known selectors."""
    try:
        return SELECTORS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown selector {name!r}; choose one of {list(NAMES)}") from None


def names_where(**flags: bool) -> tuple[str, ...]:
    """Selectors whose entry has every given flag, e.g. ``names_where(uses_posterior=True)``."""
    return tuple(s.name for s in _SPECS if all(getattr(s, f) == v for f, v in flags.items()))


def parse_selector_config(cfg: Any) -> Any:
    """A selector config from a config object, a dict ({"type": ..., ...}) or a name."""
    if isinstance(cfg, BaseModel):
        return cfg
    if isinstance(cfg, str):
        cfg = {"type": cfg}
    return _CONFIG_ADAPTER.validate_python(cfg)


def make_selector(cfg) -> Selector:
    """The selector for ``cfg`` (a selector config, a dict with ``type``, or a name).
    Selectors hold no RNG: every ``select`` takes the Generator the pipeline derives from
    (run seed, round)."""
    cfg = parse_selector_config(cfg)
    spec = get(cfg.type)
    return spec.selector_class(cfg, spec)


def selector_params(selector: str) -> frozenset[str]:
    """Names of the keyword parameters ``score`` accepts for ``selector``."""
    return frozenset(get(selector).params)


def score_components(selector: str, alpha, beta, k, *, rng=None, diagnostics: bool = True,
                     prompt_ids=None, backend: str = "auto", **params) -> dict[str, np.ndarray]:
    """The score of ``selector`` (higher is better) and its parts (see
    ``scores.components``); ``rng`` (a Generator or an int seed) is required by the
    stochastic selectors."""
    return scores.components(get(selector), alpha, beta, k, rng=rng, diagnostics=diagnostics,
                             prompt_ids=prompt_ids, backend=backend, **params)


def score(selector: str, alpha, beta, k, *, rng=None, **params) -> np.ndarray:
    """Acquisition score of ``selector`` for each prompt; higher is better for every selector.

    ``params``: insight / insight-sampled take ``weight`` ("power" | "gaussian"), ``gamma``,
    ``tau``, ``sigma``; difficulty and mopps take ``tau``; the others none (a parameter
    that does not apply raises ValueError).
    """
    return score_components(selector, alpha, beta, k, rng=rng, diagnostics=False,
                            **params)["score"]
