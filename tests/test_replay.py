"""Replay and the compact record: a recorded round can be re-scored from the posterior
before it, exactly.

Two real 3-round runs of the shipped tiny policy, same seed: one with the full record,
one compact (`record.candidates: selected`, `posterior_snapshot_every: 2`). Replaying a
run with its own selector reproduces its picks; another selector picks otherwise; the
compact run stores far fewer rows and the audit answers exactly as on the full one.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import betabinom

from flows.cli import main as cli_main
from insight.config import RunConfig, config_from_dict
from insight.record import compact
from insight.record.run import open_or_create_run
from insight.record.store import RunStore
from insight.report import audit
from insight.report.replay import mixed_group_probability, replay
from tests.test_e2e import B, K, N_TRAIN, tiny_config
from tests.test_round import SHIPPED_POLICY, _run_round

ROUNDS = 3
COMPACT = {"candidates": "selected", "posterior_snapshot_every": 2}


def _build(run_dir, **over):
    from insight import stages
    cfg = config_from_dict(tiny_config(SHIPPED_POLICY, seed=4, rounds=ROUNDS,
                                       eval={"every": 5}, tracking={"enabled": False}, **over))
    run = open_or_create_run(run_dir, cfg)
    stages.initial_round(run)
    for r in range(1, ROUNDS + 1):
        _run_round(run, r)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay")
    return _build(root / "full"), _build(root / "compact", record=COMPACT)


def _count(run, sql):
    with RunStore(run.run_dir, read_only=True) as db:
        return db.scalar(sql)


# --- replay --------------------------------------------------------------------------
def test_replay_with_the_runs_own_selector_reproduces_every_recorded_pick(runs):
    full, _ = runs
    result = replay(full.run_dir, "insight")
    assert [r["round"] for r in result["rounds"]] == [1, 2, 3]
    for row in result["rounds"]:
        assert row["overlap"] == row["n_picked"] == row["n_replayed"] == B
        assert row["replayed"] == row["picked"]          # same prompts, same order
        assert row["expected_informative_replayed"] == row["expected_informative_picked"]
    assert result["summary"]["identical_rounds"] == ROUNDS
    with RunStore(full.run_dir, read_only=True) as db:
        assert result["rounds"][1]["picked"] == db.selected_prompts(full.run_id, 2)


def test_another_selector_picks_another_set_scored_under_the_same_posterior(runs):
    full, _ = runs
    result = replay(full.run_dir, "uniform")
    assert result["summary"]["overlap_share"] < 1
    assert any(r["replayed"] != r["picked"] for r in result["rounds"])
    assert all(len(set(r["replayed"])) == B for r in result["rounds"])
    # a weight that targets hard prompts differs too, through --set's field
    tuned = replay(full.run_dir, "insight", {"weight": "gaussian", "tau": 0.1, "sigma": 0.05})
    assert tuned["selector"]["tau"] == 0.1
    assert tuned["summary"]["identical_rounds"] < ROUNDS


def test_replay_reads_a_compact_record_as_it_reads_the_full_one(runs):
    full, small = runs
    a, b = replay(full.run_dir, "mopps"), replay(small.run_dir, "mopps")
    for key in ("rounds", "summary"):
        assert a[key] == b[key]


def test_the_replay_command_prints_json_with_a_documented_shape(runs, capsys):
    full, _ = runs
    assert cli_main(["replay", "--run-dir", str(full.run_dir), "--selector", "mopps",
                     "--set", "selector.tau=0.3", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"run_dir", "run_id", "run_selector", "selector", "batch_size", "k",
                        "rounds", "summary"}
    assert out["selector"] == {"type": "mopps", "tau": 0.3, "pool_ratio": None,
                               "sampling": "topk", "temperature": 1.0}
    assert (out["batch_size"], out["k"]) == (B, K)
    row = out["rounds"][0]
    assert set(row) == {"round", "n_picked", "n_replayed", "overlap", "picked", "replayed",
                        "expected_informative_picked", "expected_informative_replayed",
                        "observed_informative_picked", "refill_picks"}
    assert 0 <= row["overlap"] <= B and 0 <= row["observed_informative_picked"] <= B
    assert set(out["summary"]) >= {"rounds", "mean_overlap", "overlap_share",
                                   "expected_informative_picked",
                                   "expected_informative_replayed",
                                   "expected_informative_ratio"}


def test_a_bad_selector_field_is_one_line(runs, capsys):
    full, _ = runs
    assert cli_main(["replay", "--run-dir", str(full.run_dir), "--selector", "insight",
                     "--set", "selector.gamma=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "gamma" in err
    assert cli_main(["replay", "--run-dir", str(full.run_dir), "--selector", "nope"]) == 2
    assert "unknown selector 'nope'" in capsys.readouterr().err


def test_the_informative_group_probability_is_the_beta_binomial_mass_of_0_lt_s_lt_k():
    a, b, k = np.array([1.0, 0.5, 20.0, 3.0]), np.array([1.0, 0.5, 1.0, 9.0]), 8
    want = [1 - betabinom.pmf(0, k, x, y) - betabinom.pmf(k, k, x, y) for x, y in zip(a, b)]
    np.testing.assert_allclose(mixed_group_probability(a, b, k), want, rtol=1e-10)
    assert mixed_group_probability(a, b, 1).tolist() == [0.0] * 4  # one rollout never mixes


# --- the compact record ------------------------------------------------------------------
def test_the_compact_record_stores_the_selected_rows_and_posterior_deltas(runs):
    full, small = runs
    assert _count(full, "SELECT count(*) FROM selections") == ROUNDS * N_TRAIN
    assert _count(small, "SELECT count(*) FROM selections") == ROUNDS * B
    assert _count(small, "SELECT bool_and(selected) FROM selections")
    # rounds 0 and 2 are snapshots; rounds 1 and 3 store at most the B prompts they observed
    per_round = dict(_rows(small, "SELECT round, count(*) FROM posteriors GROUP BY round"))
    assert per_round[0] == per_round[2] == N_TRAIN
    assert 0 < per_round[1] <= B and 0 < per_round[3] <= B


def _rows(run, sql):
    with RunStore(run.run_dir, read_only=True) as db:
        return db.con.execute(sql).fetchall()


def test_the_reconstructed_posterior_is_the_full_records_bit_for_bit(runs):
    full, small = runs
    for r in range(ROUNDS + 1):
        with RunStore(full.run_dir, read_only=True) as a, \
                RunStore(small.run_dir, read_only=True) as b:
            assert a.posterior_snapshot(full.run_id, r).equals(
                b.posterior_snapshot(small.run_id, r, every=2)), r


def test_both_records_draw_the_same_batches(runs):
    full, small = runs
    with RunStore(full.run_dir, read_only=True) as a, RunStore(small.run_dir, read_only=True) as b:
        for r in range(1, ROUNDS + 1):
            assert a.selected_prompts(full.run_id, r) == b.selected_prompts(small.run_id, r)


def test_the_audit_answers_the_same_in_both_modes(runs):
    full, small = runs
    for r in range(1, ROUNDS + 1):
        a, b = audit.round_candidates(full.run_dir, r), audit.round_candidates(small.run_dir, r)
        assert a.num_rows == N_TRAIN and a.equals(b), r
    for pid in audit.round_candidates(full.run_dir, 2)["prompt_id"].to_pylist()[::6]:
        a, b = audit.prompt_history(full.run_dir, pid), audit.prompt_history(small.run_dir, pid)
        a.pop("run_dir"), b.pop("run_dir")
        assert a.pop("rounds").equals(b.pop("rounds")) and a == b, pid
    assert audit.never_selected(full.run_dir).equals(audit.never_selected(small.run_dir))


def test_a_recomputed_round_that_disagrees_with_its_record_is_refused(runs, tmp_path):
    """Another selector version would recompute other rows: the audit says so instead of
    listing candidates the run never saw."""
    import shutil
    _, small = runs
    copy = tmp_path / "run"
    shutil.copytree(small.run_dir, copy)
    path = copy / "parquet" / "round_00002" / "selections.parquet"
    t = pq.read_table(path)
    scores = t["score"].to_numpy().copy()
    scores[0] += 1e-9
    pq.write_table(t.set_column(t.schema.get_field_index("score"), "score",
                                        pa.array(scores)), path)
    with pytest.raises(ValueError, match="recomputed ranking differs from the record"):
        audit.round_candidates(copy, 2)


def test_the_default_record_is_todays_and_keeps_older_runs_identity():
    cfg = RunConfig()
    assert cfg.record.candidates == "all" and cfg.record.posterior_snapshot_every == 1
    dumped = json.loads(cfg.model_dump_json())
    dumped.pop("record")
    # a run created before the section existed has the same identity hash
    assert config_from_dict(dumped).identity_hash() == cfg.identity_hash()
    assert config_from_dict({"record": COMPACT}).identity_hash() != cfg.identity_hash()
    with pytest.raises(ValueError, match="record.candidates"):
        config_from_dict({"record": {"candidates": "some"}})


def test_snapshot_rounds_and_deltas():
    assert [compact.snapshot_round(r, 50) for r in (0, 1, 49, 50, 99, 100)] == \
        [0, 0, 0, 50, 50, 100]
    from insight.selection.posterior import PosteriorState
    ids = np.array(["a", "b", "c"], dtype=object)
    before = PosteriorState(ids, np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 1.0]))
    after = before.observe(np.array(["b"], dtype=object), [1.0], [2.0])
    rec = RunConfig(record=COMPACT).record
    delta = compact.posterior_rows_to_store(after, before, 3, rec)
    assert delta.prompt_ids.tolist() == ["b"]
    assert len(compact.posterior_rows_to_store(after, before, 4, rec)) == 3  # a snapshot
    back = compact.overwrite(before, delta.to_arrow())
    assert back.equals(after)


def test_the_compact_selection_rows_are_the_selected_and_the_margin_below_the_cut():
    t = pa.table({"prompt_id": list("abcdef"), "selected": [True, False, True, False, False,
                                                             False],
                  "rank": pa.array([1, 3, 2, 4, 6, 5], pa.int32())})
    rec = RunConfig(record=COMPACT).record
    assert compact.selection_rows_to_store(t, rec)["prompt_id"].to_pylist() == ["a", "c"]
    wider = RunConfig(record={**COMPACT, "candidates_margin": 2}).record
    assert compact.selection_rows_to_store(t, wider)["prompt_id"].to_pylist() == \
        ["a", "b", "c", "d"]
    assert compact.selection_rows_to_store(t, RunConfig().record) is t


# --- the view under the prior options (issue 12 item 3) -------------------------------
# Re-scoring builds a round's view with the pipeline's own rule (views.view_of_record):
# a grouped empirical-Bayes prior with forgetting and the mixed objective (full and
# compact record), and the feature prior read from the run's feature cache.
GROUPED = {"data": {"group_field": "difficulty"},
           "posterior": {"prior": "grouped-empirical-bayes", "half_life": 2.0},
           "selector": {"type": "insight", "objective": "mi+mixed", "mixed_weight": 2.0}}
FEATURE = {"posterior": {"prior": "feature-knn", "knn_neighbours": 3}}


@pytest.fixture(scope="module")
def option_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("replay_options")
    return (_build(root / "grouped", **GROUPED),
            _build(root / "grouped_compact", record=COMPACT, **GROUPED),
            _build(root / "feature", **FEATURE))


def _own_selector(run):
    fields = run.config.selector.model_dump(mode="json")
    return fields.pop("type"), fields


def _recorded_view(run, round_):
    """prompt_id -> (alpha, beta) every candidate of a full-record round was scored at."""
    return dict((p, (a, b)) for p, a, b in _rows(
        run, f"SELECT prompt_id, alpha, beta FROM selections WHERE round = {round_}"))


def _rebuilt_view(run, round_, *, stored=False):
    from insight.record.published import with_view
    from insight.report.rescore import PosteriorHistory, RecordedRun

    def rebuild(view):
        history = PosteriorHistory(view, RecordedRun.read(view))
        post = history.after(round_ - 1) if stored else history.before(round_)
        return dict(zip(post.prompt_ids, zip(post.alpha.tolist(), post.beta.tolist())))
    return with_view(run.run_dir, None, rebuild)


@pytest.mark.slow
@pytest.mark.parametrize("which", [0, 2], ids=["grouped+forgetting+mi+mixed", "feature-knn"])
def test_replay_under_a_prior_option_reproduces_every_recorded_pick(option_runs, which):
    run = option_runs[which]
    name, fields = _own_selector(run)
    result = replay(run.run_dir, name, fields)
    assert result["selector"]["objective"] == run.config.selector.objective
    for row in result["rounds"]:
        assert row["overlap"] == row["n_picked"] == row["n_replayed"] == B, row["round"]
        assert row["replayed"] == row["picked"]
    assert result["summary"]["identical_rounds"] == ROUNDS


@pytest.mark.slow
@pytest.mark.parametrize("which", [0, 2], ids=["grouped+forgetting", "feature-knn"])
def test_the_rebuilt_view_is_the_one_each_round_was_scored_at_not_the_stored_posterior(
        option_runs, which):
    run = option_runs[which]
    for r in range(2, ROUNDS + 1):
        recorded = _recorded_view(run, r)
        assert _rebuilt_view(run, r) == recorded, r          # bit for bit
        assert _rebuilt_view(run, r, stored=True) != recorded, r  # the options mattered


@pytest.mark.slow
def test_the_audit_of_a_compact_grouped_record_lists_the_full_records_candidates(
        option_runs, capsys):
    full, small, _ = option_runs
    for r in range(1, ROUNDS + 1):
        a, b = audit.round_candidates(full.run_dir, r), audit.round_candidates(small.run_dir, r)
        assert a.num_rows == N_TRAIN and a.equals(b), r
    printed = []
    for run in (full, small):
        assert cli_main(["audit", "--run-dir", str(run.run_dir), "--round", "3",
                         "--format", "json"]) == 0
        printed.append(json.loads(capsys.readouterr().out))
    assert printed[0]["candidates"] == N_TRAIN
    for key in ("candidates", "selected", "rows"):      # same prompts, scores and ranks
        assert printed[0][key] == printed[1][key], key


@pytest.mark.slow
def test_a_missing_feature_cache_is_refused_in_one_line_naming_the_file(option_runs,
                                                                         tmp_path, capsys):
    import shutil

    from insight.record import layout
    copy = tmp_path / "run"
    shutil.copytree(option_runs[2].run_dir, copy)
    missing = layout.features_path(copy, 1)
    missing.unlink()
    assert cli_main(["replay", "--run-dir", str(copy), "--selector", "insight"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(missing) in err and "round 2" in err
