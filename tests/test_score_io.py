"""`insight score`: posteriors from a file in, scores with diagnostics out."""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from flows.cli_score import add_score_arguments, run_score
from insight.report.score_io import score_file
from insight.selection import registry


def write_csv(path, text):
    path.write_text(text)
    return path


def test_alpha_beta_parquet_to_parquet(tmp_path):
    src = tmp_path / "post.parquet"
    pq.write_table(pa.table({"prompt_id": ["a", "b", "c"], "alpha": [1.0, 5.0, 2.0],
                             "beta": [1.0, 2.0, 9.0]}), src)
    out = score_file(src, tmp_path / "scores.parquet", ["insight", "mi"], 8, batch_size=2)
    t = pq.read_table(out)
    for col in ("selector", "prompt_id", "score", "rank", "selected", "mi", "weight", "alpha",
                "beta", "mean", "difficulty_factor", "evidence_factor", "k"):
        assert col in t.column_names
    assert t.num_rows == 6
    ins = t.filter(pa.compute.equal(t["selector"], "insight"))
    np.testing.assert_allclose(np.asarray(ins["score"]),
                               registry.score("insight", [1.0, 5.0, 2.0], [1.0, 2.0, 9.0], 8))
    assert sorted(np.asarray(ins["rank"]).tolist()) == [1, 2, 3]
    assert ins["selected"].to_pylist() == (np.asarray(ins["rank"]) <= 2).tolist()


def test_counts_csv_with_prior_and_k_column(tmp_path):
    src = write_csv(tmp_path / "counts.csv",
                    "prompt_id,successes,trials,k\n001,3,4,4\n002,0.5,2,16\n")
    out = score_file(src, tmp_path / "s.csv", ["difficulty", "mopps"], 8, a0=0.5, b0=2.0,
                     tau=0.3, seed=3)
    t = pacsv.read_csv(out, convert_options=pacsv.ConvertOptions(
        column_types={"prompt_id": pa.string()}))
    d = t.filter(pa.compute.equal(t["selector"], "difficulty"))
    assert d["prompt_id"].to_pylist() == ["001", "002"]       # ids stay strings
    np.testing.assert_allclose(np.asarray(d["alpha"]), [3.5, 1.0])
    np.testing.assert_allclose(np.asarray(d["beta"]), [3.0, 3.5])
    assert d["k"].to_pylist() == [4, 16]
    m = np.array([3.5 / 6.5, 1.0 / 4.5])
    np.testing.assert_allclose(np.asarray(d["score"]), -(m - 0.3) ** 2)
    # same seed, same random scores
    again = score_file(src, tmp_path / "s2.csv", ["difficulty", "mopps"], 8, a0=0.5, b0=2.0,
                       tau=0.3, seed=3)
    assert (tmp_path / "s.csv").read_text() == again.read_text()


@pytest.mark.parametrize("text,match", [
    ("prompt_id,alpha\na,1\n", "needs columns"),
    ("id,alpha,beta\na,1,1\n", "lacks column 'prompt_id'"),
    ("prompt_id,alpha,beta\na,1,1\na,2,2\n", r"duplicate prompt ids: \['a'\]"),
    ("prompt_id,alpha,beta\na,1,1\nb,nan,2\n", r"alpha must be finite.*\['b'\]"),
    ("prompt_id,alpha,beta\na,1,1\nb,1,-2\n", r"beta must be > 0.*\['b'\]"),
    ("prompt_id,successes,trials\na,1,1\nb,5,4\n", r"successes must lie in.*\['b'\]"),
    ("prompt_id,alpha,beta\na,1,1\nb,,2\n", r"'alpha' is empty.*\['b'\]"),
    ("prompt_id,alpha,beta,successes,trials\na,1,1,1,1\n", "keep one pair"),
    ("prompt_id,alpha,beta,k\na,1,1,0\n", r"k must be an integer >= 1.*\['a'\]"),
])
def test_bad_files_fail_naming_the_problem(tmp_path, text, match):
    src = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(ValueError, match=match):
        score_file(src, tmp_path / "out.parquet", ["insight"], 8)


def test_bad_arguments(tmp_path):
    src = write_csv(tmp_path / "ok.csv", "prompt_id,alpha,beta\na,1,1\nb,2,3\n")
    with pytest.raises(ValueError, match="unknown selector"):
        score_file(src, tmp_path / "o.parquet", ["best"], 8)
    with pytest.raises(ValueError, match="apply to none"):
        score_file(src, tmp_path / "o.parquet", ["mi"], 8, gamma=2.0)
    with pytest.raises(ValueError, match="k must be"):
        score_file(src, tmp_path / "o.parquet", ["mi"], 0)
    with pytest.raises(ValueError, match="not found"):
        score_file(tmp_path / "missing.csv", tmp_path / "o.parquet", ["mi"], 8)


def test_argparse_helpers(tmp_path, capsys):
    src = write_csv(tmp_path / "ok.csv", "prompt_id,alpha,beta\na,1,1\nb,2,3\n")
    parser = add_score_arguments(argparse.ArgumentParser())
    args = parser.parse_args([str(src), str(tmp_path / "o.parquet"), "-s", "insight,mi",
                              "--selector", "mopps", "--k", "4", "--gamma", "2"])
    assert run_score(args) == 0
    t = pq.read_table(tmp_path / "o.parquet")
    assert set(t["selector"].to_pylist()) == {"insight", "mi", "mopps"}
    assert str(tmp_path / "o.parquet") in capsys.readouterr().out
