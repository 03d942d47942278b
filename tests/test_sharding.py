"""Rollout shards: a round's prompts split across workers give the record the single
process gives, row for row, because each prompt's draws are seeded by (run seed, round,
prompt id) and never by what shares its batch; the shards return rows and the flow
process stays the only writer of the store.
"""

from __future__ import annotations

import duckdb
import pytest

from insight import sharding, stages
from insight.config import DEFAULT_CONFIG, config_from_dict, load_config
from insight.policy import generation
from insight.record.run import Run, check_config, open_or_create_run

# Everything the record says about a round, completions and their token ids included.
COMPARED = {
    "selections": "SELECT round, gen_batch, prompt_id, selected, rank, score, alpha, beta "
                  "FROM selections",
    "rollouts": "SELECT round, gen_batch, prompt_id, sample_idx, completion, "
                "completion_token_ids, reward, success, truncated, kept, policy_round "
                "FROM rollouts",
    "posteriors": "SELECT round, prompt_id, alpha, beta FROM posteriors",
    "evals": "SELECT round, accuracy, greedy_accuracy FROM evals",
    "rounds": "SELECT round, status, rollouts_consumed, selector_state FROM rounds",
}


def record(run_dir) -> dict[str, list]:
    con = duckdb.connect(str(run_dir / "insight.duckdb"), read_only=True)
    try:
        return {name: sorted(con.execute(sql).fetchall(), key=repr)
                for name, sql in COMPARED.items()}
    finally:
        con.close()


def tiny_default(**overrides):
    """The embedded default (configs/tiny.yaml, the shipped trained policy: its groups
    have mixed outcomes), cut to two small rounds."""
    return load_config(DEFAULT_CONFIG, {
        "rounds": 2, "rollout.batch_size": 8, "tracking.enabled": False,
        "eval.every": 2, "eval.n_samples": 1, "policy.device": "cpu", **overrides})


def train(run_dir, cfg) -> dict:
    from flows.train import flow_for
    run = open_or_create_run(run_dir, cfg)
    flow_for(str(run.run_dir))(str(run.run_dir), progress=False)
    return record(run.run_dir)


# --- the split ------------------------------------------------------------------------
@pytest.mark.parametrize("n, shards, sizes", [(8, 2, [4, 4]), (7, 3, [3, 2, 2]),
                                              (2, 4, [1, 1]), (0, 3, [])])
def test_split_is_contiguous_balanced_and_never_empty(n, shards, sizes):
    items = [f"p{i}" for i in range(n)]
    pieces = sharding.split(items, shards)
    assert [len(p) for p in pieces] == sizes
    assert [x for p in pieces for x in p] == items


def test_split_refuses_zero_shards():
    with pytest.raises(ValueError, match="shards must be >= 1"):
        sharding.split(["a"], 0)


# --- per-prompt draws -------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """A Run over the default config (no store is opened by the functions tested)."""
    cfg = tiny_default()
    train_problems, _ = check_config(cfg)
    run = Run(tmp_path_factory.mktemp("run"), "r", cfg)
    stages.apply_threads(run)  # one torch thread, as the stages run it
    return run, train_problems[:12]


def test_a_prompts_rows_do_not_depend_on_what_shares_its_batch(default_run):
    run, problems = default_run
    engine = stages.rollout_engine(run, str(run.config.resolved_policy_path()), 256)
    whole = stages.group_rows(run, 3, engine, problems, 0)
    # in two halves, in another order, in batches of 5 sequences: the same rows
    halves = [stages.group_rows(run, 3, engine, problems[6:], 0),
              stages.group_rows(run, 3, engine, problems[:6], 0)]
    engine.batch_size = 5
    small = stages.group_rows(run, 3, engine, problems, 0)
    by_prompt = {}
    for t in halves:
        for row in t.to_pylist():
            by_prompt.setdefault(row["prompt_id"], []).append(row)
    assert [r for p in problems for r in by_prompt[p.prompt_id]] == whole.to_pylist()
    assert small.to_pylist() == whole.to_pylist()
    # and the draws are draws: another round samples other completions
    other = stages.group_rows(run, 4, engine, problems, 0)
    assert other["completion_token_ids"].to_pylist() != whole["completion_token_ids"].to_pylist()


def test_per_row_draws_follow_the_sampling_distribution():
    import torch

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0]])).repeat(20_000, 1)
    u = torch.rand(20_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ids, lp = generation._sample_next(logits, 1.0, 1.0, None, u)
    freq = torch.bincount(ids, minlength=4).double() / len(ids)
    assert freq.tolist() == pytest.approx([0.5, 0.3, 0.2, 0.0], abs=0.015)
    assert torch.allclose(lp, logits[0].log_softmax(-1)[ids])
    # top-p 0.6 keeps the two likeliest tokens, nothing else is ever drawn
    ids, _ = generation._sample_next(logits, 1.0, 0.6, None, u)
    assert set(ids.tolist()) == {0, 1}


def test_the_last_token_with_mass_is_drawn_when_the_uniform_rounds_up_to_the_total():
    import torch

    probs = torch.tensor([[0.25, 0.75, 0.0, 0.0]])
    assert generation._inverse_cdf(probs, torch.tensor([1.0])).tolist() == [1]
    assert generation._inverse_cdf(probs, torch.tensor([0.0])).tolist() == [0]


def test_a_shard_worker_reloads_its_policy_only_when_the_checkpoint_changes(default_run,
                                                                            tmp_path):
    import shutil

    run, problems = default_run
    base = str(run.config.resolved_policy_path())
    args = (str(run.run_dir), run.run_id, run.config, 1, 0)
    loads = sharding.worker_loads()
    first = sharding.generate_shard(*args, base, problems[:3])
    sharding.generate_shard(*args, base, problems[3:6])
    assert sharding.worker_loads() == loads + 1
    # the rows a worker returns are the ones the flow process would have made
    engine = stages.rollout_engine(run, base, 256)
    assert first.to_pylist() == stages.group_rows(run, 1, engine, problems[:3], 0).to_pylist()
    copy = tmp_path / "round_00001"
    shutil.copytree(base, copy)
    sharding.generate_shard(*args, str(copy), problems[:3])
    assert sharding.worker_loads() == loads + 2
    # the same path with rewritten weights (another run in a reused directory) reloads
    shutil.rmtree(copy)
    shutil.copytree(base, copy)
    sharding.generate_shard(*args, str(copy), problems[:3])
    assert sharding.worker_loads() == loads + 3


# --- config -----------------------------------------------------------------------------
def test_orchestration_defaults_to_todays_single_process_run():
    cfg = config_from_dict({})
    assert (cfg.orchestration.task_runner, cfg.orchestration.ray_address,
            cfg.orchestration.rollout_shards) == ("local", None, 1)


def test_orchestration_is_validated_and_not_part_of_the_runs_identity():
    from insight.config import ConfigError

    with pytest.raises(ConfigError, match="rollout_shards"):
        config_from_dict({"orchestration": {"rollout_shards": 0}})
    with pytest.raises(ConfigError, match="task_runner"):
        config_from_dict({"orchestration": {"task_runner": "dask"}})
    with pytest.raises(ConfigError, match="orchestration.shards: Extra inputs"):
        config_from_dict({"orchestration": {"shards": 2}})
    # where a run's work happens does not change what it draws: resuming elsewhere is fine
    assert config_from_dict({}).identity_hash() == config_from_dict(
        {"orchestration": {"task_runner": "ray", "rollout_shards": 4}}).identity_hash()


def test_ray_without_prefect_ray_is_refused_in_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "prefect_ray" else real(name, *a))
    cfg = tiny_default(**{"orchestration.task_runner": "ray"})
    with pytest.raises(ValueError, match=r"^orchestration.task_runner is 'ray' but "
                                         r"prefect-ray is not installed.*\[ray\]") as err:
        check_config(cfg)
    assert "\n" not in str(err.value)


def test_the_ray_task_runner_is_prefect_rays_with_the_configured_address():
    from prefect_ray import RayTaskRunner

    from flows.train import task_runner_for

    cfg = config_from_dict({"orchestration": {"task_runner": "ray",
                                              "ray_address": "ray://head:10001"}})
    runner = task_runner_for(cfg.orchestration)
    assert isinstance(runner, RayTaskRunner) and runner.address == "ray://head:10001"
    assert task_runner_for(config_from_dict({}).orchestration) is None


# --- whole runs -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def single_process(prefect_api, tmp_path_factory):
    return train(tmp_path_factory.mktemp("single") / "run", tiny_default())


@pytest.mark.slow
@pytest.mark.e2e
def test_three_shards_in_the_flow_process_equal_the_single_process_run(single_process,
                                                                       tmp_path):
    sharded = train(tmp_path / "run", tiny_default(**{"orchestration.rollout_shards": 3}))
    assert sharded == single_process


@pytest.mark.slow
@pytest.mark.e2e
def test_a_dynamic_sampling_run_in_shards_equals_it_in_one_process(prefect_api, tmp_path):
    """DAPO's refills: every generation batch is split, the refill draws stay here."""
    # k=2: many groups all-fail or all-pass, so the first batch keeps too few: refills
    dapo = {"selector.type": "dynamic-sampling", "selector.max_num_gen_batches": 3,
            "rollout.k": 2}
    one = train(tmp_path / "one", tiny_default(**dapo))
    assert {row[1] for row in one["rollouts"]} != {0}, "expected refill batches"
    two = train(tmp_path / "two", tiny_default(**dapo, **{"orchestration.rollout_shards": 2}))
    assert two == one


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray cluster of two CPUs for this module; the flow's RayTaskRunner uses it
    (it starts none of its own when Ray is already initialised)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.e2e
def test_two_shards_on_ray_workers_equal_the_single_process_run(single_process, local_ray,
                                                                tmp_path):
    cfg = tiny_default(**{"orchestration.task_runner": "ray",
                          "orchestration.rollout_shards": 2})
    loads_here = sharding.worker_loads()
    on_ray = train(tmp_path / "run", cfg)
    assert on_ray == single_process
    assert len(on_ray["rollouts"]) == 2 * 8 * 8
    # the shards ran in Ray's worker processes: this one never loaded a shard policy
    assert sharding.worker_loads() == loads_here
