"""Selection plots, drawn from a run's published Parquet (the same files `insight.report.audit`
reads, so plotting never touches `insight.duckdb` and is safe while a run trains).

Matplotlib is used through `Figure` objects with the Agg canvas, never through pyplot:
no display, no global figure registry to leak, safe in a worker thread. Each PNG is
written aside and renamed into place, so a tracker uploading the folder never sees a
half-written file.

- `plot_posterior_means`   posterior mean over rounds: quantile bands per difficulty
                           level (or overall), and a fixed sample of prompt trajectories
- `plot_score_vs_mean`     one round's candidates: score against posterior mean, the
                           selected ones and the cut highlighted
- `plot_selection_heatmap` prompts x rounds, selected cells coloured by the round's s/k
- `plot_calibration`       posterior mean at selection time against the observed s/k
- `make_round_plots`       the set for one round: score vs mean, the cumulative ones
                           refreshed, and their snapshot every N rounds
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from insight.record.layout import round_name
from insight.record.published import (Need, RunView, posterior_mean_quantiles,
                                      posterior_mean_trajectories, prompt_difficulties,
                                      prompts_by_first_selection, published_rounds,
                                      selected_group_outcomes, selected_success_rates,
                                      with_view)
from insight.report.audit import round_candidates

DPI = 100
MAX_LEVELS = 8            # difficulty levels drawn as separate bands
MAX_HEATMAP_ROWS = 1000   # above this, prompts are pooled into bins of rows
MAX_COUNT_LABELS = 100   # score plot: points labelled with their prompt count


def _figure(width: float = 8.0, height: float = 5.0, **margins) -> Figure:
    """A figure on the Agg canvas with fixed margins (a layout engine would draw every
    figure twice; these plots have fixed sizes, so fixed margins do)."""
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(**{"left": 0.85 / width, "right": 1 - 0.25 / width,
                           "bottom": 0.55 / height, "top": 1 - 0.45 / height, **margins})
    return fig


def _save(fig: Figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=DPI)
    os.replace(tmp, out)
    return out


def _empty(out_png, title: str, message: str) -> Path:
    fig = _figure(6, 3)
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)
    return _save(fig, out_png)


# --- posterior means over rounds ------------------------------------------------------
def plot_posterior_means(run_dir: str | Path, out_png: str | Path,
                         n_trajectories: int = 24, through_round: int | None = None) -> Path:
    """Posterior mean of every training prompt over rounds: median and quartile band per
    difficulty level (overall 5-95 and 25-75 bands when the prompts carry no difficulty
    or have too many levels), plus a fixed sample of individual trajectories. Rounds up
    to `through_round` (default: all published), so a plot redrawn later for an earlier
    round shows what was known then."""

    def draw(v: RunView) -> Path:
        diff = prompt_difficulties(v)
        levels = sorted({d for d in diff.values()})
        by_level = 0 < len(levels) <= MAX_LEVELS
        q = posterior_mean_quantiles(v, diff if by_level else None)
        if q.num_rows == 0:
            return _empty(out_png, "posterior means", "no posterior published yet")
        sample = posterior_mean_trajectories(v, n_trajectories)
        fig = _figure(10, 5, right=1 - 2.5 / 10)
        ax = fig.add_subplot()
        cmap = colormaps["viridis"]
        norm = Normalize(min(levels) if levels else 0, max(levels) if levels else 1)
        rounds_all = np.asarray(q.column("round").to_pylist())
        level_col = np.asarray(q.column("level").to_pylist())
        quant = np.asarray(q.column("q").to_pylist(), dtype=float)
        n_col = np.asarray(q.column("n").to_pylist())
        for level in sorted(set(level_col.tolist())):
            m = level_col == level
            r = rounds_all[m]
            if by_level:
                color = cmap(norm(level)) if level >= 0 else "grey"
                name = f"difficulty {level}" if level >= 0 else "difficulty unknown"
                ax.fill_between(r, quant[m, 1], quant[m, 3], color=color, alpha=0.2, lw=0)
                ax.plot(r, quant[m, 2], color=color, lw=2,
                        label=f"{name} (n={n_col[m][0]}): median, quartiles")
            else:
                ax.fill_between(r, quant[m, 0], quant[m, 4], color="C0", alpha=0.12, lw=0,
                                label="5-95%")
                ax.fill_between(r, quant[m, 1], quant[m, 3], color="C0", alpha=0.25, lw=0,
                                label="25-75%")
                ax.plot(r, quant[m, 2], color="C0", lw=2,
                        label=f"median of {n_col[m][0]} prompts")
        ids = np.asarray(sample.column("prompt_id").to_pylist(), dtype=object)
        s_round = np.asarray(sample.column("round").to_pylist())
        s_mean = np.asarray(sample.column("mean").to_pylist(), dtype=float)
        first = True
        for pid in dict.fromkeys(ids.tolist()):
            m = ids == pid
            d = diff.get(pid)
            color = cmap(norm(d)) if by_level and d is not None else "0.35"
            ax.plot(s_round[m], s_mean[m], color=color, lw=0.7, alpha=0.45,
                    label=f"{len(set(ids.tolist()))} sampled prompts" if first else None)
            first = False
        ax.set_xlabel("round")
        ax.set_ylabel("posterior mean  a / (a + b)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title("Posterior mean of the training prompts over rounds "
                     f"0-{int(rounds_all.max())}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
        return _save(fig, out_png)

    return with_view(run_dir, {"posteriors": Need(where=_upto(through_round))}, draw)


def _upto(through_round: int | None) -> str:
    """The SQL filter of a cumulative plot's rows: rounds up to `through_round`."""
    return "" if through_round is None else f"round <= {int(through_round)}"


# --- score against posterior mean, one round ------------------------------------------
def plot_score_vs_mean(run_dir: str | Path, round_: int, out_png: str | Path) -> Path:
    """Every candidate of `round_`: its score against the posterior mean it was scored
    at; selected candidates highlighted, refills (gen_batch > 0) as triangles, and the
    lowest selected score drawn as the cut. Prompts with the same posterior share a
    point (early on, hundreds do), so a point's area grows with the number of prompts
    on it and a point holding more than one is labelled with that number."""
    t = round_candidates(run_dir, round_)
    score = np.asarray(t.column("score").to_pylist(), dtype=float)
    mean = np.asarray(t.column("mean").to_pylist(), dtype=float)
    sel = np.asarray(t.column("selected").to_pylist(), dtype=bool)
    batch = np.asarray(t.column("gen_batch").to_pylist())
    selector = next((s for s in t.column("selector").to_pylist() if s), "?")
    title = f"Round {round_}: {t.num_rows} candidates, {int(sel.sum())} selected ({selector})"
    ok = np.isfinite(score) & np.isfinite(mean)
    if not ok.any():
        return _empty(out_png, title, "no scores or posterior means stored for this round")
    fig = _figure()
    ax = fig.add_subplot()
    stacked = False
    for refill, marker in ((False, "o"), (True, "^")):
        m = ok & ((batch > 0) == refill)
        if not m.any():
            continue
        x, y, n_sel, n_not = _stack(mean[m], score[m], sel[m])
        stacked |= bool((n_sel + n_not > 1).any())
        suffix = " (refill)" if refill else ""
        if (n_not > 0).any():
            ax.scatter(x[n_not > 0], y[n_not > 0], s=12 * np.sqrt(n_not[n_not > 0]),
                       c="0.6", marker=marker, lw=0, label="not selected" + suffix)
        if (n_sel > 0).any():
            ax.scatter(x[n_sel > 0], y[n_sel > 0], s=36 * np.sqrt(n_sel[n_sel > 0]),
                       c="C3", marker=marker, edgecolors="k", linewidths=0.5, zorder=3,
                       label="selected" + suffix)
        # label the fullest points (a large pool can have thousands of small stacks)
        for i in np.argsort(-(n_sel + n_not), kind="stable")[:MAX_COUNT_LABELS]:
            ns, nn = n_sel[i], n_not[i]
            if ns and nn:        # a tie at the cut: some prompts of one posterior taken
                text = f"{ns} of {ns + nn} selected"
            elif ns + nn > 1:
                text = str(ns + nn)
            else:
                break
            ax.annotate(text, (x[i], y[i]), xytext=(5, 4), textcoords="offset points",
                        fontsize=7, color="C3" if ns else "0.3", zorder=4)
    if (sel & ok & (batch == 0)).any():
        cut = score[sel & ok & (batch == 0)].min()
        ax.axhline(cut, color="C3", ls="--", lw=1, label=f"cut {cut:.3g}")
    ax.set_xlim(-0.02, 1.02)
    ax.margins(y=0.08)                       # room for the count labels
    ax.set_xlabel("posterior mean at selection (after round %d)" % (round_ - 1))
    ax.set_ylabel("score")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    legend = ax.legend(fontsize=8, loc="best",
                       title="numbers: prompts on one point" if stacked else None,
                       title_fontsize=7)
    for handle, text in zip(legend.legend_handles, legend.get_texts()):
        if hasattr(handle, "set_sizes"):      # legend markers at the one-prompt size
            handle.set_sizes([12 if text.get_text().startswith("not") else 36])
    return _save(fig, out_png)


def _stack(x: np.ndarray, y: np.ndarray, selected: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (x, y) points, with how many selected and unselected inputs fall on
    each. Compared in float32: the same posterior gives the same mean and score up to
    rounding, and points closer than that are one point on any figure."""
    key = np.stack([x, y], axis=1).astype(np.float32)
    points, inverse = np.unique(key, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    n_sel = np.bincount(inverse, weights=selected, minlength=len(points)).astype(int)
    n_all = np.bincount(inverse, minlength=len(points))
    return points[:, 0].astype(float), points[:, 1].astype(float), n_sel, n_all - n_sel


# --- selection heat map -----------------------------------------------------------------
def plot_selection_heatmap(run_dir: str | Path, out_png: str | Path,
                           through_round: int | None = None) -> Path:
    """Prompts (rows) x rounds (columns); a selected cell is coloured by the success
    rate its rollouts had that round, unselected cells are light grey. Rows are sorted by
    difficulty, then by the round of first selection (never selected last). With more
    than MAX_HEATMAP_ROWS prompts, consecutive rows are pooled and a cell shows the share
    of its prompts selected. The difficulty strip on the left has its own legend. Rounds
    up to `through_round` (default: all published)."""

    def draw(v: RunView) -> Path:
        prompts = prompts_by_first_selection(v)
        cells = selected_success_rates(v)
        rounds = [r for r in v.rounds if 0 < r <= last_round]
        if prompts.num_rows == 0 or not rounds:
            return _empty(out_png, "selections", "no selection round published yet")
        ids = prompts.column("prompt_id").to_pylist()
        row_of = {pid: i for i, pid in enumerate(ids)}
        col_of = {r: j for j, r in enumerate(rounds)}
        grid = np.full((len(ids), len(rounds)), np.nan)
        for pid, r, rate in zip(cells.column("prompt_id").to_pylist(),
                                cells.column("round").to_pylist(),
                                cells.column("rate").to_pylist()):
            if pid in row_of and r in col_of:
                grid[row_of[pid], col_of[r]] = np.nan if rate is None else rate
                if rate is None:       # selected but no rollouts stored: mark as selected
                    grid[row_of[pid], col_of[r]] = 0.5
        diff = np.asarray([np.nan if d is None else d
                           for d in prompts.column("difficulty").to_pylist()], dtype=float)
        pooled = len(ids) > MAX_HEATMAP_ROWS
        if pooled:
            size = int(np.ceil(len(ids) / MAX_HEATMAP_ROWS))
            n_bins = int(np.ceil(len(ids) / size))
            pad = n_bins * size - len(ids)
            chosen = np.pad(np.isfinite(grid).astype(float), ((0, pad), (0, 0)),
                            constant_values=np.nan)
            grid = np.nanmean(chosen.reshape(n_bins, size, -1), axis=1)
            diff = np.nanmean(np.pad(diff, (0, pad), constant_values=np.nan)
                              .reshape(n_bins, size), axis=1) if np.isfinite(diff).any() \
                else np.full(n_bins, np.nan)
        fig = _figure(10, 6)
        has_diff = np.isfinite(diff).any()
        if has_diff:
            gs = fig.add_gridspec(1, 2, width_ratios=[1, 40], wspace=0.01)
            ax_d, ax = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
        else:
            ax_d, ax = None, fig.add_subplot()
        extent = (rounds[0] - 0.5, rounds[-1] + 0.5, grid.shape[0] - 0.5, -0.5)
        if pooled:
            cmap = colormaps["Blues"]
            im = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap=cmap,
                           vmin=0, vmax=1, extent=extent)
            fig.colorbar(im, ax=ax, label=f"share selected (rows pooled by {size})")
        else:
            cmap = colormaps["RdYlGn"].with_extremes(bad="0.92")
            im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", interpolation="nearest",
                           cmap=cmap, vmin=0, vmax=1, extent=extent)
            fig.colorbar(im, ax=ax, label="success rate s/k of the selected prompt")
        ax.set_xlabel("round")
        ax.set_yticks([])
        n_never = int(prompts.column("first_round").null_count)
        ax.set_title(f"Selections: {len(ids)} prompts x {len(rounds)} rounds "
                     f"({n_never} never selected, bottom of each difficulty)")
        if ax_d is not None:
            levels = sorted({d for d in diff[np.isfinite(diff)].tolist()})
            norm = Normalize(levels[0], levels[-1] if levels[-1] > levels[0] else levels[0] + 1)
            ax_d.imshow(diff[:, None], aspect="auto", interpolation="nearest",
                        cmap=colormaps["viridis"], norm=norm,
                        extent=(0, 1, grid.shape[0] - 0.5, -0.5))
            ax_d.set_xticks([])
            ax_d.set_yticks([])
            ax_d.set_ylabel("prompts, by difficulty "
                            f"({_level_range(levels)}) then first selection")
            _difficulty_legend(fig, levels, norm, pooled)
        else:
            ax.set_ylabel("prompts, by first selection")
        return _save(fig, out_png)

    published = [r for r in published_rounds(run_dir)
                 if through_round is None or r <= through_round]
    last_round = published[-1] if published else -1
    since = _upto(last_round)
    need = {"selections": Need(where=f"selected AND {since}"), "rollouts": Need(where=since),
            "posteriors": Need(tuple(published[-1:]))}
    return with_view(run_dir, need, draw)


def _difficulty_legend(fig: Figure, levels: list[float], norm: Normalize,
                       pooled: bool) -> None:
    """The key to the heat map's difficulty strip, in the bottom-left corner: one swatch
    per level (the two ends when there are many, or when pooled rows average levels)."""
    from matplotlib.patches import Patch
    shown = levels if len(levels) <= MAX_LEVELS and not pooled else [levels[0], levels[-1]]
    cmap = colormaps["viridis"]
    handles = [Patch(color=cmap(norm(level)), label=f"{level:g}") for level in shown]
    title = "difficulty" + (" (pooled rows: mean)" if pooled else "")
    fig.legend(handles=handles, title=title, loc="lower left", bbox_to_anchor=(0.005, 0.0),
               ncol=min(len(handles), 8), fontsize=7, title_fontsize=7, frameon=False,
               handlelength=1.2, columnspacing=0.8, borderaxespad=0.2)


def _level_range(levels: list[float]) -> str:
    if not levels:
        return "n/a"
    lo, hi = levels[0], levels[-1]
    return f"{lo:g} top to {hi:g} bottom" if lo != hi else f"{lo:g}"


# --- calibration ------------------------------------------------------------------------
def plot_calibration(run_dir: str | Path, out_png: str | Path, bins: int = 10,
                     since_round: int = 1, through_round: int | None = None) -> Path:
    """Posterior mean at selection time (the prediction) against the success rate its
    rollouts then had, pooled in `bins` equal-width bins of the mean, with binomial
    standard errors, the diagonal, and the number of groups per bin. Only rounds from
    `since_round` to `through_round` (default: the last published; the policy drifts,
    so recent rounds say more)."""

    def draw(v: RunView) -> Path:
        t = selected_group_outcomes(v)
        title = "Calibration: posterior mean at selection vs observed s/k"
        if t.num_rows == 0:
            return _empty(out_png, title, "no selected prompt with rollouts yet")
        m = np.asarray(t.column("m").to_pylist(), dtype=float)
        s = np.asarray(t.column("s").to_pylist(), dtype=float)
        k = np.asarray(t.column("k").to_pylist(), dtype=float)
        edges = np.linspace(0, 1, bins + 1)
        idx = np.clip(np.digitize(m, edges) - 1, 0, bins - 1)
        groups = np.bincount(idx, minlength=bins)
        sum_k = np.bincount(idx, weights=k, minlength=bins)
        sum_s = np.bincount(idx, weights=s, minlength=bins)
        sum_m = np.bincount(idx, weights=m, minlength=bins)
        has = groups > 0
        pred = np.where(has, sum_m / np.maximum(groups, 1), np.nan)
        obs = np.where(has, sum_s / np.maximum(sum_k, 1), np.nan)
        se = np.where(has, np.sqrt(obs * (1 - obs) / np.maximum(sum_k, 1)), np.nan)
        gap = float(np.nansum(np.abs(pred - obs) * groups) / groups.sum())
        fig = _figure(6.5, 6.5, left=0.8 / 6.5, top=1 - 0.6 / 6.5)
        gs = fig.add_gridspec(2, 1, height_ratios=[3, 1], hspace=0.3)
        ax, ax_n = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
        ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1, label="perfect calibration")
        ax.errorbar(pred[has], obs[has], yerr=se[has], fmt="o-", color="C0", capsize=3,
                    label=f"{int(groups.sum())} selected groups, {int(sum_k.sum())} rollouts")
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("posterior mean at selection (predicted success rate)")
        ax.set_ylabel("observed s / k")
        upto = f"-{through_round}" if through_round is not None else " on"
        ax.set_title(f"{title}\n(rounds {since_round}{upto}; weighted |gap| {gap:.3f})",
                     fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
        ax_n.bar(edges[:-1], groups, width=np.diff(edges), align="edge", color="C0",
                 alpha=0.6, edgecolor="white")
        ax_n.set_xlim(0, 1)
        ax_n.set_xlabel("posterior mean bin")
        ax_n.set_ylabel("groups")
        return _save(fig, out_png)

    since = f"round >= {int(since_round)}" + \
        (f" AND {_upto(through_round)}" if through_round is not None else "")
    need = {"selections": Need(where=f"selected AND {since}"), "rollouts": Need(where=since)}
    return with_view(run_dir, need, draw)


# --- the per-round set ----------------------------------------------------------------
CUMULATIVE = ("posterior_means", "selection_heatmap", "calibration")


def make_round_plots(run_dir: str | Path, round_: int, out_dir: str | Path,
                     every: int = 10, refresh: bool = True) -> list[Path]:
    """The plots of committed round `round_`, under `out_dir` (a run's `plots/`):

    - `round_NNNNN/score_vs_mean_round_NNNNN.png`, every round but 0 (nothing selected);
    - `posterior_means.png`, `selection_heatmap.png`, `calibration.png`: the cumulative
      plots, redrawn through `round_` when `refresh` is set and `round_` is the newest
      published round, so they are current however the run ends (stopped early, resumed
      past its planned rounds), not only at a planned last round;
    - a snapshot of the cumulative ones in `round_NNNNN/` every `every` rounds and at
      round 0: a hard link to the file just refreshed (no second copy), or drawn through
      `round_` when plotting an older round (a tracking backfill), which leaves the
      current ones alone."""
    out = Path(out_dir)
    tag = round_name(round_)
    paths: list[Path] = []
    if round_ > 0:
        paths.append(plot_score_vs_mean(run_dir, round_, out / tag / f"score_vs_mean_{tag}.png"))
    newest = round_ >= published_rounds(run_dir)[-1]
    snapshot = round_ == 0 or (every > 0 and round_ % every == 0)
    draw = {"posterior_means": plot_posterior_means,
            "selection_heatmap": plot_selection_heatmap, "calibration": plot_calibration}
    for name in CUMULATIVE[:1] if round_ == 0 else CUMULATIVE:
        kept = out / tag / f"{name}_{tag}.png"
        if refresh and newest:
            current = draw[name](run_dir, out / f"{name}.png", through_round=round_)
            paths.append(current)
            if snapshot:
                paths.append(link_file(current, kept))
        elif snapshot:
            paths.append(draw[name](run_dir, kept, through_round=round_))
    return paths


def link_file(src: str | Path, dst: str | Path) -> Path:
    """Put `src` at `dst` as a hard link (a copy where the file system has none, or
    across file systems), replacing `dst` atomically. The plots and the tables are
    never modified in place (a redraw renames a new file over the old), so two names
    of one file never see a change meant for one."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and os.path.samefile(src, dst):
        return dst
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst
