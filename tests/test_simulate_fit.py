"""Fitting the SIMULATOR to real runs (insight/report/simulate_fit.py): the world built for
a setting has the measured per-level success rates, the fit recovers dynamics it is
given as ground truth, and the check's ordering and interval logic is right."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from insight.report import simulate as S
from insight.report import simulate_fit as F

K = 8


# --------------------------------------------------------------------------- the world
@pytest.mark.parametrize("mean,conc", [(0.3, 2.0), (0.6, 7.0), (0.9, 0.5)])
def test_zero_shares_match_the_beta_binomial(mean, conc):
    p0, pk = F.betabinom_zero_shares(mean, conc, K)
    dist = stats.betabinom(K, mean * conc, (1 - mean) * conc)
    assert p0 == pytest.approx(dist.pmf(0), rel=1e-9)
    assert pk == pytest.approx(dist.pmf(K), rel=1e-9)


@pytest.mark.parametrize("mean,conc", [(0.33, 9.0), (0.6, 3.0), (0.15, 0.8)])
def test_fit_level_recovers_a_beta_from_its_group_shares(mean, conc):
    p0, pk = F.betabinom_zero_shares(mean, conc, K)
    m, c = F.fit_level(mean, p0, pk, K)
    assert m == mean
    assert c == pytest.approx(conc, rel=0.02)


def test_a_level_never_solved_has_mean_zero():
    assert F.fit_level(0.0, 1.0, 0.0, K)[0] == 0.0


def test_level_stats_counts_groups_per_level():
    groups = [(0, 8, 1), (8, 8, 1), (4, 8, 1), (2, 8, 2), (0, 8, 3)]
    st = F.level_stats(groups)
    assert st[1] == {"groups": 3, "success_rate": 0.5, "all_fail": 1 / 3, "all_success": 1 / 3}
    assert st[2]["success_rate"] == 0.25 and st[3]["all_fail"] == 1.0


def _setting(levels, **kw) -> F.Setting:
    base = dict(name="t", n_prompts=300, n_heldout=300, batch_size=8, k=K, rounds=12,
                levels=levels, main_gain=0.02)
    return F.Setting(**{**base, **kw})


def test_world_reproduces_the_given_per_level_success_rates():
    levels = ((0.2, 0.3, 6.0), (0.5, 0.7, 3.0), (0.3, 0.0, 1.0))
    st = _setting(levels, n_prompts=4000, n_heldout=10)
    world = S.World(F.sim_config(st, F.Dynamics()), seed=3)
    counts = S.level_counts([lv[0] for lv in levels], st.n_prompts)
    assert counts.tolist() == [800, 2000, 1200]
    p = world.p_train()
    for (share, mean, conc), part in zip(levels, np.split(p, np.cumsum(counts)[:-1])):
        se = np.sqrt(mean * (1 - mean) / (conc + 1) / part.size) + 1e-3
        assert abs(part.mean() - mean) < 4 * se
    assert p[-1200:].max() < 1e-3  # the unsolved level stays unsolved


def test_world_from_measured_groups_round_trips():
    """Groups rolled out on a known world -> level stats -> fitted levels -> a new world
    whose per-level success rates match the first world's (within sampling error)."""
    rng = np.random.default_rng(0)
    truth = {1: (0.3, 4.0), 2: (0.75, 2.0)}
    groups = []
    for lv, (mean, conc) in truth.items():
        p = rng.beta(mean * conc, (1 - mean) * conc, 3000)
        groups += [(int(s), K, lv) for s in rng.binomial(K, p)]
    fitted = F.world_levels({1: 0.5, 2: 0.5}, F.level_stats(groups), K)
    for (share, mean, conc), (t_mean, t_conc) in zip(fitted, truth.values()):
        assert share == 0.5
        assert abs(mean - t_mean) < 0.02
        assert conc == pytest.approx(t_conc, rel=0.3)


def test_levels_need_valid_entries_and_defaults_are_unchanged():
    assert S.SimConfig().difficulty == "normal"
    with pytest.raises(ValueError, match="levels"):
        S.SimConfig(difficulty="levels")
    with pytest.raises(ValueError, match="mean"):
        S.SimConfig(difficulty="levels", levels=((1.0, 1.5, 2.0),))


# --------------------------------------------------------------------------- the fit
def _synthetic_real(setting: F.Setting, dyn: F.Dynamics, selectors, seeds,
                    gains=()) -> F.Setting:
    """A setting whose 'real' runs are the simulator's own, under known dynamics."""
    real = {}
    for sel in selectors:
        runs = F.simulate(setting, dyn, sel, seeds)
        last = min(r["rollouts"][-1] for r in runs)
        xs = runs[0]["rollouts"][::2]
        xs = xs[xs <= last]
        real[sel] = F.RealSelector(tuple(xs), tuple(F.mean_gain_at(runs, xs)),
                                   {g: tuple(F.to_target(r, g) for r in runs)
                                    for g in (setting.main_gain, *gains)},
                                   tuple(r["budget"] for r in runs))
    return F.Setting(**{**setting.__dict__, "real": real})


def test_fit_recovers_known_dynamics_from_a_simulated_curve():
    levels = ((0.3, 0.35, 4.0), (0.4, 0.65, 3.0), (0.3, 0.0, 1.0))
    truth = F.Dynamics(transfer_lr=0.2, transfer_width=1.0, step="sgd")
    sels, seeds = ("uniform", "dynamic-sampling"), (0, 1)
    st = _synthetic_real(_setting(levels), truth, sels, seeds)
    grid = {"transfer_lr": (0.05, 0.2, 0.8), "transfer_width": (0.3, 1.0),
            "step": ("sgd", "normalized"), "lr": (0.3,)}
    got = F.fit(st, sels, seeds, grid=grid, polish_iters=0)
    assert got["dynamics"] == truth
    assert got["error"] < 1e-12  # same seeds, same dynamics: the same curves
    assert sorted(r["error"] for r in got["grid"])[1] > 1e-3  # and nothing else fits


def test_polish_moves_an_off_grid_truth_closer():
    levels = ((0.5, 0.4, 4.0), (0.5, 0.7, 3.0))
    truth = F.Dynamics(transfer_lr=0.13, transfer_width=1.0, step="sgd")
    sels, seeds = ("uniform",), (0,)
    st = _synthetic_real(_setting(levels, rounds=10), truth, sels, seeds)
    grid = {"transfer_lr": (0.1,), "transfer_width": (1.0,), "step": ("sgd",), "lr": (0.3,)}
    plain = F.fit(st, sels, seeds, grid=grid, polish_iters=0)
    polished = F.fit(st, sels, seeds, grid=grid, polish_iters=20)
    assert polished["error"] < 0.5 * plain["error"]
    assert abs(polished["dynamics"].transfer_lr - 0.13) < abs(0.1 - 0.13)


# --------------------------------------------------------------------------- the check
def test_kendall_tau_and_ties_predict_nothing():
    a = {"x": 1.0, "y": 2.0, "z": 3.0, "w": 4.0}
    assert F.kendall_tau(a, a) == 1.0
    assert F.kendall_tau(a, {s: -v for s, v in a.items()}) == -1.0
    swapped = {**a, "x": 2.0, "y": 1.0}
    assert F.kendall_tau(a, swapped) == pytest.approx(4 / 6)  # 5 of 6 pairs agree, 1 not
    tied = dict.fromkeys(a, 9.0)
    assert F.kendall_tau(tied, a) == 0.0
    # bounds (every seed missed): two bounds are unordered; a value below a bound is faster
    budgets = {"x": 5.0, "y": 6.0, "z": 7.0, "w": 8.0}
    assert F.kendall_tau(budgets, a, a_bounds=a) == 0.0
    assert F.kendall_tau({**budgets, "x": 1.0}, a, a_bounds=["y", "z", "w"]) == 0.5


def test_speedups_censor_missed_seeds_at_their_budget():
    out = F._speedups({"uniform": [100.0, 300.0], "fast": [None, 100.0]},
                      {"uniform": [400.0, 400.0], "fast": [50.0, 400.0]}, "uniform")
    assert out["fast"]["rollouts"] == 75.0 and out["fast"]["n_censored"] == 1
    assert out["fast"]["speedup"] == pytest.approx(200.0 / 75.0)
    lo, hi = out["fast"]["speedup_ci"]
    assert lo <= out["fast"]["speedup"] <= hi
    assert out["uniform"]["speedup"] == 1.0 and out["uniform"]["speedup_ci"] is None


def test_check_against_its_own_simulation_predicts_ordering_and_ratios():
    """With 'real' runs that are the simulator itself (same dynamics and seeds), the check
    must report the same ordering and every speedup inside its interval."""
    levels = ((0.3, 0.35, 4.0), (0.4, 0.65, 3.0), (0.3, 0.0, 1.0))
    dyn = F.Dynamics(transfer_lr=0.3, transfer_width=1.0, step="sgd")
    sels, seeds = ("uniform", "dynamic-sampling"), (0, 1)
    st = _synthetic_real(_setting(levels, rounds=16), dyn, sels, seeds, gains=(0.9,))
    res = F.check(st, dyn, sels, seeds, fitted=sels)
    assert res["order_match"] and res["kendall_tau"] == 1.0
    assert res["ratios_in_ci"] == "1/1"
    for row in res["selectors"].values():
        assert row["sim_rollouts"] == pytest.approx(row["real_rollouts"])
    assert res["label"] == "SIMULATION"
    # a target no simulated run reaches: the simulation predicts neither order nor ratio
    never = F.check(st, dyn, sels, seeds, gain=0.9)
    assert never["kendall_tau"] == 0.0 and not never["order_match"]
    assert never["selectors"]["dynamic-sampling"]["speedup_in_real_ci"] is None


def test_calibrate_rate_recovers_the_transfer_rate():
    levels = ((0.5, 0.4, 4.0), (0.5, 0.7, 3.0))
    truth = F.Dynamics(transfer_lr=0.2, transfer_width=1.0, step="sgd")
    st = _synthetic_real(_setting(levels, rounds=10), truth, ("uniform",), (0,))
    got, err = F.calibrate_rate(st, F.Dynamics(transfer_lr=0.05), (0,))
    assert got.transfer_lr == pytest.approx(0.2, rel=0.05)
    assert (got.transfer_width, got.step) == (1.0, "sgd") and err < 1e-3
