"""Priors that generalise across prompts, forgetting by age, and the exploit term
(issue 12, item 3): each checked against a brute-force or closed-form computation, and
each an option whose default leaves the selection exactly as before."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import betabinom

from insight.config import config_from_dict
from insight.selection import registry
from insight.selection.forgetting import age_weights, decayed_counts, decayed_view
from insight.selection.group_prior import fit_grouped_priors
from insight.selection.posterior import PosteriorState
from insight.selection.prior import fit_beta_binomial, with_fitted_prior_for_unseen
from insight.selection.scores import mixed_probability
from insight.selection.views import selection_view


# ------------------------------------------------------------------ P(0 < s < k)
@pytest.mark.parametrize("a,b,k", [(1.0, 1.0, 8), (5.0, 5.0, 8), (1.0, 9.0, 8),
                                   (0.3, 0.4, 4), (40.0, 2.0, 16), (2.0, 3.0, 1)])
def test_mixed_probability_is_the_beta_binomial_mass_strictly_inside(a, b, k):
    brute = sum(betabinom.pmf(s, k, a, b) for s in range(1, k))
    assert mixed_probability(a, b, k) == pytest.approx(brute, abs=1e-12)


def test_mixed_probability_ranks_a_known_mid_prompt_above_an_unseen_one():
    # unseen Beta(1,1): 1 - 2/(k+1) = 7/9; a prompt measured 4/8 is more surely mixed,
    # one measured 0/8 is likely to fail again
    got = mixed_probability(np.array([1.0, 5.0, 1.0]), np.array([1.0, 5.0, 9.0]), 8)
    assert got[0] == pytest.approx(7 / 9)
    assert got[1] > got[0] > 0.5 > got[2]


def test_insight_objective_mi_is_the_paper_score_and_the_default():
    a, b = np.array([1.0, 5.0, 1.0, 3.0]), np.array([1.0, 5.0, 9.0, 2.0])
    default = registry.score("insight", a, b, 8)
    explicit = registry.score("insight", a, b, 8, objective="mi")
    np.testing.assert_array_equal(default, explicit)
    comp = registry.score_components("insight", a, b, 8)
    np.testing.assert_array_equal(default, comp["weight"] * comp["mi"])


def test_insight_objective_mixed_and_the_weighted_sum():
    a, b = np.array([1.0, 5.0, 1.0]), np.array([1.0, 5.0, 9.0])
    mixed = registry.score("insight", a, b, 8, objective="mixed")
    np.testing.assert_allclose(mixed, mixed_probability(a, b, 8))
    comp = registry.score_components("insight", a, b, 8)
    both = registry.score("insight", a, b, 8, objective="mi+mixed", mixed_weight=3.0)
    np.testing.assert_allclose(both, comp["weight"] * comp["mi"] + 3.0 * mixed)
    # the point of the trade-off: weight 3 lets a known 4/8 prompt outrank an unseen one,
    # which the paper's score never does
    assert registry.score("insight", a, b, 8)[0] > registry.score("insight", a, b, 8)[1]
    assert both[1] > both[0]


def test_bad_objective_values_are_refused_in_one_line():
    with pytest.raises(ValueError, match="objective must be one of"):
        registry.score("insight", [1.0], [1.0], 8, objective="greedy")
    with pytest.raises(ValueError, match="mixed_weight must be"):
        registry.score("insight", [1.0], [1.0], 8, mixed_weight=-1.0)


# ------------------------------------------------------------------ grouped prior
def _draw_groups(rng, means, per_group, k=8, kappa=4.0):
    s, t, g = [], [], []
    for label, m in enumerate(means):
        p = rng.beta(m * kappa, (1 - m) * kappa, per_group)
        s += list(rng.binomial(k, p))
        t += [k] * per_group
        g += [label] * per_group
    return np.array(s, float), np.array(t, float), np.array(g)


def test_each_group_prior_follows_its_own_level_given_enough_prompts():
    rng = np.random.default_rng(0)
    s, t, g = _draw_groups(rng, [0.1, 0.5, 0.9], per_group=400)
    fit = fit_grouped_priors(s, t, g, shrinkage=20.0)
    means = [fit.groups[str(i)].mean for i in range(3)]
    np.testing.assert_allclose(means, [0.1, 0.5, 0.9], atol=0.04)
    assert fit.population.mean == pytest.approx(0.5, abs=0.04)
    assert fit.alpha[g == 0][0] == fit.groups["0"].a0


def test_no_shrinkage_is_the_group_s_own_ml_fit_and_heavy_shrinkage_the_population():
    rng = np.random.default_rng(1)
    s, t, g = _draw_groups(rng, [0.2, 0.8], per_group=60)
    own = fit_beta_binomial(s[g == 0], t[g == 0])
    free = fit_grouped_priors(s, t, g, shrinkage=0.0).groups["0"]
    assert (free.a0, free.b0) == pytest.approx((own.a0, own.b0), rel=1e-4)
    heavy = fit_grouped_priors(s, t, g, shrinkage=1e6)
    pop = heavy.population
    for grp in heavy.groups.values():
        assert grp.mean == pytest.approx(pop.mean, abs=2e-3)
    # and shrinkage moves a group monotonically toward the population
    mid = fit_grouped_priors(s, t, g, shrinkage=60.0).groups["0"]
    assert own.mean < mid.mean < pop.mean


def test_a_group_with_no_observed_prompt_gets_the_population_prior():
    s = np.array([0, 8, 4, 2, 0, 0], float)
    t = np.array([8, 8, 8, 8, 0, 0], float)
    g = np.array(["a", "a", "b", "b", "c", "c"], dtype=object)
    fit = fit_grouped_priors(s, t, g)
    assert fit.groups["c"].n_observed == 0
    assert (fit.alpha[4], fit.beta[4]) == (fit.population.a0, fit.population.b0)
    assert fit.summary()["c"][2:] == [2, 0]


def test_with_fewer_than_two_observed_prompts_every_prompt_keeps_the_fallback():
    fit = fit_grouped_priors([3.0, 0.0], [8.0, 0.0], ["a", "b"], fallback=(2.0, 3.0))
    np.testing.assert_array_equal(fit.alpha, [2.0, 2.0])
    np.testing.assert_array_equal(fit.beta, [3.0, 3.0])


# ------------------------------------------------------------------ forgetting
def test_decayed_counts_are_the_age_weighted_sums():
    pos = np.array([0, 1, 0, 2, 0])
    rnd = np.array([1, 1, 3, 4, 5])
    s, n = np.array([2, 8, 5, 0, 1.0]), np.array([8, 8, 8, 8, 8.0])
    ds, dn = decayed_counts(pos, rnd, s, n, size=4, now=5, half_life=2.0)
    w = 0.5 ** ((5 - rnd) / 2.0)
    brute_s = [sum(w[j] * s[j] for j in range(5) if pos[j] == i) for i in range(4)]
    brute_n = [sum(w[j] * n[j] for j in range(5) if pos[j] == i) for i in range(4)]
    np.testing.assert_allclose(ds, brute_s)
    np.testing.assert_allclose(dn, brute_n)
    assert age_weights([5, 3], 5, 2.0).tolist() == [1.0, 0.5]


def test_evidence_from_a_later_round_cannot_enter_a_view():
    with pytest.raises(ValueError, match="after round 3"):
        age_weights([4], 3, 2.0)


def test_the_decayed_view_is_the_prior_plus_the_decayed_evidence():
    state = PosteriorState.new(["a", "b"])
    view = decayed_view(state, [1.0, 2.0], [1.0, 3.0], [1.5, 0.0], [4.0, 0.0])
    np.testing.assert_allclose(view.alpha, [2.5, 2.0])
    np.testing.assert_allclose(view.beta, [3.5, 3.0])


# ------------------------------------------------------------------ the view
def _state_and_counts():
    ids = np.array([f"p{i}" for i in range(6)], dtype=object)
    s = np.array([0, 8, 4, 1, 0, 0], float)
    t = np.array([8, 8, 8, 8, 0, 0], float)
    post = PosteriorState.new(ids).observe(ids[:4], s[:4], t[:4])
    return post, s, t


def test_the_fixed_and_empirical_bayes_views_are_today_s_rules():
    post, s, t = _state_and_counts()
    assert selection_view(post, prior="fixed", successes=s, trials=t).posterior is post
    eb = selection_view(post, prior="empirical-bayes", successes=s, trials=t).posterior
    assert eb.equals(with_fitted_prior_for_unseen(post, s, t))


def test_the_grouped_view_gives_unseen_prompts_their_group_prior_and_keeps_the_rest():
    post, s, t = _state_and_counts()
    groups = np.array(["easy", "easy", "hard", "hard", "easy", "hard"], dtype=object)
    view = selection_view(post, prior="grouped-empirical-bayes", successes=s, trials=t,
                          groups=groups)
    fit = fit_grouped_priors(s, t, groups)
    np.testing.assert_array_equal(view.posterior.alpha[:4], post.alpha[:4])
    assert view.posterior.alpha[4] == fit.groups["easy"].a0
    assert view.posterior.beta[5] == fit.groups["hard"].b0
    assert set(view.priors) == {"easy", "hard"}


def test_the_forgetting_view_rebuilds_every_prompt_from_its_prior():
    post, s, t = _state_and_counts()
    view = selection_view(post, prior="fixed", successes=s, trials=t,
                          decayed=(s * 0.5, t * 0.5)).posterior
    np.testing.assert_allclose(view.alpha, 1.0 + s * 0.5)
    np.testing.assert_allclose(view.beta, 1.0 + (t - s) * 0.5)


# ------------------------------------------------------------------ config
def test_the_options_round_trip_through_the_run_config():
    cfg = config_from_dict({
        "data": {"type": "arithmetic", "group_field": "difficulty"},
        "posterior": {"prior": "grouped-empirical-bayes", "group_shrinkage": 5,
                      "half_life": 8},
        "selector": {"type": "insight", "objective": "mi+mixed", "mixed_weight": 2.5}})
    again = config_from_dict(cfg.model_dump(mode="json"))
    assert again == cfg
    assert (again.posterior.half_life, again.selector.objective) == (8.0, "mi+mixed")


def test_the_defaults_are_today_s_behaviour():
    cfg = config_from_dict({})
    assert (cfg.posterior.prior, cfg.posterior.half_life, cfg.data.group_field) == \
        ("fixed", None, None)
    assert (cfg.selector.objective, cfg.selector.mixed_weight) == ("mi", 1.0)


@pytest.mark.parametrize("over,msg", [
    ({"posterior": {"prior": "grouped-empirical-bayes"}}, "needs data.group_field"),
    ({"posterior": {"half_life": 5, "lam": 0.9}}, "set lam: 1"),
    ({"data": {"type": "arithmetic", "group_field": "tags"}}, "group_field"),
])
def test_inconsistent_options_are_refused_naming_the_field(over, msg):
    with pytest.raises(ValueError, match=msg):
        config_from_dict(over)


# ------------------------------------------------------------------ a run and the simulator
@pytest.mark.slow
def test_a_three_round_tiny_run_with_every_option_scores_the_view_it_says(tmp_path):
    """grouped prior + forgetting + mi+mixed through the real pipeline: round 3's
    candidates are scored on the view (every prompt at its group's prior plus its
    evidence, round 1's halved), while the stored posterior keeps the full counts. The
    stages are driven directly (no Prefect), on the shipped warm-started policy."""
    import duckdb

    from insight.record.run import open_or_create_run
    from tests.test_e2e import tiny_config
    from tests.test_round import SHIPPED_POLICY
    from tests.test_trainer_state import run_rounds

    cfg = config_from_dict(tiny_config(
        SHIPPED_POLICY, rounds=3, tracking={"enabled": False},
        eval={"every": 100, "n_samples": 1},
        data={"group_field": "difficulty"},
        posterior={"prior": "grouped-empirical-bayes", "half_life": 1.0},
        selector={"type": "insight", "objective": "mi+mixed", "mixed_weight": 2.0}))
    run = open_or_create_run(tmp_path / "run", cfg)
    run_rounds(run, [1, 2, 3])
    con = duckdb.connect(str(run.run_dir / "insight.duckdb"), read_only=True)
    try:
        hist = con.execute("SELECT prompt_id, round, sum(success::INT), count(*) FROM rollouts "
                           "WHERE round < 3 GROUP BY 1, 2").fetchall()
        sel3 = {r[0]: (r[1], r[2]) for r in con.execute(
            "SELECT prompt_id, alpha, beta FROM selections WHERE round = 3").fetchall()}
        post1, post2 = ({r[0]: (r[1], r[2]) for r in con.execute(
            "SELECT prompt_id, alpha, beta FROM posteriors WHERE round = ?", [r]).fetchall()}
            for r in (1, 2))
        groups = dict(con.execute("SELECT prompt_id, CAST(difficulty AS VARCHAR) FROM prompts "
                                  "WHERE split = 'train'").fetchall())
        committed = con.execute("SELECT count(*) FROM rounds WHERE status = 'committed'"
                                ).fetchone()[0]
    finally:
        con.close()
    assert committed == 4 and len(sel3) == 24
    ids = sorted(groups)
    where = {p: i for i, p in enumerate(ids)}
    s, t, ds, dn = (np.zeros(len(ids)) for _ in range(4))
    for pid, rnd, succ, n in hist:
        w = 0.5 ** (2 - rnd)                       # now = round 2, half-life 1 round
        s[where[pid]] += succ
        t[where[pid]] += n
        ds[where[pid]] += w * succ
        dn[where[pid]] += w * n
    fit = fit_grouped_priors(ds, dn, [groups[p] for p in ids], shrinkage=20.0)
    for pid, i in where.items():
        assert sel3[pid] == pytest.approx((fit.alpha[i] + ds[i], fit.beta[i] + dn[i] - ds[i]))
    # the stored posterior takes every count in full: round 2's update adds round 2's
    # outcomes to round 1's posterior, with no decay
    r2 = {pid: (succ, n) for pid, rnd, succ, n in hist if rnd == 2}
    for pid in {pid for pid, rnd, *_ in hist if rnd == 1}:
        (a1, b1), (succ, n) = post1[pid], r2.get(pid, (0, 0))
        assert post2[pid] == pytest.approx((a1 + succ, b1 + n - succ))


def test_the_simulator_runs_the_options_and_labels_leave_the_world_unchanged():
    from insight.report.simulate import SimConfig, Variant, run_simulation

    sim = SimConfig(n_prompts=256, n_heldout=128, batch_size=16, budget=1280, n_groups=4)
    plain = run_simulation(SimConfig(n_prompts=256, n_heldout=128, batch_size=16,
                                     budget=1280), Variant({"type": "insight"}), 0)
    labelled = run_simulation(sim, Variant({"type": "insight"}), 0)
    assert plain["curves"] == labelled["curves"]        # labels are a stream of their own
    opts = run_simulation(sim, Variant(
        {"type": "insight", "objective": "mi+mixed", "mixed_weight": 3.0},
        {"prior": "grouped-empirical-bayes", "half_life": 5.0}), 0)
    assert opts["summary"]["rounds"] == 10
    # exploiting known informative prompts: fewer distinct prompts than rounds x B
    assert opts["summary"]["prompts_touched"] < plain["summary"]["prompts_touched"]
    with pytest.raises(ValueError, match="n_groups"):
        run_simulation(SimConfig(n_prompts=64, batch_size=8, budget=64),
                       Variant({"type": "insight"}, {"prior": "grouped-empirical-bayes"}), 0)


# ------------------------------------------------------------------ feature prior
def test_the_knn_prior_is_the_trial_weighted_rate_of_the_nearest_observed_others():
    from insight.selection.feature_prior import knn_prior

    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 3))
    t = np.where(rng.random(40) < 0.6, 8.0, 0.0)
    t[:3] = [4.0, 16.0, 8.0]
    s = np.floor(rng.random(40) * (t + 1))
    a, b = knn_prior(x, s, t, neighbours=5, strength=4.0)
    z = (x - x.mean(0)) / x.std(0)
    for i in range(40):
        others = [j for j in np.flatnonzero(t > 0) if j != i]
        near = sorted(others, key=lambda j: ((z[j] - z[i]) ** 2).sum())[:5]
        rate = np.array([(s[j] + 0.5) / (t[j] + 1) for j in near])
        m = float(np.clip(np.dot(t[near], rate) / t[near].sum(), 0.005, 0.995))
        assert (a[i], b[i]) == pytest.approx((4.0 * m, 4.0 * (1 - m)))


def test_the_feature_prior_is_capped_so_a_prompt_s_own_group_dominates():
    post, s, t = _state_and_counts()
    feats = np.arange(6.0)[:, None]
    view = selection_view(post, prior="feature-knn", successes=s, trials=t,
                          features=feats, neighbours=2, strength=4.0).posterior
    prior_n = 4.0
    np.testing.assert_allclose(view.alpha + view.beta, prior_n + t)
    # p1 succeeded 8/8: its own evidence (8) outweighs a prior of 4 pseudo-rollouts
    assert view.mean()[1] > 8 / 12 - 1e-9


def test_prompt_embeddings_are_the_masked_mean_of_the_last_hidden_layer():
    import torch

    from insight.policy.embeddings import prompt_embeddings
    from insight.policy.model import build_tiny_policy

    model, tok = build_tiny_policy(seed=0)
    texts = ["12+7=", "3-1=", "100+250="]
    got = prompt_embeddings(model, tok, texts, batch_size=2)
    assert got.shape[0] == 3 and np.isfinite(got).all()
    for i, text in enumerate(texts):
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            h = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
        np.testing.assert_allclose(got[i], h.mean(0).double().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_tiny_run_with_the_feature_prior_caches_features_and_scores_prior_plus_evidence(
        tmp_path):
    import duckdb

    from insight.record import layout
    from insight.record.run import open_or_create_run
    from insight.selection.feature_prior import knn_prior
    from tests.test_e2e import tiny_config
    from tests.test_round import SHIPPED_POLICY
    from tests.test_trainer_state import run_rounds

    cfg = config_from_dict(tiny_config(
        SHIPPED_POLICY, rounds=2, tracking={"enabled": False},
        eval={"every": 100, "n_samples": 1},
        posterior={"prior": "feature-knn", "knn_neighbours": 3}))
    run = open_or_create_run(tmp_path / "run", cfg)
    run_rounds(run, [1, 2])
    cache = layout.features_path(run.run_dir, 1)
    assert cache.is_file() and layout.features_path(run.run_dir, 0).is_file()
    with np.load(cache) as z:
        ids, feats = z["prompt_ids"].astype(object), z["features"]
    con = duckdb.connect(str(run.run_dir / "insight.duckdb"), read_only=True)
    try:
        counts = dict((p, (s_, n_)) for p, s_, n_ in con.execute(
            "SELECT prompt_id, sum(success::INT), count(*) FROM rollouts WHERE round = 1 "
            "GROUP BY 1").fetchall())
        sel2 = {r[0]: (r[1], r[2]) for r in con.execute(
            "SELECT prompt_id, alpha, beta FROM selections WHERE round = 2").fetchall()}
    finally:
        con.close()
    s = np.array([counts.get(p, (0, 0))[0] for p in ids], float)
    t = np.array([counts.get(p, (0, 0))[1] for p in ids], float)
    a, b = knn_prior(feats, s, t, neighbours=3, strength=4.0)
    for i, pid in enumerate(ids):
        assert sel2[pid] == pytest.approx((a[i] + s[i], b[i] + t[i] - s[i]))


def test_the_simulate_command_takes_the_new_flags_and_refuses_groups_it_lacks(tmp_path,
                                                                              capsys):
    import argparse

    from flows import cli_simulate

    parser = argparse.ArgumentParser()
    cli_simulate.add_simulate_arguments(parser)
    small = ["--out", str(tmp_path), "--selectors", "insight", "--seeds", "1",
             "--workers", "1", "--n-prompts", "64", "--n-heldout", "32", "--batch-size",
             "8", "--k", "4", "--budget", "256"]
    args = parser.parse_args(small + ["--n-groups", "3", "--prior",
                                      "grouped-empirical-bayes,feature-knn",
                                      "--half-life", "none,5", "--objective", "mi+mixed",
                                      "--mixed-weight", "2"])
    assert cli_simulate.run_simulate(args) == 0
    out = capsys.readouterr().out
    assert "half_life=5" in out and "prior=feature-knn" in out and "objective=mi+mixed" in out
    bad = parser.parse_args(small + ["--prior", "grouped-empirical-bayes"])
    assert cli_simulate.run_simulate(bad) == 2
    assert "--n-groups" in capsys.readouterr().err
