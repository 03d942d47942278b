"""`insight bench compare` end to end on a very small setup: real training runs through
the Prefect flow (2 selectors x 1 seed), results.json / results.md / curves.png, and
resume (unfinished runs continue, finished ones are skipped, a changed setup is refused)."""

from __future__ import annotations

import argparse
import json

import duckdb
import pytest
import yaml

from flows import bench_compare as bc

pytestmark = pytest.mark.e2e

K, B = 4, 4


def small_config(policy_dir) -> dict:
    return {
        "name": "cmp", "seed": 5, "rounds": 5,
        "policy": {"path": str(policy_dir), "device": "cpu", "threads": 1},
        "data": {"type": "arithmetic", "n_train": 16, "n_eval": 8,
                 "min_digits": 1, "max_digits": 2, "seed": 5},
        "rollout": {"k": K, "batch_size": B, "max_new_tokens": 4},
        "selector": {"type": "insight"},
        "train": {"micro_batch_size": 16},
        "eval": {"every": 5, "n_samples": 2, "greedy": False},
    }


@pytest.fixture(scope="module")
def bench(prefect_api, tiny_policy_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    cfg = root / "small.yaml"
    cfg.write_text(yaml.safe_dump(small_config(tiny_policy_dir)))
    out = root / "out"
    logs = []

    def go(rounds, **kw):
        lines = []
        res = bc.compare(out, str(cfg), ["insight", "uniform"], [1], rounds=rounds,
                         eval_every=1, workers=1, say=lines.append, **kw)
        logs.append(lines)
        return res

    # An interrupted bench: every run stopped after round 1 ...
    first = go(1)
    # ... then continued to round 2, then run again once finished.
    second = go(2)
    third = go(2)
    return {"out": out, "cfg": cfg, "logs": logs, "results": [first, second, third], "go": go}


def test_results_json_has_every_figure_per_selector(bench):
    res = json.loads((bench["out"] / "results.json").read_text())
    assert list(res["selectors"]) == ["insight", "uniform"]
    assert res["main_target"] == "+0.10" and set(res["targets"]) == {"+0.05", "+0.10", "+0.15"}
    assert res["budget_rollouts"] == 2 * K * B
    assert res["failed_runs"] == {} and res["incomplete_runs"] == []
    assert res["setup"]["k"] == [K] and res["setup"]["batch_size"] == [B]
    assert res["setup_consistent"] is True
    for sel, e in res["selectors"].items():
        assert e["seeds"] == [1] and e["n_runs"] == 1
        assert e["rollouts_consumed"]["per_seed"] == [2 * K * B]
        assert len(e["rollouts_to_target_per_seed"]) == 1
        reached = e["rollouts_to_target_per_seed"][0] is not None
        assert e["rollouts_to_target_reached"] == int(reached)
        assert (e["rollouts_to_target"] is None) == (not reached)  # never reached: null + count
        for lab in res["targets"]:
            st = e["rollouts_to_target_all"][lab]
            assert st["n"] == 1 and st["n_reached"] + st["n_missing"] == 1
        for key in ("final_accuracy", "auc", "accuracy_at_budget", "zero_adv_share",
                    "seconds_select_per_round"):
            assert e[key]["n"] == 1 and e[key]["mean"] is not None, key
        assert 0.0 <= e["zero_adv_share"]["mean"] <= 1.0
        assert e["curve"]["x"] == [0.0, K * B, 2 * K * B]
        assert e["zero_adv_by_round"]["round"] == [1, 2]
        # every generated group is attributed to its prompt's difficulty level
        levels = e["groups_by_difficulty"]
        assert levels and sum(x["share"] for x in levels) == pytest.approx(1.0)
        assert all(0.0 <= x["all_fail"] <= 1.0 for x in levels)
        # bootstrap intervals: a missed target is censored at the run's budget, and counted
        ci = e["rollouts_to_target_ci"]
        assert ci["n_seeds"] == 1 and ci["n_censored"] == int(not reached)
        assert ci["value"] == (e["rollouts_to_target"] if reached else 2 * K * B)
        assert e["auc_ci"]["value"] == pytest.approx(e["auc"]["mean"])
    assert set(res["selectors"]["insight"]["speedup_vs"]) == {"uniform"}
    assert "ceiling_share" not in res["selectors"]["insight"]  # no dynamic-sampling run
    assert res["intervals"]["method"].startswith("percentile bootstrap")
    runs = {r["selector"]: r for r in res["runs"]}
    # same seed, same policy, same held-out prompts: the same starting point
    assert runs["insight"]["initial_accuracy"] == runs["uniform"]["initial_accuracy"]


def test_runs_share_everything_but_the_selector(bench):
    cfgs = {}
    for sel in ("insight", "uniform"):
        con = duckdb.connect(str(bench["out"] / "runs" / f"{sel}-s1" / "insight.duckdb"),
                             read_only=True)
        try:
            (cfg,) = con.execute("SELECT config_json FROM runs").fetchone()
            evals = con.execute("SELECT round FROM evals ORDER BY round").fetchall()
        finally:
            con.close()
        cfgs[sel] = json.loads(cfg)
        assert [r[0] for r in evals] == [0, 1, 2]
    a, b = cfgs["insight"], cfgs["uniform"]
    assert a["selector"]["type"] == "insight" and b["selector"]["type"] == "uniform"
    assert a["seed"] == b["seed"] == 1
    assert a["tracking"]["enabled"] is False
    assert {k: v for k, v in a.items() if k != "selector"} == \
        {k: v for k, v in b.items() if k != "selector"}


def test_markdown_and_curves_are_written(bench):
    md = (bench["out"] / "results.md").read_text()
    assert "| `insight` |" in md and "| `uniform` |" in md
    assert "rollouts to +0.10" in md and "speedup vs uniform" in md
    assert "all-fail / all-success" in md and "Where the rollouts went" in md
    assert (bench["out"] / "curves.png").read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((bench["out"] / "compare.json").read_text())
    assert manifest["selectors"] == ["insight", "uniform"] and manifest["seeds"] == [1]


def test_progress_lines_and_resume(bench):
    first, second, third = bench["logs"]
    assert "2 runs (2 selectors x 1 seeds" in first[0] and "2 rounds to train" in first[0]
    done = [line for line in first if line.startswith("[")]
    assert len(done) == 2 and all("1 rounds" in line and "ETA" in line for line in done)
    # unfinished runs continue: one more round each, from the committed one
    assert "0 already finished, 2 rounds to train" in second[0]
    assert sum("2 rounds" in line for line in second if line.startswith("[")) == 2
    # finished runs are skipped
    assert "2 already finished, 0 rounds to train" in third[0]
    assert sum("already finished" in line for line in third if line.startswith("[")) == 2
    r2, r3 = bench["results"][1], bench["results"][2]
    assert r3["runs"] == r2["runs"]


def test_a_changed_setup_is_refused_not_spliced(bench):
    with pytest.raises(ValueError, match="changed setup"):
        bc.compare(bench["out"], str(bench["cfg"]), ["insight", "uniform"], [1], rounds=2,
                   eval_every=1, workers=1, sets={"rollout.k": 2}, say=lambda _: None)


def test_command_line_glue_reanalyzes_with_other_targets(bench, capsys):
    p = argparse.ArgumentParser()
    bc.add_compare_arguments(p)
    args = p.parse_args(["--config", str(bench["cfg"]), "--selectors", "insight,uniform",
                         "--seeds", "1,", "--rounds", "2", "--eval-every", "1",
                         "--out", str(bench["out"]), "--targets", "+0.01,0.9",
                         "--main-target", "0.9", "--analyze-only"])
    assert bc.run_compare(args) == 0
    out = capsys.readouterr().out
    assert "rollouts to 0.90" in out and "not reached (0/1)" in out
    res = json.loads((bench["out"] / "results.json").read_text())
    assert res["main_target"] == "0.90"
    assert res["selectors"]["uniform"]["rollouts_to_target"] is None


def test_argument_parsing():
    assert bc.parse_seeds("3") == [0, 1, 2] and bc.parse_seeds("4,7") == [4, 7]
    assert bc.parse_seeds("1,") == [1]  # one seed by value, not a count
    assert bc.parse_selectors("insight, mopps") == ["insight", "mopps"]
    for bad in ("0", "1,1"):
        with pytest.raises(ValueError):
            bc.parse_seeds(bad)
    with pytest.raises(ValueError, match="unknown selector"):
        bc.parse_selectors("insight,bogus")
    assert bc.parse_sets(["rollout.k=4", "eval.greedy=false"]) == {"rollout.k": 4,
                                                                   "eval.greedy": False}
    specs = bc.plan_runs("/o", None, ["mopps", "uniform"], [0, 1], rounds=7, eval_every=2,
                         sets={"rollout.k": 4})
    assert [s.name for s in specs] == ["mopps-s0", "uniform-s0", "mopps-s1", "uniform-s1"]
    assert specs[3].overrides == {"selector.type": "uniform", "rollout.k": 4, "seed": 1,
                                  "rounds": 7, "tracking.enabled": False, "eval.every": 2}


def test_parallel_workers_share_one_prefect_api_and_split_the_cores(prefect_api):
    import os
    url, server = bc._shared_prefect_api()
    assert server is None and url.startswith("http")  # the configured API, nothing started
    environ = bc._worker_environ(2, url)
    assert environ["PREFECT_API_URL"] == url
    assert environ["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))


def test_markdown_footer_names_the_config_and_every_override():
    res = {"setup": {"config": None, "rounds": 80, "k": [8], "batch_size": [32],
                     "eval_every": 5, "seeds": [0, 1], "sets": {"data.max_digits": 3}},
           "baseline": "uniform", "incomplete_runs": []}
    footer = bc._md_footer(res)
    assert "configs/tiny.yaml (default)" in footer
    assert "`--set data.max_digits=3`" in footer
    assert "80 rounds" in footer and "seeds [0, 1]" in footer


@pytest.mark.slow
def test_tracked_runs_nest_under_one_parent_run_that_gets_the_results(
        prefect_api, tiny_policy_dir, tmp_path):
    from mlflow.tracking import MlflowClient
    cfg = tmp_path / "small.yaml"
    cfg.write_text(yaml.safe_dump(small_config(tiny_policy_dir)))
    out = tmp_path / "out"
    lines = []
    bc.compare(out, str(cfg), ["insight", "uniform"], [1], rounds=1, eval_every=1,
               workers=1, tracking=True, say=lines.append)
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("insight")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    (parent,) = [r for r in runs.values() if "insight.bench" in r.data.tags]
    children = [r for r in runs.values() if r is not parent]
    assert sorted(r.data.tags["insight.selector"] for r in children) == ["insight", "uniform"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {r.info.status for r in children} == {"FINISHED"}
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= \
        {"results.json", "results.md", "curves.png"}
    manifest = json.loads((out / "compare.json").read_text())
    assert manifest["mlflow_parent_run_id"] == parent.info.run_id
    # run again: the same parent is reopened, no second one
    bc.compare(out, str(cfg), ["insight", "uniform"], [1], rounds=1, eval_every=1,
               workers=1, tracking=True, say=lines.append)
    again = client.search_runs([exp.experiment_id])
    assert len(again) == 3 and not any("warning" in line for line in lines)
