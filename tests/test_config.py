"""The config schema: every shipped config parses; mistakes stop the run and name the field."""

from pathlib import Path

import pytest

from insight.config import REPO_ROOT, ConfigError, RunConfig, config_from_dict, load_config

CONFIGS = sorted((REPO_ROOT / "configs").glob("**/*.yaml"))


def test_the_repository_ships_configs():
    assert any(p.name == "tiny.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_file_in_the_repo_parses(path):
    assert isinstance(load_config(path), RunConfig)


def test_an_unknown_key_is_rejected_and_named():
    with pytest.raises(ConfigError, match=r"rollout\.temprature"):
        config_from_dict({"rollout": {"temprature": 0.7}})


def test_a_bad_value_names_its_field():
    with pytest.raises(ConfigError, match=r"rollout\.k"):
        config_from_dict({"rollout": {"k": 0}})


def test_selector_variants_are_keyed_on_type():
    cfg = config_from_dict({"selector": {"type": "uniform"}})
    assert cfg.selector.type == "uniform"
    with pytest.raises(ConfigError, match="selector"):
        config_from_dict({"selector": {"type": "no-such-selector"}})


def test_overrides_switching_the_selector_drop_the_old_variants_fields(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("selector:\n  type: insight\n  gamma: 2.0\nrollout:\n  k: 8\n")
    cfg = load_config(path, {"selector.type": "mopps", "rollout.k": 4})
    assert cfg.selector.type == "mopps" and cfg.rollout.k == 4


def test_missing_and_malformed_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout: [k: 4\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_identity_hash_ignores_rounds_and_tracking_but_not_the_method():
    base = config_from_dict({})
    assert base.identity_hash() == config_from_dict({"rounds": 999}).identity_hash()
    assert base.identity_hash() == config_from_dict(
        {"tracking": {"tracking_uri": "http://x"}}).identity_hash()
    assert base.identity_hash() != config_from_dict({"posterior": {"lam": 0.9}}).identity_hash()


def test_relative_policy_paths_resolve_against_the_repository():
    cfg = config_from_dict({"policy": {"path": "checkpoints/tiny-arith"}})
    assert cfg.resolved_policy_path() == REPO_ROOT / "checkpoints" / "tiny-arith"
    cfg = config_from_dict({"policy": {"path": "/abs/model"}})
    assert cfg.resolved_policy_path() == Path("/abs/model")


def test_eval_seed_defaults_to_the_run_seed_and_a_shared_one_is_the_same_for_every_run():
    from insight.stages import _eval_seed
    a, b = config_from_dict({"seed": 0}), config_from_dict({"seed": 1})
    assert a.eval.seed is None
    assert _eval_seed(a) != _eval_seed(b)  # today's behaviour: each run its own draws
    sa = config_from_dict({"seed": 0, "eval": {"seed": 7}})
    sb = config_from_dict({"seed": 1, "eval": {"seed": 7}})
    assert _eval_seed(sa) == _eval_seed(sb) == _eval_seed(config_from_dict({"seed": 7}))
    assert a.identity_hash() != sa.identity_hash()  # a resume cannot change the draws
