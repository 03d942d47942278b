"""The learning-dynamics SIMULATOR (insight/report/simulate.py, insight/report/simulate_sweep.py): its
model's invariants, its bookkeeping of rollouts, determinism, and that every output says
SIMULATION."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import numpy as np
import pytest

from flows import cli_simulate
from insight.report import simulate as S
from insight.report import simulate_sweep as SW

# Small world: a run is a few dozen rounds, so the whole file stays fast.
SMALL = S.SimConfig(n_prompts=128, n_heldout=128, batch_size=8, k=4, budget=1_600,
                    transfer_lr=0.3)


# --------------------------------------------------------------------------- model
def test_signal_is_zero_for_all_fail_all_success_and_peaks_at_half():
    for kind in ("std", "var"):
        s = np.arange(0, 9)
        sig = S.group_signal(s, 8, kind)
        assert sig[0] == 0 and sig[8] == 0
        assert np.all(sig[1:8] > 0)
        assert int(np.argmax(sig)) == 4
        np.testing.assert_allclose(sig, sig[::-1])  # symmetric in s <-> k - s
    assert np.all(S.group_signal(np.array([0, 1]), 1, "std") == 0)  # k = 1: no baseline


def test_std_signal_matches_grpo_gradient_on_a_bernoulli_logit():
    """Sum over rollouts of A_j * dlog pi(y_j)/dz, averaged over k, with GRPO advantages
    (r - mean) / sample std, equals the closed form for any p (here checked by brute force)."""
    k = 8
    for s in range(1, k):
        r = np.array([1.0] * s + [0.0] * (k - s))
        adv = (r - r.mean()) / r.std(ddof=1)
        for p in (0.1, 0.5, 0.9):
            dlogp = np.where(r == 1, 1 - p, -p)
            assert np.isclose((adv * dlogp).mean(), S.group_signal(np.array([s]), k, "std")[0])


def test_zero_variance_groups_produce_no_learning():
    world = S.World(SMALL, seed=0)
    before_p, before_acc = world.p_train().copy(), world.heldout_accuracy()
    idx = np.arange(8)
    sig = world.train(idx, np.array([0, 4, 0, 4, 0, 0, 4, 4]))  # all-fail / all-success
    assert np.all(sig == 0)
    np.testing.assert_array_equal(world.p_train(), before_p)
    assert world.heldout_accuracy() == before_acc
    # ... while one mixed group moves its own prompt and, by transfer, the held-out set.
    sig = world.train(idx[:1], np.array([2]))
    assert sig[0] > 0
    assert world.p_train()[0] > before_p[0]
    assert world.heldout_accuracy() > before_acc


def test_zero_variance_groups_learn_nothing_in_normalized_step_too():
    world = S.World(S.SimConfig(**{**asdict(SMALL), "step": "normalized"}), seed=0)
    before = world.heldout_accuracy()
    world.train(np.arange(4), np.array([0, 4, 4, 0]))
    assert world.heldout_accuracy() == before


def test_transfer_is_local_in_difficulty():
    sim = S.SimConfig(**{**asdict(SMALL), "transfer_width": 0.5, "lr": 0.0})
    world = S.World(sim, seed=1)
    i = int(np.argmin(np.abs(world.x_train)))  # a prompt near p = 0.5
    world.train(np.array([i]), np.array([2]))
    x0 = world.x_train[i]
    assert world.skill(np.array([x0]))[0] > 0
    assert world.skill(np.array([x0 + 4.0]))[0] < 1e-6 * world.skill(np.array([x0]))[0]


def test_difficulty_distribution_is_broad():
    """The default pool has many prompts near 0 and near 1, and some in between."""
    world = S.World(S.SimConfig(), seed=0)
    p = world.p_train()
    assert (p < 0.05).mean() > 0.15 and (p > 0.95).mean() > 0.05
    assert ((p > 0.2) & (p < 0.8)).mean() > 0.15


def test_rollouts_to_target_interpolates_and_reports_never():
    r = np.array([0, 100, 200, 300.0])
    a = np.array([0.4, 0.45, 0.55, 0.6])
    assert S.rollouts_to_target(r, a, 0.5) == pytest.approx(150.0)
    assert S.rollouts_to_target(r, a, 0.4) == 0.0
    assert S.rollouts_to_target(r, a, 0.7) is None


def test_bad_config_fails_fast():
    with pytest.raises(ValueError, match="batch_size"):
        S.SimConfig(n_prompts=4, batch_size=8)
    with pytest.raises(ValueError, match="signal"):
        S.SimConfig(signal="nope")


# --------------------------------------------------------------------------- runs
def test_run_is_deterministic_under_seed_and_differs_across_seeds():
    v = S.Variant({"type": "insight"})
    a = S.run_simulation(SMALL, v, seed=3)
    b = S.run_simulation(SMALL, v, seed=3)
    c = S.run_simulation(SMALL, v, seed=4)
    assert a["curves"] == b["curves"]
    assert a["curves"]["heldout_accuracy"] != c["curves"]["heldout_accuracy"]


def test_rollouts_are_counted_and_budget_respected():
    res = S.run_simulation(SMALL, S.Variant({"type": "uniform"}), seed=0)
    r = res["curves"]["rollouts"]
    assert r[0] == 0 and all(d == SMALL.batch_size * SMALL.k for d in np.diff(r))
    assert res["summary"]["rollouts"] == r[-1] >= SMALL.budget
    assert res["summary"]["extra_rollouts"] == 0
    acc = res["curves"]["heldout_accuracy"]
    assert acc[-1] > acc[0]  # training helps in this world


def test_dynamic_sampling_counts_every_generated_rollout():
    res = S.run_simulation(SMALL, S.Variant({"type": "dynamic-sampling"}), seed=0)
    c, k, B = res["curves"], SMALL.k, SMALL.batch_size
    groups, kept = np.array(c["groups"][1:]), np.array(c["kept_groups"][1:])
    np.testing.assert_array_equal(np.diff(c["rollouts"]), k * groups)
    assert np.all(kept <= B) and np.all(groups >= kept)
    assert np.all(groups % B == 0)  # whole generation batches are paid for
    assert groups.sum() > kept.sum()  # the default world has zero-advantage groups
    assert res["summary"]["extra_rollouts"] == k * (groups.sum() - kept.sum()) > 0
    # It trains on mixed groups only: with full rounds, B kept groups each.
    assert np.mean(kept == B) > 0.5


def test_dynamic_sampling_respects_max_num_gen_batches():
    res = S.run_simulation(SMALL, S.Variant({"type": "dynamic-sampling",
                                             "max_num_gen_batches": 2}), seed=0)
    assert max(res["curves"]["groups"]) <= 2 * SMALL.batch_size


def test_expand_grid_applies_keys_only_where_they_exist():
    vs = SW.expand_grid(["insight", "uniform"], {"lam": [1.0, 0.9]})
    names = [v.name for v in vs]
    assert names.count("uniform") == 1  # posterior keys do not multiply uniform
    assert sum(n.startswith("insight[") for n in names) == 2
    with pytest.raises(ValueError, match="apply to none"):
        SW.expand_grid(["uniform"], {"lam": [0.5]})


def test_small_sweep_writes_outputs_labelled_simulation(tmp_path):
    variants = SW.expand_grid(["insight", "uniform", "dynamic-sampling"], {"lam": [1.0, 0.8]})
    result = SW.sweep(SMALL, variants, seeds=[0, 1])
    assert result["label"] == "SIMULATION" and "not a measurement" in result["disclaimer"]
    assert len(result["runs"]) == len(variants) * 2
    agg = {row["variant"]: row for row in result["aggregate"]}
    assert agg["uniform"]["targets"][0]["speedup"] == pytest.approx(1.0)
    paths = SW.write_outputs(result, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["label"] == "SIMULATION" and all(r["label"] == "SIMULATION" for r in data["runs"])
    md = paths["md"].read_text()
    assert md.startswith("# SIMULATION") and "not a measurement" in md
    assert paths["png"].stat().st_size > 10_000


def test_cli_glue_runs_and_labels_its_output(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    cli_simulate.add_simulate_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), "--selectors", "insight,uniform",
                              "--seeds", "1", "--workers", "1", "--n-prompts", "64",
                              "--n-heldout", "64", "--batch-size", "8", "--k", "4",
                              "--budget", "640", "--gamma", "1,2"])
    assert cli_simulate.run_simulate(args) == 0
    out = capsys.readouterr().out
    assert "SIMULATION" in out and "insight[gamma=2]" in out
    assert (tmp_path / "simulation.png").exists()
    bad = parser.parse_args(["--out", str(tmp_path), "--grid", "no_such_field=1"])
    assert cli_simulate.run_simulate(bad) == 2
