"""Bootstrap intervals and the ceiling share of `insight bench compare`, on synthetic
per-seed values and curves: values pinned from a fixed generator, and the properties an
interval must have whatever the draws (contains the point estimate of a symmetric
sample, narrows with more seeds, censored seeds counted, undefined draws left out)."""

from __future__ import annotations

import numpy as np
import pytest

from insight.report import bench_analysis as ba
from insight.report import bench_power as bp


# --- building blocks -------------------------------------------------------------------
def test_a_missed_target_is_censored_at_the_runs_budget_and_counted():
    vals, n = bp.censored([1000.0, None, 1500.0], [4000.0, 5120.0, 5120.0])
    assert vals.tolist() == [1000.0, 5120.0, 1500.0] and n == 1
    with pytest.raises(ValueError):
        bp.censored([1.0], [1.0, 2.0])


def test_resampled_means_are_reproducible_and_independent_of_dict_order():
    a = bp.resampled_means({"u": [1.0, 2.0, 3.0], "i": [4.0, 8.0]}, n_boot=50, seed=7)
    b = bp.resampled_means({"i": [4.0, 8.0], "u": [1.0, 2.0, 3.0]}, n_boot=50, seed=7)
    assert np.array_equal(a["u"], b["u"]) and np.array_equal(a["i"], b["i"])
    # every resampled mean lies within the sample's range, and a constant sample stays put
    assert a["u"].min() >= 1.0 and a["u"].max() <= 3.0
    assert np.all(bp.resampled_means({"c": [5.0, 5.0]}, n_boot=20)["c"] == 5.0)
    with pytest.raises(ValueError):
        bp.resampled_means({"e": []})


def test_mean_interval_pinned_on_a_fixed_generator():
    vals = [1000.0, 1200.0, 1400.0, 1600.0, 1800.0]
    e = bp.mean_ci(vals, n_boot=4000, seed=0)
    assert e["value"] == 1400.0
    # pinned: percentile bootstrap of these 5 values, numpy default_rng(0), 4000 draws
    assert e["ci_low"] == pytest.approx(1160.0)
    assert e["ci_high"] == pytest.approx(1640.0)
    # the analytic range for this sample: the mean of 5 draws from it
    assert 1000.0 < e["ci_low"] < 1400.0 < e["ci_high"] < 1800.0
    assert (e["n_seeds"], e["n_censored"], e["undefined_draws"]) == (5, 0, 0)


def test_more_seeds_give_a_narrower_interval():
    rng = np.random.default_rng(3)
    small = rng.normal(1000.0, 200.0, size=5)
    large = rng.normal(1000.0, 200.0, size=80)
    w = lambda e: e["ci_high"] - e["ci_low"]  # noqa: E731
    assert w(bp.mean_ci(large.tolist())) < 0.5 * w(bp.mean_ci(small.tolist()))


def test_a_higher_level_gives_a_wider_interval():
    vals = [3.0, 5.0, 4.0, 9.0, 6.0, 2.0]
    e90, e99 = bp.mean_ci(vals, level=0.90), bp.mean_ci(vals, level=0.99)
    assert e99["ci_low"] <= e90["ci_low"] and e99["ci_high"] >= e90["ci_high"]
    with pytest.raises(ValueError):
        bp.percentile_interval(np.ones(3), level=1.0)


def test_ceiling_share_is_zero_at_uniform_one_at_the_ceiling_undefined_without_room():
    assert bp.ceiling_share(40.0, 40.0, 20.0) == 0.0
    assert bp.ceiling_share(40.0, 20.0, 20.0) == 1.0
    assert bp.ceiling_share(40.0, 25.0, 20.0) == pytest.approx(0.75)
    assert bp.ceiling_share(40.0, 44.0, 20.0) == pytest.approx(-0.2)  # worse than uniform
    assert np.isnan(bp.ceiling_share(20.0, 15.0, 20.0))   # no ceiling: no share
    assert np.isnan(bp.ceiling_share(20.0, 15.0, 30.0))
    assert np.isnan(bp.ratio(3.0, 0.0)) and bp.ratio(3.0, 2.0) == 1.5


# --- a comparison -----------------------------------------------------------------------
ROLLOUTS = {"uniform": [6000.0, 6400.0, 7000.0, 5600.0, 6600.0],
            "insight": [4000.0, 4400.0, 4200.0, 3800.0, 4600.0],
            "mopps": [5000.0, 5200.0, 4800.0, 5400.0, 5000.0],
            "dynamic-sampling": [9000.0, 9500.0, 8800.0, 9100.0, 9600.0]}
ROUNDS = {"uniform": [47.0, 50.0, 55.0, 44.0, 52.0],
          "insight": [31.0, 34.0, 33.0, 30.0, 36.0],
          "mopps": [39.0, 41.0, 38.0, 42.0, 39.0],
          "dynamic-sampling": [22.0, 24.0, 21.0, 23.0, 25.0]}


def test_comparison_intervals_speedups_and_ceiling_share():
    got = bp.comparison_intervals(ROLLOUTS, ROUNDS, {}, n_boot=2000, seed=0)
    ins = got["insight"]
    # point estimates are ratios of means
    assert ins["speedup_vs"]["uniform"]["value"] == pytest.approx(31600 / 21000)
    assert ins["speedup_vs"]["mopps"]["value"] == pytest.approx(25400 / 21000)
    assert ins["ceiling_share"]["value"] == pytest.approx((49.6 - 32.8) / (49.6 - 23.0))
    assert ins["ceiling_share"]["ceiling_ratio"] == pytest.approx(49.6 / 23.0)
    for e in (ins["speedup_vs"]["uniform"], ins["speedup_vs"]["mopps"], ins["ceiling_share"],
              ins["rollouts_to_target_ci"]):
        assert e["ci_low"] < e["value"] < e["ci_high"]
    # well separated samples: insight beats both with confidence, shares are in (0, 1)
    assert ins["speedup_vs"]["uniform"]["ci_low"] > 1.3
    assert 0.5 < ins["ceiling_share"]["ci_low"] and ins["ceiling_share"]["ci_high"] < 0.8
    # uniform has no speedup over itself; its share is 0 and the ceiling's is 1
    assert "uniform" not in got["uniform"]["speedup_vs"]
    assert got["uniform"]["ceiling_share"]["value"] == pytest.approx(0.0)
    assert got["dynamic-sampling"]["ceiling_share"]["value"] == pytest.approx(1.0)


def test_without_a_ceiling_run_there_is_no_share_and_undefined_draws_are_counted():
    no_ds = {k: v for k, v in ROUNDS.items() if k != "dynamic-sampling"}
    got = bp.comparison_intervals(ROLLOUTS, no_ds, {})
    assert "ceiling_share" not in got["insight"]
    # a ceiling that is no better than uniform on some resamples
    rounds = dict(ROUNDS, **{"dynamic-sampling": [30.0, 60.0, 45.0, 70.0, 40.0]})
    share = bp.comparison_intervals(ROLLOUTS, rounds, {}, n_boot=1000)["insight"]["ceiling_share"]
    assert 0 < share["undefined_draws"] < 1000


def test_censored_seeds_are_reported_with_the_interval():
    got = bp.comparison_intervals(ROLLOUTS, ROUNDS, {"uniform": (2, 1), "insight": (0, 0)})
    assert got["uniform"]["rollouts_to_target_ci"]["n_censored"] == 2
    assert got["insight"]["speedup_vs"]["uniform"]["censored"] == {"selector": 0, "uniform": 2}
    assert got["insight"]["ceiling_share"]["censored"]["uniform"] == 1


# --- through analyze -----------------------------------------------------------------
def _curve_run(selector, seed, rounds_to_target, n_rounds=10, batch=64, k=8):
    """A run whose accuracy climbs linearly from 0.40 and reaches 0.50 at
    `rounds_to_target` (never, if that is beyond the run), evaluated every round."""
    slope = 0.10 / rounds_to_target
    return {
        "selector": selector, "seed": seed, "k": k,
        "evals": [{"round": r, "rollouts": r * batch, "accuracy": 0.40 + slope * r,
                   "greedy_accuracy": None} for r in range(n_rounds + 1)],
        "rounds": [{"round": r, "rollouts": batch, "zero_adv_share": 0.5} for r in
                   range(1, n_rounds + 1)],
    }


def test_analyze_reports_rounds_ceiling_share_with_a_censored_uniform_seed():
    runs = ([_curve_run("uniform", s, t) for s, t in enumerate([8, 9, 12])]     # 12: missed
            + [_curve_run("insight", s, t) for s, t in enumerate([5, 6, 7])]
            + [_curve_run("dynamic-sampling", s, t) for s, t in enumerate([4, 4, 4])])
    res = ba.analyze(runs, targets=["+0.10"], main_target="+0.10", n_boot=500)
    ins = res["selectors"]["insight"]
    uni = res["selectors"]["uniform"]
    # uniform's third seed is censored at its 10 rounds: R_u = (8 + 9 + 10) / 3 = 9
    assert uni["ceiling_share"]["censored"]["selector"] == 1
    assert uni["rollouts_to_target_ci"]["value"] == pytest.approx(9 * 64)
    assert ins["ceiling_share"]["value"] == pytest.approx((9 - 6) / (9 - 4))
    assert ins["speedup_vs"]["uniform"]["value"] == pytest.approx(9 / 6)
    assert res["intervals"]["ceiling"] == "dynamic-sampling"
    md = ba.to_markdown(res)
    assert "ceiling share" in md and "(1 censored)" in md

