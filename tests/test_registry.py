"""The selector registry: every entry is consistent with its config, its score function
and the flags the pipeline, audit and simulator read; a new selector needs only a score
function and an entry."""

from __future__ import annotations

import inspect
import typing

import numpy as np
import pytest
from pydantic import TypeAdapter

from insight.selection import registry, scores
from insight.selection.configs import InsightConfig
from insight.selection.registry import SELECTORS, SelectorConfig, SelectorSpec

ALPHA = np.array([1.0, 2.0, 5.0, 0.5, 30.0])
BETA = np.array([1.0, 6.0, 1.5, 0.5, 10.0])


def keyword_params(fn) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


@pytest.mark.parametrize("name", list(SELECTORS))
def test_entry_matches_its_config_and_score_function(name):
    spec = SELECTORS[name]
    assert spec.name == name
    # the config's discriminator is the registry key, and it is the only value it takes
    assert typing.get_args(spec.config.model_fields["type"].annotation) == (name,)
    assert spec.config().type == name
    # the declared parameters are exactly the score function's keyword parameters ...
    kw = keyword_params(spec.score)
    assert set(kw) == set(spec.params)
    for p in spec.params:
        # ... each a config field with the same default, and each with a value check
        assert p in spec.config.model_fields, f"{name}: {p} is not a config field"
        assert spec.config.model_fields[p].default == kw[p].default == spec.defaults[p]
        assert p in scores.PARAM_CHECKS
    # the selector class builds from the config and reports the name
    assert registry.make_selector(name).name == name
    if spec.dapo_refill:   # the rollout stage reads the refill cap from the config
        assert "max_num_gen_batches" in spec.config.model_fields


@pytest.mark.parametrize("name", list(SELECTORS))
def test_stochastic_flag_says_whether_the_score_draws(name):
    spec = SELECTORS[name]
    rng = np.random.default_rng(3)
    before = rng.bit_generator.state
    registry.score_components(name, ALPHA, BETA, 8, rng=rng)
    assert (rng.bit_generator.state != before) == spec.stochastic
    if spec.stochastic:
        with pytest.raises(ValueError, match="pass rng"):
            registry.score(name, ALPHA, BETA, 8)


@pytest.mark.parametrize("name", list(SELECTORS))
def test_uses_mi_flag_says_whether_the_score_needs_mutual_information(name):
    comp = registry.score_components(name, ALPHA, BETA, 8, rng=0, diagnostics=False)
    assert np.isfinite(comp["mi"]).all() == SELECTORS[name].uses_mi
    assert np.isfinite(comp["score"]).all()


def test_flags_of_the_shipped_selectors():
    # what the audit, the simulator and the rollout stage used to spell out by name
    assert registry.names_where(random_key=True) == ("uniform", "dynamic-sampling")
    assert registry.names_where(uses_posterior=True) == (
        "insight", "insight-sampled", "mi", "difficulty", "mopps")
    assert registry.names_where(dapo_refill=True) == ("dynamic-sampling",)


def test_the_config_union_is_built_from_the_entries():
    members = typing.get_args(typing.get_args(SelectorConfig)[0])
    assert members == tuple(spec.config for spec in SELECTORS.values())
    adapter = TypeAdapter(SelectorConfig)
    for name in SELECTORS:
        assert type(adapter.validate_python({"type": name})) is SELECTORS[name].config


def test_unknown_selector_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown selector 'nope'; choose one of \['insight'"):
        registry.get("nope")


def test_a_new_selector_is_a_function_and_an_entry():
    """An entry built outside the table scores through the same machinery: no dispatch
    code knows the selectors by name."""
    def score_half_mi(c, *, gamma=1.0):
        return scores.Scored(0.5 * gamma * c.mi)

    spec = SelectorSpec("half-mi", InsightConfig, score_half_mi, SELECTORS["mi"].selector_class,
                        params=("gamma",), uses_mi=True)
    comp = scores.components(spec, ALPHA, BETA, 8, diagnostics=False, gamma=2.0)
    np.testing.assert_allclose(comp["score"], registry.score("mi", ALPHA, BETA, 8))
    with pytest.raises(ValueError, match=r"\['tau'\] do not apply to selector 'half-mi'"):
        scores.components(spec, ALPHA, BETA, 8, tau=0.3)
    with pytest.raises(ValueError, match="gamma must be"):
        scores.components(spec, ALPHA, BETA, 8, gamma=-1.0)
