"""Selection plots from the published Parquet: each one writes a readable PNG, the
per-round set has the documented cadence, and nothing goes through pyplot or opens
`insight.duckdb`. (Speed is measured by benchmarks, not asserted here.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from matplotlib.image import imread

from insight.report import plots
from insight.store import DB_NAME, RunStore
from tests.test_audit import BATCH, ROUNDS, build_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("plots-run")
    build_run(path)
    return path


@pytest.fixture
def no_db(monkeypatch):
    """Fail the test if anything opens `insight.duckdb`: plots read Parquet only."""
    real = duckdb.connect

    def guarded(database=":memory:", *a, **kw):
        assert DB_NAME not in str(database), "a plot opened insight.duckdb"
        return real(database, *a, **kw)

    monkeypatch.setattr(duckdb, "connect", guarded)


def assert_png(path, min_bytes=5_000):
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > min_bytes, (path, len(data))
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    # not a blank canvas: a real plot has many distinct colours
    rgb = (img[::3, ::3, :3] * 255).astype(np.uint32)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    assert len(np.unique(codes)) > 20
    assert not path.with_name(path.name + ".tmp").exists()


def test_posterior_means_without_difficulty_levels_uses_overall_bands(run_dir, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(plots, "MAX_LEVELS", 1)       # 4 levels: too many to draw apart
    assert_png(plots.plot_posterior_means(run_dir, tmp_path / "pm.png"))


def test_score_vs_mean_plot_for_a_plain_and_a_refill_round(run_dir, tmp_path, no_db):
    assert_png(plots.plot_score_vs_mean(run_dir, 2, tmp_path / "a" / "sv2.png"))
    assert_png(plots.plot_score_vs_mean(run_dir, 3, tmp_path / "sv3.png"))


def test_score_vs_mean_refuses_an_unpublished_round(run_dir, tmp_path):
    with pytest.raises(ValueError, match=f"round {ROUNDS + 1} "):
        plots.plot_score_vs_mean(run_dir, ROUNDS + 1, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_selection_heatmap_pools_rows_of_a_large_pool(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "MAX_HEATMAP_ROWS", 5)
    assert_png(plots.plot_selection_heatmap(run_dir, tmp_path / "hm.png"))


def test_calibration_plot_of_recent_rounds_in_coarse_bins(run_dir, tmp_path, no_db):
    assert_png(plots.plot_calibration(run_dir, tmp_path / "cal4.png", bins=4,
                                      since_round=ROUNDS - 1))


def test_make_round_plots_draws_the_cumulative_ones_every_n_rounds(run_dir, tmp_path,
                                                                    monkeypatch):
    drawn = []

    def fake(name):
        def draw(run, *args):
            out = args[-1]
            drawn.append((name, out.name))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(PNG_MAGIC)
            return out
        return draw

    for name in ("plot_score_vs_mean", "plot_posterior_means", "plot_selection_heatmap",
                 "plot_calibration"):
        monkeypatch.setattr(plots, name, fake(name))
    assert [p.name for p in plots.make_round_plots(run_dir, 5, tmp_path, every=3)] == \
        ["score_vs_mean_round_00005.png"]
    assert sorted(p.name for p in plots.make_round_plots(run_dir, 6, tmp_path, every=3)) == \
        sorted(["score_vs_mean_round_00006.png", "posterior_means_round_00006.png",
                "selection_heatmap_round_00006.png", "calibration_round_00006.png"])
    assert len(plots.make_round_plots(run_dir, 5, tmp_path, every=0, final=True)) == 4
    assert [p.name for p in plots.make_round_plots(run_dir, 0, tmp_path)] == \
        ["posterior_means_round_00000.png"]


def test_make_round_plots_writes_the_full_set(run_dir, tmp_path, no_db):
    """Every plot, each on its default path, on the synthetic run."""
    paths = plots.make_round_plots(run_dir, ROUNDS, tmp_path / "round", every=1)
    assert len(paths) == 4 and all(p.parent == tmp_path / "round" for p in paths)
    for p in paths:
        assert_png(p)


def test_a_run_with_only_the_prior_still_plots(tmp_path):
    ids = [f"q{i}" for i in range(5)]
    with RunStore(tmp_path) as db:
        db.insert("prompts", pa.table({"run_id": ["r"] * 5, "prompt_id": ids,
                                       "split": ["train"] * 5}))
        db.export_run_tables("r")
        db.start_round("r", 0, None)
        db.replace_round_rows("posteriors", "r", 0, pa.table({
            "run_id": ["r"] * 5, "round": pa.array([0] * 5, pa.int32()), "prompt_id": ids,
            "alpha": [1.0] * 5, "beta": [1.0] * 5}))
        db.commit_round("r", 0, checkpoint="c", selector_state={}, rollouts_consumed=0,
                        metrics={})
        db.export_round("r", 0)
    assert_png(plots.plot_posterior_means(tmp_path, tmp_path / "pm.png"))
    # nothing selected yet: a labelled placeholder, not an exception
    assert_png(plots.plot_selection_heatmap(tmp_path, tmp_path / "hm.png"), min_bytes=2_000)
    assert_png(plots.plot_calibration(tmp_path, tmp_path / "cal.png"), min_bytes=2_000)


def test_plotting_does_not_load_pyplot(run_dir, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from insight.report import plots
        plots.plot_score_vs_mean({str(run_dir)!r}, {ROUNDS}, {str(tmp_path / "sv.png")!r})
        assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_selected_count_in_the_title_matches_the_round(run_dir):
    # the data behind the score plot: BATCH selected in a plain round
    from insight.report.audit import round_candidates
    t = round_candidates(run_dir, 2)
    assert sum(t.column("selected").to_pylist()) == BATCH
