"""Selection audit: reads a run's published Parquet only, never `insight.duckdb`.

The synthetic run is written with the real `RunStore` (start_round, replace_round_rows,
commit_round, export_round, export_run_tables), round 0 included, and it scores prompts
with the InSight rule (weight x exact Beta-Binomial MI), so the layout and the numbers are
what a real run publishes. Easy prompts start with an informative prior, so they are never
selected; one prompt is kept out of every candidate pool, so it is never scored; round 3
has a dynamic-sampling refill (generation batch 1); one round after the last is started
but not committed, and a `.tmp` export of it is left lying around.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from scipy.special import betaln, digamma, gammaln

from flows import cli_audit
from insight.report import audit, audit_text
from insight.record.layout import DB_NAME, round_dir
from insight.record.store import RunStore

RUN_ID = "run-audit"
N_PROMPTS, ROUNDS, BATCH, K = 24, 6, 6, 4
OUT_OF_POOL = "p23"          # never a candidate
REFILL_ROUND = 3              # has a gen_batch 1 refill of 2 prompts
EASY_PRIOR = (12.0, 1.0)      # difficulty 1 prompts start here: never worth selecting
TRUE_P = {1: 0.97, 2: 0.7, 3: 0.4, 4: 0.05}


def beta_binomial_mi(a, b, k):
    """I_k(a, b) of DESIGN §2, straight from the formula (test oracle, not fast)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    y = np.arange(k + 1)[:, None]
    log_c = gammaln(k + 1) - gammaln(y + 1) - gammaln(k - y + 1)
    log_p = log_c + betaln(a + y, b + k - y) - betaln(a, b)
    n = a + b
    inner = (log_c - log_p + y * (digamma(a + y) - digamma(n + k))
             + (k - y) * (digamma(b + k - y) - digamma(n + k)))
    return (np.exp(log_p) * inner).sum(axis=0)


def _difficulty(i: int) -> int:
    return 1 + i % 4


def _score_rows(round_, ids, alpha, beta, exclude, n_select, gen_batch):
    """Score the candidates (all ids not excluded), rank them, select the top n."""
    cand = [i for i, pid in enumerate(ids) if pid not in exclude]
    a, b = alpha[cand], beta[cand]
    m = a / (a + b)
    w = 4 * m * (1 - m)
    mi = beta_binomial_mi(a, b, K)
    score = w * mi
    order = sorted(range(len(cand)), key=lambda j: (-score[j], ids[cand[j]]))
    rank = np.empty(len(cand), int)
    rank[order] = np.arange(1, len(cand) + 1)
    n = a + b
    rows = pa.table({
        "run_id": [RUN_ID] * len(cand), "round": pa.array([round_] * len(cand), pa.int32()),
        "prompt_id": [ids[c] for c in cand], "selector": ["insight"] * len(cand),
        "score": score, "mi": mi, "weight": w, "alpha": a, "beta": b, "mean": m,
        "difficulty_factor": m * (1 - m), "evidence_factor": K / ((n + 1) * (n + K)),
        "selected": rank <= n_select, "rank": pa.array(rank, pa.int32()),
        "gen_batch": pa.array([gen_batch] * len(cand), pa.int32())})
    chosen = [ids[cand[j]] for j in order[:n_select]]
    return rows, chosen


def _rollout_rows(round_, chosen, gen_batch, rng, ids):
    cols = {k: [] for k in ("prompt_id", "sample_idx", "completion", "reward", "success")}
    succ = {}
    for pid in chosen:
        p = TRUE_P[_difficulty(ids.index(pid))]
        outcomes = rng.random(K) < p
        succ[pid] = int(outcomes.sum())
        for j, ok in enumerate(outcomes):
            cols["prompt_id"].append(pid)
            cols["sample_idx"].append(j)
            cols["completion"].append(f"answer {'right' if ok else 'wrong'}")
            cols["reward"].append(float(ok))
            cols["success"].append(bool(ok))
    n = len(cols["prompt_id"])
    kept = [not (succ[pid] in (0, K) and gen_batch == 0 and round_ == REFILL_ROUND)
            for pid in cols["prompt_id"]]
    t = pa.table({**cols, "sample_idx": pa.array(cols["sample_idx"], pa.int32()),
                  "run_id": [RUN_ID] * n, "round": pa.array([round_] * n, pa.int32()),
                  "completion_token_ids": pa.array([[1, 2, 3]] * n, pa.list_(pa.int32())),
                  "verifier_error": pa.array([None] * n, pa.string()),
                  "truncated": [False] * n,
                  "policy_round": pa.array([round_ - 1] * n, pa.int32()),
                  "gen_batch": pa.array([gen_batch] * n, pa.int32()), "kept": kept})
    return t, succ


def _posterior_rows(round_, ids, alpha, beta):
    n = len(ids)
    return pa.table({"run_id": [RUN_ID] * n, "round": pa.array([round_] * n, pa.int32()),
                     "prompt_id": ids, "alpha": alpha, "beta": beta})


def build_run(run_dir: Path, seed: int = 0) -> dict:
    """Write a small InSight run through RunStore and publish it; return the truth."""
    rng = np.random.default_rng(seed)
    ids = [f"p{i:02d}" for i in range(N_PROMPTS)]
    alpha = np.array([EASY_PRIOR[0] if _difficulty(i) == 1 else 1.0 for i in range(N_PROMPTS)])
    beta = np.array([EASY_PRIOR[1] if _difficulty(i) == 1 else 1.0 for i in range(N_PROMPTS)])
    truth = {"ids": ids, "selected": {}, "successes": {}, "posteriors": {0: (alpha.copy(),
                                                                              beta.copy())},
             "candidates": {}}
    with RunStore(run_dir) as db:
        db.insert("runs", pa.table({"run_id": [RUN_ID], "config_json": ["{}"],
                                    "seed": [seed], "selector": ["insight"]}))
        train = pa.table({
            "run_id": [RUN_ID] * N_PROMPTS, "prompt_id": ids, "split": ["train"] * N_PROMPTS,
            "source": ["synthetic"] * N_PROMPTS,
            "prompt": [f"What is {i} + {i}?\nAnswer with a number." for i in range(N_PROMPTS)],
            "answer": [str(2 * i) for i in range(N_PROMPTS)],
            "difficulty": pa.array([_difficulty(i) for i in range(N_PROMPTS)], pa.int32()),
            "verifier": ["arithmetic"] * N_PROMPTS})
        held_out = pa.table({"run_id": [RUN_ID] * 2, "prompt_id": ["e0", "e1"],
                             "split": ["eval"] * 2, "prompt": ["1+1?", "2+2?"],
                             "answer": ["2", "4"], "difficulty": pa.array([1, 1], pa.int32())})
        db.insert("prompts", train)
        db.insert("prompts", held_out)
        db.export_run_tables(RUN_ID)

        db.start_round(RUN_ID, 0, None)
        db.replace_round_rows("posteriors", RUN_ID, 0, _posterior_rows(0, ids, alpha, beta))
        db.replace_round_rows("evals", RUN_ID, 0, pa.table({
            "run_id": [RUN_ID], "round": pa.array([0], pa.int32()), "split": ["eval"],
            "accuracy": [0.1]}))
        db.commit_round(RUN_ID, 0, checkpoint="ckpt0", selector_state={},
                        rollouts_consumed=0, metrics={"heldout_accuracy": 0.1})
        db.export_round(RUN_ID, 0)

        for r in range(1, ROUNDS + 2):
            db.start_round(RUN_ID, r, f"flow-{r}")
            if r == ROUNDS + 1:
                # The round in flight: it selected every prompt, but it is not committed,
                # so no audit may count it (else nothing would be "never selected").
                sel, _ = _score_rows(r, ids, alpha, beta, set(), N_PROMPTS, 0)
                db.replace_round_rows("selections", RUN_ID, r, sel)
                break
            sel, chosen = _score_rows(r, ids, alpha, beta, {OUT_OF_POOL}, BATCH, 0)
            db.replace_round_rows("selections", RUN_ID, r, sel)
            ro, succ = _rollout_rows(r, chosen, 0, rng, ids)
            tables, selected = [ro], list(chosen)
            truth["candidates"][r] = {0: sel}
            if r == REFILL_ROUND:
                sel1, more = _score_rows(r, ids, alpha, beta, {OUT_OF_POOL, *chosen}, 2, 1)
                db.replace_round_rows("selections", RUN_ID, r, sel1, where="AND gen_batch = 1")
                ro1, succ1 = _rollout_rows(r, more, 1, rng, ids)
                tables.append(ro1)
                succ.update(succ1)
                selected += more
                truth["candidates"][r][1] = sel1
            db.replace_round_rows("rollouts", RUN_ID, r, pa.concat_tables(tables))
            for pid, s in succ.items():
                i = ids.index(pid)
                alpha[i] += s
                beta[i] += K - s
            db.replace_round_rows("posteriors", RUN_ID, r, _posterior_rows(r, ids, alpha, beta))
            db.record_stage(RUN_ID, r, "select", 0.01, 0.02)
            truth["selected"][r] = selected
            truth["successes"][r] = succ
            truth["posteriors"][r] = (alpha.copy(), beta.copy())
            db.commit_round(RUN_ID, r, checkpoint=f"ckpt{r}", selector_state={},
                            rollouts_consumed=K * len(selected), metrics={})
            db.export_round(RUN_ID, r)
    # An export caught half-way: a `.tmp` folder with a copy of the last round's files.
    tmp = round_dir(run_dir, ROUNDS + 1)
    tmp = tmp.with_name(tmp.name + ".tmp")
    shutil.copytree(round_dir(run_dir, ROUNDS), tmp)
    ever = {p for sel in truth["selected"].values() for p in sel}
    truth["never_selected"] = sorted(set(ids) - ever)
    return truth


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("audit-run")
    return run_dir, build_run(run_dir)


# --- the synthetic run is what we meant -------------------------------------------------
def test_synthetic_run_has_the_designed_shape(run):
    run_dir, truth = run
    easy = {f"p{i:02d}" for i in range(N_PROMPTS) if _difficulty(i) == 1}
    assert easy | {OUT_OF_POOL} <= set(truth["never_selected"])
    assert audit.published_rounds(run_dir) == list(range(ROUNDS + 1))


# --- round candidates -------------------------------------------------------------------
def test_round_candidates_are_every_scored_prompt_in_rank_order(run):
    run_dir, truth = run
    t = audit.round_candidates(run_dir, 2)
    expected = truth["candidates"][2][0]
    assert t.num_rows == expected.num_rows == N_PROMPTS - 1
    assert t.column("rank").to_pylist() == list(range(1, N_PROMPTS))
    assert t.column("position").to_pylist() == list(range(1, N_PROMPTS))
    by_rank = sorted(expected.to_pylist(), key=lambda r: r["rank"])
    assert t.column("prompt_id").to_pylist() == [r["prompt_id"] for r in by_rank]
    np.testing.assert_allclose(t.column("score").to_pylist(), [r["score"] for r in by_rank])
    scores = t.column("score").to_pylist()
    assert scores == sorted(scores, reverse=True)
    assert set(t.column("prompt_id").to_pylist()) == set(truth["ids"]) - {OUT_OF_POOL}
    for col in ("prompt", "score", "mi", "weight", "alpha", "beta", "mean",
                "difficulty_factor", "evidence_factor", "rank", "selected", "gen_batch",
                "successes", "k"):
        assert col in t.column_names


def test_round_candidates_carry_the_outcome_of_selected_prompts_only(run):
    run_dir, truth = run
    rows = audit.round_candidates(run_dir, 2).to_pylist()
    selected = [r for r in rows if r["selected"]]
    assert [r["prompt_id"] for r in selected] == truth["selected"][2]
    assert [r["position"] for r in selected] == list(range(1, BATCH + 1))
    for r in selected:
        assert r["successes"] == truth["successes"][2][r["prompt_id"]] and r["k"] == K
    assert all(r["successes"] is None and r["k"] is None for r in rows if not r["selected"])
    p00 = next(r for r in rows if r["prompt_id"] == "p00")
    assert p00["prompt"] == "What is 0 + 0?\nAnswer with a number." and p00["difficulty"] == 1


def test_round_with_a_refill_lists_both_generation_batches(run):
    run_dir, truth = run
    t = audit.round_candidates(run_dir, REFILL_ROUND)
    batches = t.column("gen_batch").to_pylist()
    assert batches == sorted(batches) and set(batches) == {0, 1}
    refill = [r for r in t.to_pylist() if r["gen_batch"] == 1]
    assert len(refill) == N_PROMPTS - 1 - BATCH
    assert [r["position"] for r in refill] == list(range(1, len(refill) + 1))
    picked = [r["prompt_id"] for r in t.to_pylist() if r["selected"]]
    assert picked == truth["selected"][REFILL_ROUND]


@pytest.mark.parametrize("bad", [ROUNDS + 1, ROUNDS + 50, -1])
def test_unknown_or_uncommitted_round_is_refused_with_the_valid_range(run, bad):
    run_dir, _ = run
    with pytest.raises(ValueError, match=rf"round {bad} .*published rounds: 0\.\.{ROUNDS}"):
        audit.round_candidates(run_dir, bad)


def test_round_zero_has_no_candidates_and_says_so(run):
    run_dir, _ = run
    with pytest.raises(ValueError, match=rf"round 0 .*prior.*1\.\.{ROUNDS}"):
        audit.round_candidates(run_dir, 0)


def test_tmp_export_folders_are_ignored(run):
    run_dir, _ = run
    tmp = round_dir(run_dir, ROUNDS + 1).with_name(f"round_{ROUNDS + 1:05d}.tmp")
    assert tmp.is_dir()                   # the fixture left it there
    assert ROUNDS + 1 not in audit.published_rounds(run_dir)
    h = audit.prompt_history(run_dir, "p05")
    assert h["rounds"].column("round").to_pylist() == list(range(ROUNDS + 1))


def test_missing_run_directory_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no published Parquet"):
        audit.round_candidates(tmp_path / "nope", 1)


# --- a prompt's history ------------------------------------------------------------------
def _a_selected_prompt(truth) -> str:
    counts = {}
    for sel in truth["selected"].values():
        for p in sel:
            counts[p] = counts.get(p, 0) + 1
    return max(sorted(counts), key=lambda p: counts[p])


def test_prompt_history_follows_the_posterior_path(run):
    run_dir, truth = run
    pid = _a_selected_prompt(truth)
    i = truth["ids"].index(pid)
    h = audit.prompt_history(run_dir, pid)
    assert h["prompt"] == f"What is {i} + {i}?\nAnswer with a number."
    assert h["answer"] == str(2 * i) and h["split"] == "train"
    rows = h["rounds"].to_pylist()
    assert [r["round"] for r in rows] == list(range(ROUNDS + 1))
    expected_sel = [r for r in range(1, ROUNDS + 1) if pid in truth["selected"][r]]
    assert h["selected_rounds"] == expected_sel
    assert h["times_selected"] == len(expected_sel) and h["times_scored"] == ROUNDS
    assert rows[0]["scored"] is False and rows[0]["post_alpha"] == 1.0
    for r in rows:
        a, b = truth["posteriors"][r["round"]]
        assert r["post_alpha"] == pytest.approx(a[i]) and r["post_beta"] == pytest.approx(b[i])
        assert r["post_mean"] == pytest.approx(a[i] / (a[i] + b[i]))
        if r["round"] in expected_sel:
            assert r["successes"] == truth["successes"][r["round"]][pid] and r["trials"] == K
        elif r["round"] > 0:
            assert r["successes"] is None and r["selected"] is False
    # the selection of round r saw the posterior of round r-1
    for r in rows[1:]:
        a, b = truth["posteriors"][r["round"] - 1]
        assert r["sel_mean"] == pytest.approx(a[i] / (a[i] + b[i]))


def test_history_ranks_match_the_rounds_candidates(run):
    run_dir, _ = run
    h = audit.prompt_history(run_dir, "p06")
    for r in h["rounds"].to_pylist()[1:]:
        cands = audit.round_candidates(run_dir, r["round"]).to_pylist()
        mine = next(c for c in cands if c["prompt_id"] == "p06" and c["gen_batch"] == r["gen_batch"])
        assert (r["position"], r["score"], r["selected"]) == \
            (mine["position"], mine["score"], mine["selected"])
        assert r["candidates"] == mine["candidates"]
        assert r["n_selected"] == sum(1 for c in cands if c["selected"] and
                                      c["gen_batch"] == r["gen_batch"])


def test_never_selected_easy_prompt_is_explained_by_its_weight(run):
    run_dir, _ = run
    h = audit.prompt_history(run_dir, "p04")       # difficulty 1, prior Beta(12, 1)
    assert h["times_selected"] == 0 and h["times_scored"] == ROUNDS
    why = h["explanation"]
    assert why.startswith("never selected")
    assert "too easy" in why and "posterior mean 0.92" in why and "weight 0.28" in why
    last = h["rounds"].to_pylist()[-1]
    assert f"rank {last['position']} of {N_PROMPTS - 1}, cut at {BATCH}" in why
    assert f"round {ROUNDS}" in why


def test_selected_prompt_explanation_quotes_its_rank_and_outcome(run):
    run_dir, truth = run
    pid = truth["selected"][ROUNDS][0]
    h = audit.prompt_history(run_dir, pid)
    s = truth["successes"][ROUNDS][pid]
    assert h["explanation"].startswith(f"selected in round {ROUNDS}")
    assert f"rank 1 of {N_PROMPTS - 1}, cut at {BATCH}" in h["explanation"]
    assert f"outcome {s}/{K}" in h["explanation"]


def test_out_of_pool_prompt_was_never_scored(run):
    run_dir, _ = run
    h = audit.prompt_history(run_dir, OUT_OF_POOL)
    assert h["times_scored"] == 0
    assert h["explanation"].startswith("never scored")
    assert not any(r["scored"] for r in h["rounds"].to_pylist())


def test_held_out_prompt_is_not_a_candidate(run):
    run_dir, _ = run
    h = audit.prompt_history(run_dir, "e1")
    assert h["split"] == "eval" and "never a selection candidate" in h["explanation"]


def test_unknown_prompt_is_refused_with_the_id_range_and_a_suggestion(run):
    run_dir, _ = run
    with pytest.raises(ValueError, match=r"unknown prompt id 'p99'.*'e0' to 'p23'"):
        audit.prompt_history(run_dir, "p99")
    with pytest.raises(ValueError, match=r"did you mean 'p07'"):
        audit.prompt_history(run_dir, "p007")


# --- never selected ------------------------------------------------------------------------
def test_never_selected_is_exactly_the_prompts_no_round_picked(run):
    run_dir, truth = run
    t = audit.never_selected(run_dir)
    assert sorted(t.column("prompt_id").to_pylist()) == truth["never_selected"]
    rows = {r["prompt_id"]: r for r in t.to_pylist()}
    assert rows[OUT_OF_POOL]["reason"] == "never scored"
    assert rows[OUT_OF_POOL]["times_scored"] == 0 and rows[OUT_OF_POOL]["last_round"] is None
    for i in range(N_PROMPTS):
        if _difficulty(i) == 1:
            r = rows[f"p{i:02d}"]
            assert r["reason"] == "too easy" and r["last_round"] == ROUNDS
            assert r["last_position"] > BATCH and r["last_score"] < r["cut_score"]
    # the last scoring matches that round's candidate list exactly
    cands = {c["prompt_id"]: c for c in audit.round_candidates(run_dir, ROUNDS).to_pylist()}
    for pid, r in rows.items():
        if r["last_round"] == ROUNDS:
            c = cands[pid]
            assert (r["last_position"], r["candidates"], r["last_score"]) == \
                (c["position"], c["candidates"], c["score"])
            assert r["n_selected"] == BATCH
            assert r["cut_score"] == min(x["score"] for x in cands.values() if x["selected"])
    # closest to the cut first, the never-scored last
    assert t.column("prompt_id").to_pylist()[-1] == OUT_OF_POOL
    scores = [s for s in t.column("last_score").to_pylist() if s is not None]
    assert scores == sorted(scores, reverse=True)
    assert "e0" not in rows                   # held-out prompts are no candidates


# --- formatting and JSON ------------------------------------------------------------------
def test_format_table_is_fixed_width_and_notes_what_it_left_out():
    t = pa.table({"name": ["a", "bb", None], "x": [1.5, 0.000012, None],
                  "ok": [True, False, None], "text": ["line\nbreak", "y" * 100, ""]})
    out = audit_text.format_table(t, max_rows=2, max_width=20)
    lines = out.splitlines()
    assert lines[0].split() == ["name", "x", "ok", "text"]
    assert len(lines) == 5 and "1 more rows" in lines[-1]
    assert "line\\nbreak" in out and "…" in out and "1.200e-05" in out and "yes" in out
    assert lines[2].index("1.5") + 3 == lines[3].index("1.200e-05") + 9  # right-aligned
    assert audit_text.format_table(t.slice(0, 0)).endswith("(no rows)")


def test_json_output_is_valid_and_nan_free(run):
    run_dir, _ = run
    h = audit.prompt_history(run_dir, "p05")
    data = json.loads(audit_text.to_json(h))
    assert data["prompt_id"] == "p05" and len(data["rounds"]) == ROUNDS + 1
    assert json.loads(audit_text.to_json({"x": float("nan")})) == {"x": None}


def _cli(*argv):
    parser = cli_audit.add_audit_arguments(argparse.ArgumentParser(prog="insight audit"))
    args = parser.parse_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    rc = cli_audit.run_audit(args, out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def test_cli_round_table_and_json(run):
    run_dir, truth = run
    rc, out, _ = _cli("--run-dir", str(run_dir), "--round", "2", "--limit", "5")
    assert rc == 0
    assert out.startswith(f"round 2 of {run_dir}: {N_PROMPTS - 1} candidates scored, "
                          f"{BATCH} selected (selector insight)")
    assert truth["selected"][2][0] in out and "more rows" in out
    rc, out, _ = _cli("--run-dir", str(run_dir), "--round", "2", "--format", "json")
    data = json.loads(out)
    assert rc == 0 and data["candidates"] == N_PROMPTS - 1 and len(data["rows"]) == N_PROMPTS - 1
    assert [r["prompt_id"] for r in data["rows"] if r["selected"]] == truth["selected"][2]


def test_cli_prompt_and_never_selected(run):
    run_dir, truth = run
    rc, out, _ = _cli("--run-dir", str(run_dir), "--prompt", "p04")
    assert rc == 0 and "why    : never selected" in out and "post_mean" in out
    rc, out, _ = _cli("--run-dir", str(run_dir), "--never-selected", "--format", "json")
    data = json.loads(out)
    assert rc == 0 and sorted(r["prompt_id"] for r in data["rows"]) == truth["never_selected"]
    rc, out, _ = _cli("--run-dir", str(run_dir), "--never-selected")
    assert rc == 0 and "never scored: 1" in out and "too easy" in out


def test_cli_errors_exit_2_with_a_message(run, tmp_path):
    run_dir, _ = run
    rc, out, err = _cli("--run-dir", str(run_dir), "--prompt", "nope")
    assert rc == 2 and out == "" and "unknown prompt id 'nope'" in err
    rc, _, err = _cli("--run-dir", str(run_dir), "--round", "999")
    assert rc == 2 and "round 999" in err
    rc, _, err = _cli("--run-dir", str(tmp_path), "--never-selected")
    assert rc == 2 and "no published Parquet" in err
    with pytest.raises(SystemExit):
        _cli("--run-dir", str(run_dir), "--round", "1", "--prompt", "p01")


# --- never blocks (or is blocked by) a training process ------------------------------------
def test_audit_works_while_another_process_holds_the_database_read_write(run):
    run_dir, truth = run
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import duckdb, sys, time
            con = duckdb.connect({str(run_dir / DB_NAME)!r})
            con.execute("BEGIN TRANSACTION")
            con.execute("UPDATE rounds SET error = 'held' WHERE round = 0")
            print("holding", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(duckdb.IOException, match="(?i)lock"):
            duckdb.connect(str(run_dir / DB_NAME), read_only=True)   # the lock is real
        assert audit.round_candidates(run_dir, 1).num_rows == N_PROMPTS - 1
        assert audit.prompt_history(run_dir, "p05")["prompt_id"] == "p05"
        assert sorted(audit.never_selected(run_dir).column("prompt_id").to_pylist()) == \
            truth["never_selected"]
        assert holder.poll() is None                   # still holding it throughout
    finally:
        holder.kill()
        holder.wait()


def test_audit_never_opens_the_database_file(run, monkeypatch):
    run_dir, _ = run
    real = duckdb.connect

    def guarded(database=":memory:", *a, **kw):
        assert DB_NAME not in str(database), "audit opened insight.duckdb"
        return real(database, *a, **kw)

    monkeypatch.setattr(duckdb, "connect", guarded)
    audit.round_candidates(run_dir, 1)
    audit.prompt_history(run_dir, "p01")
    audit.never_selected(run_dir)


# --- the published SQL in docs/audit.md --------------------------------------------------
DOC = Path(__file__).resolve().parents[1] / "docs" / "audit.md"


def _doc_queries() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)


def test_docs_publish_queries_for_both_sources():
    queries = _doc_queries()
    assert len(queries) >= 8
    assert any("read_parquet" in q for q in queries)
    assert any("read_parquet" not in q for q in queries)


@pytest.mark.parametrize("index", range(len(_doc_queries()) if DOC.exists() else 0))
def test_every_docs_query_runs_on_the_synthetic_run(run, index):
    """Parquet queries run on an in-memory connection with RUN replaced by the run dir;
    the others on `insight.duckdb` opened read-only (no training is running here)."""
    run_dir, _ = run
    query = _doc_queries()[index]
    if "read_parquet" in query:
        con = duckdb.connect(":memory:")
        query = query.replace("'RUN/", f"'{run_dir}/")
    else:
        con = duckdb.connect(str(run_dir / DB_NAME), read_only=True)
    try:
        result = con.execute(query).fetchall()
    finally:
        con.close()
    assert result, f"query {index} returned no rows on the synthetic run:\n{query}"


# --- a run written by two versions of the store ------------------------------------------
def test_columns_added_mid_run_read_as_null_in_older_rounds(tmp_path):
    """Round 1 was published by a store without `gen_batch` and `mean`; round 2 by one
    with them and with an extra column. Older rounds read those columns as NULL (and
    gen_batch as 0), the extra column is ignored."""
    ids = ["a", "b", "c"]
    with RunStore(tmp_path) as db:
        db.insert("prompts", pa.table({"run_id": ["r"] * 3, "prompt_id": ids,
                                       "split": ["train"] * 3, "prompt": ids}))
        db.export_run_tables("r")
        db.con.execute("ALTER TABLE selections DROP COLUMN gen_batch")
        db.con.execute("ALTER TABLE selections DROP COLUMN mean")
        for r in range(3):
            if r == 2:
                db.con.execute("ALTER TABLE selections ADD COLUMN gen_batch INTEGER")
                db.con.execute("ALTER TABLE selections ADD COLUMN mean DOUBLE")
                db.con.execute("ALTER TABLE selections ADD COLUMN novelty DOUBLE")
            db.start_round("r", r, None)
            if r > 0:
                sel = {"run_id": ["r"] * 3, "round": pa.array([r] * 3, pa.int32()),
                       "prompt_id": ids, "score": [0.3, 0.2, 0.1],
                       "selected": [True, False, False],
                       "rank": pa.array([0, 1, 2], pa.int32())}   # 0-based ranks
                if r == 2:
                    sel["mean"] = [0.5, 0.5, 0.5]
                db.replace_round_rows("selections", "r", r, pa.table(sel))
            db.replace_round_rows("posteriors", "r", r, pa.table({
                "run_id": ["r"] * 3, "round": pa.array([r] * 3, pa.int32()),
                "prompt_id": ids, "alpha": [1.0 + r] * 3, "beta": [1.0] * 3}))
            db.commit_round("r", r, checkpoint="c", selector_state={}, rollouts_consumed=0,
                            metrics={})
            db.export_round("r", r)
    h = audit.prompt_history(tmp_path, "b")
    rows = h["rounds"].to_pylist()
    assert [r["gen_batch"] for r in rows] == [None, 0, 0]
    assert rows[1]["sel_mean"] is None and rows[2]["sel_mean"] == 0.5
    assert [r["position"] for r in rows[1:]] == [2, 2]        # 1-based from 0-based ranks
    assert "rank 2 of 3, cut at 1" in h["explanation"]
    t = audit.never_selected(tmp_path)
    assert sorted(t.column("prompt_id").to_pylist()) == ["b", "c"]
    assert audit.round_candidates(tmp_path, 1).column("gen_batch").to_pylist() == [0, 0, 0]


def test_docs_never_selected_query_agrees_with_the_audit(run):
    """The SQL recipe on insight.duckdb must ignore the uncommitted round in flight and
    name the same prompts as `never_selected`."""
    run_dir, truth = run
    query = next(q for q in _doc_queries() if "never AS (" in q)
    con = duckdb.connect(str(run_dir / DB_NAME), read_only=True)
    try:
        rows = con.execute(query).fetchall()
    finally:
        con.close()
    assert sorted(r[0] for r in rows) == truth["never_selected"]
    why = {r[0]: r[-1] for r in rows}
    assert why[OUT_OF_POOL] == "never scored" and why["p04"] == "too easy"


@pytest.mark.parametrize("row, reason, phrase", [
    ({"selector": "insight", "score": 0.01, "weight": 0.1, "mi": 0.2, "sel_mean": 0.97,
      "cut_weight": 1.0, "cut_mi": 0.2}, "too easy", "posterior mean 0.97 gives weight 0.1"),
    ({"selector": "insight", "score": 0.01, "weight": 0.1, "mi": 0.2, "sel_mean": 0.03,
      "cut_weight": 1.0, "cut_mi": 0.2}, "too hard", "too hard: "),
    ({"selector": "insight", "score": 0.01, "weight": 0.9, "mi": 0.01, "sel_mean": 0.5,
      "cut_weight": 1.0, "cut_mi": 0.2}, "well measured", "leaves MI 0.01"),
    ({"selector": "insight", "score": 0.5, "weight": 1.0, "mi": 0.5, "sel_mean": 0.5,
      "cut_weight": 1.0, "cut_mi": 0.2}, "not drawn", "a sampling selector or a tie"),
    ({"selector": "mopps", "score": -0.2, "weight": None, "mi": 0.3, "sel_mean": 0.9,
      "cut_weight": None, "cut_mi": 0.3}, "below cut", "its posterior mean 0.9, score"),
    ({"selector": "uniform", "score": 1.1, "weight": None, "mi": 0.3, "sel_mean": 0.5,
      "cut_weight": None, "cut_mi": 0.3}, "not drawn", "random key"),
])
def test_reasons_for_not_being_selected(row, reason, phrase):
    row = {"round": 9, "position": 30, "candidates": 64, "n_selected": 8, "cut_score": 0.2,
           "sel_alpha": 3.0, "sel_beta": 2.0, **row}
    assert audit_text.reason_not_selected(row) == reason
    text = audit_text.why_not_selected(row)
    assert phrase in text and "rank 30 of 64, cut at 8" in text


def test_random_key_selectors_come_from_the_registry():
    """A candidate a random-key selector skipped was 'not drawn', whatever its score; a
    scoring selector's is judged by its weight and information."""
    from insight.selection import registry
    row = {"round": 1, "position": 9, "candidates": 20, "n_selected": 6, "score": 0.1,
           "cut_score": 0.5, "weight": 0.2, "cut_weight": 0.9, "mi": 0.3, "cut_mi": 0.3,
           "sel_mean": 0.9}
    for name in registry.NAMES:
        reason = audit_text.reason_not_selected({**row, "selector": name})
        assert (reason == "not drawn") == registry.SELECTORS[name].random_key, name
    assert audit_text.reason_not_selected({**row, "selector": "insight"}) == "too easy"
    assert audit_text.reason_not_selected({**row, "selector": "not-a-selector"}) == "too easy"
