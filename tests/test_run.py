"""A run's identity across versions: what makes a resume the same experiment."""

from __future__ import annotations

import json

import pytest

from insight.config import config_from_dict
from insight.record.run import load_run, open_or_create_run
from insight.record.store import RunStore
from tests.test_e2e import tiny_config


def _rewrite_stored_config(run_dir, edit) -> None:
    with RunStore(run_dir) as db:
        cfg = json.loads(db.get_run()["config_json"])
        edit(cfg)
        db.execute("UPDATE runs SET config_json = ?, config_hash = 'from-an-older-version'",
                   [json.dumps(cfg)])


def test_a_run_recorded_before_new_config_fields_existed_resumes(tiny_policy_dir, tmp_path):
    run = open_or_create_run(tmp_path / "run", config_from_dict(tiny_config(tiny_policy_dir)))

    def drop_new_fields(cfg):  # as an older version stored it: no such keys at all
        del cfg["policy"]["vllm"], cfg["train"]["precision"], cfg["train"]["save_state_every"]

    _rewrite_stored_config(run.run_dir, drop_new_fields)
    stored = load_run(run.run_dir)
    assert open_or_create_run(run.run_dir, stored.config).run_id == run.run_id


def test_a_real_change_is_still_refused(tiny_policy_dir, tmp_path):
    run = open_or_create_run(tmp_path / "run", config_from_dict(tiny_config(tiny_policy_dir)))
    _rewrite_stored_config(run.run_dir, lambda cfg: cfg["rollout"].update(k=2))
    with pytest.raises(ValueError, match="rollout.k"):
        open_or_create_run(run.run_dir, config_from_dict(tiny_config(tiny_policy_dir)))
