"""Selection plots from the published Parquet: each one writes a readable PNG, shows
what it claims (the rounds it is drawn through, counts where points coincide, a key to
every colour), the per-round set has the documented cadence and stores each file once,
and nothing goes through pyplot or opens `insight.duckdb`. (Speed is measured, not
asserted here.)"""

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
from insight.record.layout import DB_NAME
from insight.record.store import RunStore
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


@pytest.fixture
def drawn(monkeypatch):
    """Replace the four plot functions by fakes that write a stub PNG and record
    (plot, file name, through_round): the cadence tests need no rendering."""
    calls = []

    def fake(name):
        def draw(run, *args, through_round=None):
            out = args[-1]
            calls.append((name, out.name, through_round))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(PNG_MAGIC + name.encode())
            return out
        return draw

    for name in ("plot_score_vs_mean", "plot_posterior_means", "plot_selection_heatmap",
                 "plot_calibration"):
        monkeypatch.setattr(plots, name, fake(name))
    return calls


CURRENT = ["calibration.png", "posterior_means.png", "selection_heatmap.png"]


def _names(paths, root):
    return sorted(str(p.relative_to(root)) for p in paths)


def test_the_newest_round_refreshes_the_cumulative_plots_and_snapshots_on_cadence(
        run_dir, tmp_path, drawn):
    tag = f"round_{ROUNDS:05d}"
    paths = plots.make_round_plots(run_dir, ROUNDS, tmp_path, every=ROUNDS)
    assert _names(paths, tmp_path) == sorted(
        CURRENT + [f"{tag}/score_vs_mean_{tag}.png", f"{tag}/calibration_{tag}.png",
                   f"{tag}/posterior_means_{tag}.png", f"{tag}/selection_heatmap_{tag}.png"])
    # each cumulative plot drawn once, through this round; the snapshot is the same file
    assert sorted(c for c in drawn if c[0] != "plot_score_vs_mean") == [
        ("plot_calibration", "calibration.png", ROUNDS),
        ("plot_posterior_means", "posterior_means.png", ROUNDS),
        ("plot_selection_heatmap", "selection_heatmap.png", ROUNDS)]
    for name in ("calibration", "posterior_means", "selection_heatmap"):
        assert (tmp_path / f"{name}.png").samefile(tmp_path / tag / f"{name}_{tag}.png")


def test_the_newest_round_off_cadence_still_refreshes_without_a_snapshot(run_dir, tmp_path,
                                                                       drawn):
    # ROUNDS is not a multiple of `every`: e.g. a run resumed past its planned rounds
    paths = plots.make_round_plots(run_dir, ROUNDS, tmp_path, every=ROUNDS + 1)
    tag = f"round_{ROUNDS:05d}"
    assert _names(paths, tmp_path) == sorted(CURRENT + [f"{tag}/score_vs_mean_{tag}.png"])
    assert not plots.make_round_plots(run_dir, ROUNDS, tmp_path / "no", every=ROUNDS + 1,
                                      refresh=False)[1:]


def test_an_older_round_draws_its_snapshot_through_itself_and_leaves_the_current_alone(
        run_dir, tmp_path, drawn):
    (tmp_path / "posterior_means.png").write_bytes(b"current")
    paths = plots.make_round_plots(run_dir, 3, tmp_path, every=3)
    assert _names(paths, tmp_path) == [
        "round_00003/calibration_round_00003.png", "round_00003/posterior_means_round_00003.png",
        "round_00003/score_vs_mean_round_00003.png",
        "round_00003/selection_heatmap_round_00003.png"]
    assert {c[2] for c in drawn if c[0] != "plot_score_vs_mean"} == {3}
    assert (tmp_path / "posterior_means.png").read_bytes() == b"current"
    assert plots.make_round_plots(run_dir, 2, tmp_path, every=3) == \
        [tmp_path / "round_00002" / "score_vs_mean_round_00002.png"]


def test_round_zero_has_only_the_posterior_plot(run_dir, tmp_path, drawn):
    paths = plots.make_round_plots(run_dir, 0, tmp_path, every=3)
    assert _names(paths, tmp_path) == ["round_00000/posterior_means_round_00000.png"]


def test_make_round_plots_writes_the_full_set(run_dir, tmp_path, no_db):
    """Every plot, rendered, on the synthetic run; snapshots are links, not copies."""
    paths = plots.make_round_plots(run_dir, ROUNDS, tmp_path, every=ROUNDS)
    assert len(paths) == 7
    for p in paths:
        assert_png(p)
    assert len({p.stat().st_ino for p in paths}) == 4


def test_link_file_replaces_a_stale_copy_and_survives_a_redraw_of_the_source(tmp_path):
    src, dst = tmp_path / "a.png", tmp_path / "sub" / "b.png"
    src.write_bytes(b"one")
    dst.parent.mkdir()
    dst.write_bytes(b"stale")
    plots.link_file(src, dst)
    assert dst.read_bytes() == b"one" and dst.samefile(src)
    plots.link_file(src, dst)                       # already the same file: a no-op
    tmp = tmp_path / "a.png.new"
    tmp.write_bytes(b"two")
    tmp.replace(src)                                # a redraw renames a new file over
    assert dst.read_bytes() == b"one" and src.read_bytes() == b"two"


class _Captured(Exception):
    pass


@pytest.fixture
def figure(monkeypatch):
    """The Figure a plot function would save (it raises instead of writing the PNG)."""
    box = {}

    def capture(fig, out_png):
        box["fig"] = fig
        raise _Captured

    monkeypatch.setattr(plots, "_save", capture)

    def draw(fn, *args, **kw):
        with pytest.raises(_Captured):
            fn(*args, **kw)
        return box["fig"]
    return draw


def test_cumulative_plots_stop_at_the_round_they_are_drawn_through(run_dir, tmp_path, figure):
    fig = figure(plots.plot_selection_heatmap, run_dir, tmp_path / "h.png", through_round=2)
    heat = fig.axes[1].images[0].get_array()
    assert heat.shape[1] == 2                       # rounds 1 and 2 only
    assert "x 2 rounds" in fig.axes[1].get_title()
    fig = figure(plots.plot_posterior_means, run_dir, tmp_path / "p.png", through_round=2)
    assert fig.axes[0].get_title().endswith("rounds 0-2")
    fig = figure(plots.plot_calibration, run_dir, tmp_path / "c.png", through_round=2)
    assert "rounds 1-2" in fig.axes[0].get_title()
    n_groups = sum(fig.axes[1].containers[0].datavalues)
    assert n_groups == 2 * BATCH                     # rounds 1 and 2 (no refill before 3)


def test_score_vs_mean_counts_prompts_that_share_a_point(run_dir, tmp_path, figure):
    from insight.report.audit import round_candidates
    t = round_candidates(run_dir, 1).to_pylist()
    fresh = [c for c in t if (c["alpha"], c["beta"]) == (1.0, 1.0)]
    assert sum(c["selected"] for c in fresh) == BATCH < len(fresh)
    fig = figure(plots.plot_score_vs_mean, run_dir, 1, tmp_path / "s.png")
    labels = [a.get_text() for a in fig.axes[0].texts]
    assert f"{BATCH} of {len(fresh)} selected" in labels
    assert fig.axes[0].get_legend().get_title().get_text() == "numbers: prompts on one point"


def test_the_heatmap_difficulty_strip_has_a_legend(run_dir, tmp_path, figure):
    fig = figure(plots.plot_selection_heatmap, run_dir, tmp_path / "h.png")
    (legend,) = fig.legends
    assert legend.get_title().get_text() == "difficulty"
    assert [t.get_text() for t in legend.get_texts()] == ["1", "2", "3", "4"]


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
