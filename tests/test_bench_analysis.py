"""The data-efficiency analysis of `insight bench compare`, pinned on hand-made curves:
targets, first crossing (interpolated and first evaluation), AUC over a budget, runs
that never reach a target, aggregation over seeds, rendering."""

from __future__ import annotations

import json
import math

import pytest

from insight.report import bench_analysis as ba

XS = [0, 100, 200, 300]
YS = [0.40, 0.45, 0.55, 0.52]


# --- targets ------------------------------------------------------------------------
def test_targets_parse_relative_and_absolute_levels():
    rel, ab = ba.parse_target("+0.10"), ba.parse_target("0.6")
    assert rel == ba.Target(0.10, True) and rel.label == "+0.10"
    assert ab == ba.Target(0.6, False) and ab.label == "0.60"
    assert ba.parse_target("+0.075").label == "+0.075"  # not rounded to +0.07
    assert ba.parse_target("0.5").label == "0.50" and ba.parse_target("+0.1").label == "+0.10"
    assert rel.level(0.41) == pytest.approx(0.51)
    assert ab.level(0.41) == 0.6
    assert ba.parse_targets("+0.05, +0.10,0.6,+0.10") == [
        ba.Target(0.05, True), ba.Target(0.10, True), ba.Target(0.6, False)]


@pytest.mark.parametrize("bad", ["+2", "1.5", "abc", "+0", "-0.1", "+nan", ""])
def test_targets_reject_what_is_not_an_accuracy(bad):
    with pytest.raises(ValueError):
        ba.parse_targets(bad) if bad == "" else ba.parse_target(bad)


# --- one curve ------------------------------------------------------------------------
def test_first_crossing_interpolates_between_evaluations():
    assert ba.first_crossing(XS, YS, 0.50) == pytest.approx(150.0)
    # the first crossing counts, even though the curve dips below afterwards
    assert ba.first_crossing(XS, YS, 0.52) == pytest.approx(170.0)


def test_first_crossing_first_eval_takes_the_evaluation_that_reached_it():
    assert ba.first_crossing(XS, YS, 0.50, method="first-eval") == 200.0
    assert ba.first_crossing(XS, YS, 0.45, method="first-eval") == 100.0


def test_a_curve_starting_at_the_target_needs_no_rollouts_and_one_never_reaching_it_none():
    assert ba.first_crossing(XS, YS, 0.40) == 0.0
    assert ba.first_crossing(XS, YS, 0.56) is None
    assert ba.first_crossing(XS, YS, 0.56, method="first-eval") is None


def test_value_at_and_area_under_curve():
    assert ba.value_at(XS, YS, 250) == pytest.approx(0.535)
    assert ba.value_at(XS, YS, 300) == pytest.approx(0.52)
    assert ba.value_at(XS, YS, 301) is None
    # (0.425*100 + 0.5*100 + 0.535*100) / 300
    assert ba.area_under_curve(XS, YS, 300) == pytest.approx(146.0 / 300)
    assert ba.area_under_curve(XS, YS, 300, normalize=False) == pytest.approx(146.0)
    # truncated inside a segment: 42.5 + (0.45 + 0.50) / 2 * 50
    assert ba.area_under_curve(XS, YS, 150) == pytest.approx(66.25 / 150)
    assert ba.area_under_curve(XS, YS, 400) is None  # the curve stops short of the budget


def test_curves_must_be_well_formed():
    with pytest.raises(ValueError):
        ba.first_crossing([0, 200, 100], [0.1, 0.2, 0.3], 0.2)
    with pytest.raises(ValueError):
        ba.first_crossing([0, 1], [0.1], 0.2)
    with pytest.raises(ValueError):
        ba.first_crossing(XS, YS, 0.5, method="smoothed")


# --- over seeds -----------------------------------------------------------------------
def test_stats_over_seeds_use_the_sample_std():
    s = ba.value_stats([100.0, 200.0, 300.0])
    assert (s["mean"], s["std"], s["min"], s["max"]) == (200.0, 100.0, 100.0, 300.0)
    assert (s["n"], s["n_reached"], s["n_missing"]) == (3, 3, 0)
    assert ba.value_stats([7.0])["std"] == 0.0


def test_stats_never_drop_a_seed_that_missed_silently():
    s = ba.value_stats([100.0, 200.0, None], censor_at=[300.0, 300.0, 384.0])
    assert s["mean"] is None and s["std"] is None and s["min"] is None
    assert s["per_seed"] == [100.0, 200.0, None]
    assert (s["n"], s["n_reached"], s["n_missing"]) == (3, 2, 1)
    assert s["mean_reached"] == 150.0
    assert s["mean_lower_bound"] == pytest.approx((100 + 200 + 384) / 3)
    none = ba.value_stats([None, None], censor_at=[10.0, 20.0])
    assert none["mean_reached"] is None and none["mean_lower_bound"] == 15.0


def test_mean_curve_on_the_union_of_points_up_to_the_shortest():
    c = ba.mean_curve([([0, 100, 200], [0.4, 0.6, 0.8]), ([0, 50, 150], [0.4, 0.5, 0.5])])
    assert c["x"] == [0.0, 50.0, 100.0, 150.0]
    assert c["mean"] == pytest.approx([0.4, 0.5, 0.55, 0.6])
    assert c["min"] == pytest.approx([0.4, 0.5, 0.5, 0.5])
    assert c["max"] == pytest.approx([0.4, 0.5, 0.6, 0.7])


def _run(selector, seed, accs, rollouts=(0, 64, 128), zero=(0.5, 0.25)):
    return {
        "selector": selector, "seed": seed, "run_dir": f"/runs/{selector}-s{seed}",
        "evals": [{"round": 2 * i, "rollouts": x, "accuracy": a, "greedy_accuracy": a + 0.01}
                  for i, (x, a) in enumerate(zip(rollouts, accs))],
        "rounds": [{"round": r, "rollouts": rollouts[-1] // 4, "zero_adv_share": zero[(r - 1) % 2],
                    "all_fail_share": zero[(r - 1) % 2], "all_success_share": 0.0,
                    "extra_rollouts": 0.0, "seconds_select": 1.0 if r == 1 else 0.01 * r,
                    "seconds_round": 1.0}
                   for r in range(1, 5)],
        "wall_seconds": 4.0,
    }


# Reference (initial) accuracy: (0.40 + 0.42) / 2 = 0.41.
RUNS = [
    _run("uniform", 0, [0.40, 0.46, 0.52]),
    _run("uniform", 1, [0.42, 0.48, 0.50]),
    _run("insight", 0, [0.40, 0.56, 0.60]),
    _run("insight", 1, [0.42, 0.52, 0.58]),
]


def test_analyze_pins_rollouts_to_targets_speedup_and_auc():
    res = ba.analyze(RUNS, targets=["+0.04", "+0.10", "0.55"], main_target="+0.04",
                     baseline="uniform", selectors=["insight", "uniform"])
    assert list(res["selectors"]) == ["insight", "uniform"]
    assert res["reference_accuracy"] == pytest.approx(0.41)
    assert res["main_target"] == "+0.04" and res["main_target_level"] == pytest.approx(0.45)
    assert res["budget_rollouts"] == 128
    ins, uni = res["selectors"]["insight"], res["selectors"]["uniform"]
    # level 0.45: insight 0.05/0.16*64 = 20, 0.03/0.10*64 = 19.2; uniform 53.33, 32
    assert ins["rollouts_to_target_per_seed"] == pytest.approx([20.0, 19.2])
    assert ins["rollouts_to_target"] == pytest.approx(19.6)
    assert uni["rollouts_to_target"] == pytest.approx((160 / 3 + 32) / 2)
    assert ins["speedup_vs_baseline"] == pytest.approx((160 / 3 + 32) / 2 / 19.6)
    assert uni["speedup_vs_baseline"] == pytest.approx(1.0)
    # level 0.51: insight 44 and 57.6; uniform seed 0 at 117.33, seed 1 never
    t = uni["rollouts_to_target_all"]["+0.10"]
    assert t["per_seed"][0] == pytest.approx(64 + 64 * 5 / 6) and t["per_seed"][1] is None
    assert t["mean"] is None and t["n_reached"] == 1
    assert t["mean_lower_bound"] == pytest.approx((64 + 64 * 5 / 6 + 128) / 2)
    assert ins["rollouts_to_target_all"]["+0.10"]["mean"] == pytest.approx((44 + 57.6) / 2)
    # absolute 0.55: insight 60 and 96, uniform never
    assert ins["rollouts_to_target_all"]["0.55"]["per_seed"] == pytest.approx([60.0, 96.0])
    assert uni["rollouts_to_target_all"]["0.55"]["n_reached"] == 0
    first = ins["rollouts_to_target_first_eval"]["0.55"]["per_seed"]
    assert first == [64.0, 128.0]
    # AUC over 128 rollouts is the mean of the two segment midpoints here
    assert ins["auc"]["per_seed"] == pytest.approx([0.53, 0.51])
    assert uni["auc"]["mean"] == pytest.approx(0.465)
    assert uni["final_accuracy"]["mean"] == pytest.approx(0.51)
    assert uni["final_greedy_accuracy"]["per_seed"] == pytest.approx([0.53, 0.51])
    assert ins["zero_adv_share"]["mean"] == pytest.approx(0.375)
    assert ins["zero_adv_by_round"] == {"round": [1, 2, 3, 4], "mean": [0.5, 0.25, 0.5, 0.25],
                                        "min": [0.5, 0.25, 0.5, 0.25],
                                        "max": [0.5, 0.25, 0.5, 0.25]}
    # selection time: median over rounds (round 1 carries one-time JIT compilation)
    assert ins["seconds_select_per_round"]["mean"] == pytest.approx(0.035)
    assert ins["seconds_select_mean"]["mean"] == pytest.approx((1.0 + 0.09) / 4)
    assert ins["rollouts_consumed"]["mean"] == 128
    assert res["setup_consistent"] is True
    json.dumps(res)  # results.json must be serializable as is


def test_no_speedup_when_the_baseline_misses_the_main_target():
    res = ba.analyze(RUNS, targets=["+0.10"], main_target="+0.10", baseline="uniform")
    assert res["selectors"]["uniform"]["rollouts_to_target"] is None
    assert res["selectors"]["insight"]["speedup_vs_baseline"] is None
    assert res["selectors"]["insight"]["rollouts_to_target"] == pytest.approx(50.8)


def test_extra_rollouts_stretch_the_x_axis_and_the_budget_is_the_shortest_run():
    ds = _run("dynamic-sampling", 2, [0.41, 0.51, 0.61], rollouts=(0, 192, 384))
    ds["rounds"][0]["extra_rollouts"] = 64.0
    res = ba.analyze([*RUNS[:2], ds], targets=["+0.05"], main_target="+0.05")
    assert res["budget_rollouts"] == 128
    d = res["selectors"]["dynamic-sampling"]
    # 0.41 + 0.05 = 0.46 is crossed at 0.05 / 0.10 * 192 rollouts, extra ones included
    assert d["rollouts_to_target"] == pytest.approx(96.0)
    assert d["extra_rollouts"]["mean"] == 64.0
    assert d["rollouts_consumed"]["mean"] == 384
    # its AUC covers the common budget only: (0.41 + 0.4767) / 2 over [0, 128]
    assert d["auc"]["mean"] == pytest.approx((0.41 + 0.41 + 0.10 * 128 / 192) / 2)
    assert res["baseline"] == "uniform"
    md = ba.to_markdown(res)
    assert "of which discarded" in md and "| `dynamic-sampling` | 1 | 96 |" in md


def test_a_setup_mismatch_between_selectors_of_one_seed_is_flagged():
    bad = _run("insight", 0, [0.39, 0.5, 0.6])
    assert ba.analyze([RUNS[0], bad])["setup_consistent"] is False


def test_markdown_and_plot(tmp_path):
    res = ba.analyze(RUNS, targets=["+0.04", "+0.10", "0.55"], main_target="+0.10")
    md = ba.to_markdown(res)
    main_table, spend_table = md.split("What reaching a target cost", 1)
    rows = [line for line in main_table.splitlines() if line.startswith("| `")]
    assert len(rows) == 2
    assert "rounds to +0.10 | informative groups to +0.10" in spend_table
    uni = next(r for r in rows if "`uniform`" in r)
    assert "1/2 reached, mean ≥ 123" in uni and "not reached (0/2)" in uni
    ins = next(r for r in rows if "`insight`" in r)
    assert "51 ± 10 [44–58]" in ins
    assert "- `uniform`: s0: 117, s1: —" in md
    png = tmp_path / "curves.png"
    ba.plot_curves(res, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analyze_needs_runs():
    with pytest.raises(ValueError):
        ba.analyze([])
    assert math.isclose(ba.parse_target(0.3).value, 0.3)


# --- where the rollouts went ----------------------------------------------------------
def test_groups_by_difficulty_averages_shares_over_runs():
    runs = [
        {"groups_by_difficulty": [
            {"difficulty": 1, "groups": 30, "all_fail": 0.1, "all_success": 0.2, "success_rate": 0.6},
            {"difficulty": 3, "groups": 10, "all_fail": 1.0, "all_success": 0.0, "success_rate": 0.0}]},
        {"groups_by_difficulty": [
            {"difficulty": 1, "groups": 40, "all_fail": 0.3, "all_success": 0.0, "success_rate": 0.4}]},
        {},  # a dataset without levels contributes nothing
    ]
    got = ba.groups_by_difficulty(runs)
    assert [x["difficulty"] for x in got] == [1, 3]
    assert got[0]["share"] == pytest.approx((0.75 + 1.0) / 2) and got[0]["runs"] == 2
    assert got[0]["all_fail"] == pytest.approx(0.2)
    assert got[1] == {"difficulty": 3, "runs": 1, "share": 0.25, "all_fail": 1.0,
                      "all_success": 0.0, "success_rate": 0.0}
    assert ba.groups_by_difficulty([{}]) == []


# --- what reaching a target cost ------------------------------------------------------
def test_rounds_and_informative_groups_to_a_target_are_read_off_the_spend_curves():
    # k = 8, 2 rounds of 80 rollouts (10 groups each): 10% then 50% zero-advantage groups
    run = {"selector": "x", "seed": 0, "k": 8,
           "evals": [{"round": 0, "rollouts": 0, "accuracy": 0.40},
                     {"round": 2, "rollouts": 160, "accuracy": 0.60}],
           "rounds": [{"round": 1, "rollouts": 80, "zero_adv_share": 0.1},
                      {"round": 2, "rollouts": 80, "zero_adv_share": 0.5}]}
    assert ba.spend_curves(run) == ([0.0, 80.0, 160.0], [0.0, 1.0, 2.0], [0.0, 9.0, 14.0])
    out = ba.analyze_run(run, {"+0.15": 0.55}, budget=None)
    assert out["rollouts_to_target"]["+0.15"] == pytest.approx(120.0)
    assert out["rounds_to_target"]["+0.15"] == pytest.approx(1.5)
    assert out["informative_groups_to_target"]["+0.15"] == pytest.approx(11.5)
    missed = ba.analyze_run(run, {"+0.30": 0.70}, budget=None)
    assert missed["rounds_to_target"]["+0.30"] is None
    assert missed["informative_groups_to_target"]["+0.30"] is None
