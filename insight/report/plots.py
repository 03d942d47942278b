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
- `make_round_plots`       the set for one round (the cumulative ones every N rounds)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from insight.report.audit import Need, RunView, published_rounds, round_candidates, with_view

DPI = 100
MAX_LEVELS = 8            # difficulty levels drawn as separate bands
MAX_HEATMAP_ROWS = 1000   # above this, prompts are pooled into bins of rows


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


def _difficulties(v: RunView) -> dict[str, int]:
    t = v.sql("SELECT prompt_id, any_value(difficulty) AS d FROM prompts "
              "WHERE difficulty IS NOT NULL GROUP BY prompt_id")
    return dict(zip(t.column("prompt_id").to_pylist(), t.column("d").to_pylist()))


# --- posterior means over rounds ------------------------------------------------------
def plot_posterior_means(run_dir: str | Path, out_png: str | Path,
                         n_trajectories: int = 24) -> Path:
    """Posterior mean of every training prompt over rounds: median and quartile band per
    difficulty level (overall 5-95 and 25-75 bands when the prompts carry no difficulty
    or have too many levels), plus a fixed sample of individual trajectories."""

    def draw(v: RunView) -> Path:
        diff = _difficulties(v)
        levels = sorted({d for d in diff.values()})
        by_level = 0 < len(levels) <= MAX_LEVELS
        if by_level:
            v.con.register("_diff", pa.table({"prompt_id": list(diff),
                                              "difficulty": list(diff.values())}))
            group = "coalesce(d.difficulty, -1)"
            join = "LEFT JOIN _diff d USING (prompt_id)"
        else:
            group, join = "0", ""
        q = v.sql(f"""
            SELECT p.round, {group} AS level, count(*) AS n,
                   quantile_cont(p.alpha / (p.alpha + p.beta),
                                 [0.05, 0.25, 0.5, 0.75, 0.95]) AS q
            FROM posteriors p {join} GROUP BY ALL ORDER BY level, p.round""")
        if q.num_rows == 0:
            return _empty(out_png, "posterior means", "no posterior published yet")
        sample = v.sql(f"""
            WITH ids AS (SELECT DISTINCT prompt_id FROM posteriors
                         ORDER BY hash(prompt_id), prompt_id LIMIT {int(n_trajectories)})
            SELECT prompt_id, round, alpha / (alpha + beta) AS mean FROM posteriors
            WHERE prompt_id IN (SELECT prompt_id FROM ids) ORDER BY prompt_id, round""")
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
        ax.set_title("Posterior mean of the training prompts over rounds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
        return _save(fig, out_png)

    return with_view(run_dir, {"posteriors": Need()}, draw)


# --- score against posterior mean, one round ------------------------------------------
def plot_score_vs_mean(run_dir: str | Path, round_: int, out_png: str | Path) -> Path:
    """Every candidate of `round_`: its score against the posterior mean it was scored
    at; selected candidates highlighted, refills (gen_batch > 0) as triangles, and the
    lowest selected score drawn as the cut."""
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
    for refill, marker in ((False, "o"), (True, "^")):
        b = (batch > 0) == refill
        m = ok & b & ~sel
        if m.any():
            ax.scatter(mean[m], score[m], s=12, c="0.6", marker=marker, lw=0,
                       label="not selected" + (" (refill)" if refill else ""))
        m = ok & b & sel
        if m.any():
            ax.scatter(mean[m], score[m], s=36, c="C3", marker=marker, edgecolors="k",
                       linewidths=0.5, label="selected" + (" (refill)" if refill else ""),
                       zorder=3)
    if (sel & ok & (batch == 0)).any():
        cut = score[sel & ok & (batch == 0)].min()
        ax.axhline(cut, color="C3", ls="--", lw=1, label=f"cut {cut:.3g}")
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("posterior mean at selection (after round %d)" % (round_ - 1))
    ax.set_ylabel("score")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, out_png)


# --- selection heat map -----------------------------------------------------------------
def plot_selection_heatmap(run_dir: str | Path, out_png: str | Path) -> Path:
    """Prompts (rows) x rounds (columns); a selected cell is coloured by the success
    rate its rollouts had that round, unselected cells are light grey. Rows are sorted by
    difficulty, then by the round of first selection (never selected last). With more
    than MAX_HEATMAP_ROWS prompts, consecutive rows are pooled and a cell shows the share
    of its prompts selected."""

    def draw(v: RunView) -> Path:
        prompts = v.sql("""
            WITH train AS (SELECT DISTINCT prompt_id FROM posteriors),
            first AS (SELECT prompt_id, min(round) AS first_round FROM selections
                      WHERE selected GROUP BY prompt_id)
            SELECT t.prompt_id, p.difficulty, f.first_round
            FROM train t LEFT JOIN first f USING (prompt_id)
            LEFT JOIN (SELECT prompt_id, any_value(difficulty) AS difficulty FROM prompts
                       GROUP BY prompt_id) p USING (prompt_id)
            ORDER BY p.difficulty NULLS LAST, f.first_round NULLS LAST, t.prompt_id""")
        cells = v.sql("""
            SELECT s.prompt_id, s.round, avg(o.success::INT) AS rate
            FROM selections s LEFT JOIN rollouts o
                 ON o.round = s.round AND o.prompt_id = s.prompt_id
                AND o.gen_batch = s.gen_batch
            WHERE s.selected GROUP BY s.prompt_id, s.round""")
        rounds = [r for r in v.rounds if r > 0]
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
            ax_d.imshow(diff[:, None], aspect="auto", interpolation="nearest",
                        cmap=colormaps["viridis"],
                        extent=(0, 1, grid.shape[0] - 0.5, -0.5))
            ax_d.set_xticks([])
            ax_d.set_yticks([])
            ax_d.set_ylabel("prompts, by difficulty "
                            f"({_level_range(levels)}) then first selection")
        else:
            ax.set_ylabel("prompts, by first selection")
        return _save(fig, out_png)

    last = published_rounds(run_dir)[-1:]
    need = {"selections": Need(where="selected"), "rollouts": Need(),
            "posteriors": Need(tuple(last))}
    return with_view(run_dir, need, draw)


def _level_range(levels: list[float]) -> str:
    if not levels:
        return "n/a"
    lo, hi = levels[0], levels[-1]
    return f"{lo:g} top to {hi:g} bottom" if lo != hi else f"{lo:g}"


# --- calibration ------------------------------------------------------------------------
def plot_calibration(run_dir: str | Path, out_png: str | Path, bins: int = 10,
                     since_round: int = 1) -> Path:
    """Posterior mean at selection time (the prediction) against the success rate its
    rollouts then had, pooled in `bins` equal-width bins of the mean, with binomial
    standard errors, the diagonal, and the number of groups per bin. Only rounds from
    `since_round` on (the policy drifts, so recent rounds say more)."""

    def draw(v: RunView) -> Path:
        t = v.sql("""
            WITH obs AS (
                SELECT round, prompt_id, gen_batch, sum(success::INT) AS s, count(*) AS k
                FROM rollouts GROUP BY ALL)
            SELECT s.mean AS m, o.s, o.k
            FROM selections s JOIN obs o USING (round, prompt_id, gen_batch)
            WHERE s.selected AND s.mean IS NOT NULL""")
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
        ax.set_title(f"{title}\n(rounds >= {since_round}; weighted |gap| {gap:.3f})",
                     fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
        ax_n.bar(edges[:-1], groups, width=np.diff(edges), align="edge", color="C0",
                 alpha=0.6, edgecolor="white")
        ax_n.set_xlim(0, 1)
        ax_n.set_xlabel("posterior mean bin")
        ax_n.set_ylabel("groups")
        return _save(fig, out_png)

    since = f"round >= {int(since_round)}"
    need = {"selections": Need(where=f"selected AND {since}"), "rollouts": Need(where=since)}
    return with_view(run_dir, need, draw)


# --- the per-round set ----------------------------------------------------------------
def make_round_plots(run_dir: str | Path, round_: int, out_dir: str | Path,
                     every: int = 10, final: bool = False) -> list[Path]:
    """The plots for round `round_` in `out_dir`: score vs mean every round; the
    cumulative ones (posterior means, heat map, calibration) every `every` rounds, and
    when `final` is set. Round 0 has only the prior: its posterior plot."""
    out = Path(out_dir)
    tag = f"round_{round_:05d}"
    paths: list[Path] = []
    if round_ > 0:
        paths.append(plot_score_vs_mean(run_dir, round_, out / f"score_vs_mean_{tag}.png"))
    if final or round_ == 0 or (every > 0 and round_ % every == 0):
        paths.append(plot_posterior_means(run_dir, out / f"posterior_means_{tag}.png"))
        if round_ > 0:
            paths.append(plot_selection_heatmap(run_dir, out / f"selection_heatmap_{tag}.png"))
            paths.append(plot_calibration(run_dir, out / f"calibration_{tag}.png"))
    return paths
