"""Selectors: one interface, the selection table, determinism, epochs, dynamic sampling."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from insight.selection import registry
from insight.selection.configs import InsightConfig
from insight.selection.dapo import DynamicSamplingRound, filter_groups, truncate_kept
from insight.selection.mi import mutual_information
from insight.selection.posterior import PosteriorState
from insight.selection.registry import SelectorConfig, make_selector
from insight.selection.selectors import TABLE_SCHEMA, Selection, Selector

NAMES = list(registry.NAMES)


def population(n=40, seed=0) -> PosteriorState:
    rng = np.random.default_rng(seed)
    ids = [f"p{i:03d}" for i in range(n)]
    trials = rng.integers(0, 5, n) * 8
    s = rng.binomial(trials, rng.beta(0.7, 0.7, n))
    return PosteriorState.new(ids).observe(ids, s, trials)


def check_selection(sel: Selection, post: PosteriorState, batch: int, name: str):
    t = sel.table
    assert t.schema.equals(TABLE_SCHEMA)
    assert len(sel.prompt_ids) == min(batch, t.num_rows) == len(set(sel.prompt_ids))
    rank = np.asarray(t["rank"])
    assert sorted(rank) == list(range(1, t.num_rows + 1))
    selected = np.asarray(t["selected"])
    np.testing.assert_array_equal(selected, rank <= batch)
    ids = np.asarray(t["prompt_id"].to_pylist(), dtype=object)
    assert list(ids[np.argsort(rank)][:batch]) == sel.prompt_ids
    assert set(t["selector"].to_pylist()) == {name}
    idx = post.index_of(ids)
    np.testing.assert_array_equal(np.asarray(t["alpha"]), post.alpha[idx])
    np.testing.assert_array_equal(np.asarray(t["beta"]), post.beta[idx])
    np.testing.assert_allclose(np.asarray(t["mean"]), post.mean()[idx])
    np.testing.assert_allclose(np.asarray(t["mi"]), mutual_information(
        post.alpha[idx], post.beta[idx], 8), rtol=1e-12)
    # unselected ranks follow descending score
    score = np.asarray(t["score"])
    unsel = np.argsort(rank)[batch:]
    assert (np.diff(score[unsel]) <= 0).all()


@pytest.mark.parametrize("name", NAMES)
def test_every_selector_behind_one_interface(name):
    post = population()
    sel = make_selector(name)
    assert isinstance(sel, Selector) and sel.name == name
    out = sel.select(post, 6, 8, np.random.default_rng(1))
    check_selection(out, post, 6, name)
    again = make_selector(name).select(post, 6, 8, np.random.default_rng(1))
    assert again.prompt_ids == out.prompt_ids and again.table.equals(out.table)
    json.dumps(sel.state_dict())


def test_insight_topk_is_the_top_weighted_mi():
    post = population(60, seed=2)
    out = make_selector(InsightConfig()).select(post, 10, 8, np.random.default_rng(0))
    sc = registry.score("insight", post.alpha, post.beta, 8)
    best = set(post.prompt_ids[np.argsort(-sc)[:10]])
    assert set(out.prompt_ids) == best
    t = out.table
    np.testing.assert_allclose(np.asarray(t["score"]),
                               np.asarray(t["weight"]) * np.asarray(t["mi"]))
    ranks = np.asarray(t["rank"])
    assert np.asarray(t["score"])[np.argsort(ranks)][:10].tolist() == sorted(
        np.asarray(t["score"]).tolist(), reverse=True)[:10]


def test_ties_break_by_the_seeded_rng():
    post = PosteriorState.new([f"x{i}" for i in range(30)])   # all equal scores
    sel = make_selector("insight")
    picks = [tuple(sel.select(post, 5, 4, np.random.default_rng(s)).prompt_ids) for s in range(6)]
    assert len(set(picks)) > 1
    assert picks[0] == tuple(sel.select(post, 5, 4, np.random.default_rng(0)).prompt_ids)


def test_mopps_takes_the_b_draws_closest_to_tau():
    post = population(50, seed=4)
    rng = np.random.default_rng(9)
    out = make_selector({"type": "mopps", "tau": 0.4}).select(post, 7, 8, rng)
    p = np.random.default_rng(9).beta(post.alpha, post.beta)   # same order of draws
    want = set(post.prompt_ids[np.argsort((p - 0.4) ** 2, kind="stable")[:7]])
    assert set(out.prompt_ids) == want
    assert out.table["weight"].null_count == out.table.num_rows


def test_pool_ratio_and_exclude():
    post = population(100)
    sel = make_selector({"type": "insight", "pool_ratio": 2.5})
    out = sel.select(post, 8, 8, np.random.default_rng(3), exclude={"p000", "p001", "nope"})
    assert out.table.num_rows == math.ceil(2.5 * 8)
    assert not {"p000", "p001"} & set(out.table["prompt_id"].to_pylist())
    full = make_selector("mi").select(post, 8, 8, np.random.default_rng(3), exclude={"p005"})
    assert full.table.num_rows == 99


def test_softmax_sampling_temperature():
    rng = np.random.default_rng(5)   # continuous posteriors: no tied scores
    post = PosteriorState([f"p{i:03d}" for i in range(40)], rng.uniform(0.5, 30, 40),
                          rng.uniform(0.5, 30, 40))
    topk = make_selector("insight").select(post, 5, 8, np.random.default_rng(0))
    cold = make_selector({"type": "insight", "sampling": "softmax", "temperature": 1e-9})
    assert cold.select(post, 5, 8, np.random.default_rng(0)).prompt_ids == topk.prompt_ids
    hot = make_selector({"type": "insight", "sampling": "softmax", "temperature": 1e9})
    counts = {}
    for s in range(200):
        for p in hot.select(post, 5, 8, np.random.default_rng(s)).prompt_ids:
            counts[p] = counts.get(p, 0) + 1
    assert len(counts) == 40        # near-uniform: every prompt drawn at some point
    out = hot.select(post, 5, 8, np.random.default_rng(1))
    check_selection(out, post, 5, "insight")


def test_uniform_epochs_cover_every_prompt_once_and_resume_exactly():
    post = population(23)
    sel = make_selector("uniform")
    seen, epochs = [], []
    for r in range(12):
        out = sel.select(post, 4, 8, np.random.default_rng(r))
        sel.observe(out.prompt_ids, np.zeros(4), np.full(4, 8))
        seen.extend(out.prompt_ids)
        epochs.append(sel.epoch)
    first = seen[:23]
    assert sorted(first) == sorted(post.prompt_ids.tolist())      # one epoch, no repeat
    assert sorted(seen[23:46]) == sorted(post.prompt_ids.tolist())
    assert epochs[5] == 1 and epochs[11] == 2
    # resume from a saved state reproduces the uninterrupted run
    a = make_selector("uniform")
    b = make_selector("uniform")
    for r in range(4):
        out = a.select(post, 4, 8, np.random.default_rng(r))
        a.observe(out.prompt_ids, np.zeros(4), np.full(4, 8))
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for r in range(4, 9):
        oa = a.select(post, 4, 8, np.random.default_rng(r))
        ob = b.select(post, 4, 8, np.random.default_rng(r))
        assert oa.prompt_ids == ob.prompt_ids and oa.table.equals(ob.table)
        a.observe(oa.prompt_ids, np.zeros(4), np.full(4, 8))
        b.observe(ob.prompt_ids, np.zeros(4), np.full(4, 8))
    with pytest.raises(ValueError, match="not 'uniform'"):
        make_selector("uniform").load_state_dict({"type": "mopps"})


def test_dynamic_sampling_round_accounting():
    post = population(40)
    sel = make_selector({"type": "dynamic-sampling", "max_num_gen_batches": 3,
                         "gen_batch_ratio": 1.5})
    rnd = DynamicSamplingRound(batch_size=6, max_num_gen_batches=3)
    drawn: set[str] = set()
    rng = np.random.default_rng(0)
    outcomes = np.random.default_rng(1)
    while rnd.wants_more():
        out = sel.select(post, 6, 8, rng, exclude=drawn)
        assert len(out.prompt_ids) == 9 and not drawn & set(out.prompt_ids)
        drawn |= set(out.prompt_ids)
        s = outcomes.choice([0, 3, 8], size=9, p=[0.4, 0.3, 0.3])
        keep = rnd.add(out.prompt_ids, s, np.full(9, 8))
        assert keep.sum() <= 6
    summary = rnd.summary()
    assert summary["groups_kept"] == len(rnd.kept_ids) <= 6
    assert summary["rollouts_generated"] == 8 * summary["groups_generated"]
    assert summary["extra_rollouts"] == summary["rollouts_generated"] - 8 * summary["groups_kept"]
    assert summary["gen_batches"] <= 3


def test_filter_groups_and_truncation():
    np.testing.assert_array_equal(filter_groups([0, 1, 7, 8, 2.5], [8, 8, 8, 8, 8]),
                                  [False, True, True, False, True])
    np.testing.assert_array_equal(truncate_kept([True, False, True, True], 2),
                                  [True, False, True, False])
    keep = np.array([True, True, False, True])
    np.testing.assert_array_equal(truncate_kept(keep, 0), [False] * 4)
    np.testing.assert_array_equal(truncate_kept(keep, -3), [False] * 4)   # over-full: none
    np.testing.assert_array_equal(truncate_kept(keep, 10), keep)
    assert keep.tolist() == [True, True, False, True]                    # input untouched
    with pytest.raises(ValueError, match="successes must lie in"):
        filter_groups([9], [8])


def test_configs_union_strictness_and_docs():
    adapter = TypeAdapter(SelectorConfig)
    for name in NAMES:
        cfg = adapter.validate_python({"type": name})
        assert cfg.type == name
        for fname, field in type(cfg).model_fields.items():
            assert field.description, f"{type(cfg).__name__}.{fname} lacks a description"
    with pytest.raises(ValidationError):
        adapter.validate_python({"type": "insight", "gama": 2})
    with pytest.raises(ValidationError):
        adapter.validate_python({"type": "mi", "gamma": 2})
    with pytest.raises(ValidationError):
        adapter.validate_python({"type": "insight", "pool_ratio": 0.5})
    with pytest.raises(ValidationError):
        adapter.validate_python({"type": "random"})


def test_select_rejects_bad_arguments():
    post = population(10)
    sel = make_selector("insight")
    with pytest.raises(ValueError, match="batch_size"):
        sel.select(post, 0, 8, np.random.default_rng(0))
    with pytest.raises(ValueError, match="k must be"):
        sel.select(post, 2, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        sel.select(post, 2, 8, None)


@given(n=st.integers(1, 30), batch=st.integers(1, 12), seed=st.integers(0, 2**32 - 1),
       name=st.sampled_from(NAMES), pool=st.sampled_from([None, 1.0, 3.0]),
       sampling=st.sampled_from(["topk", "softmax"]))
@settings(max_examples=60, deadline=None)
def test_selection_invariants_hypothesis(n, batch, seed, name, pool, sampling):
    post = population(n, seed=seed % 1000)
    cfg = {"type": name}
    if name not in ("uniform", "dynamic-sampling"):
        cfg.update(pool_ratio=pool, sampling=sampling, temperature=0.05)
    out = make_selector(cfg).select(post, batch, 8, np.random.default_rng(seed))
    check_selection(out, post, batch, name)
    assert set(out.prompt_ids) <= set(post.prompt_ids.tolist())
