"""Figures of the evaluate stage, in the style of :mod:`rvi.plots` (detached matplotlib Figures)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from rvi.metrics.neighbourhood import FAILURE_SEVERITY

#: Headline metrics where lower is better (H2 sd, H4 gap, H5/H9 isolation ratio, H6/H10 discrepancy, H13 failures).
LOWER_IS_BETTER = {"H2", "H4", "H5", "H6", "H8", "H9", "H10", "H13"}
FAILURE_COLOURS = {
    "forced_merge": "#b2182b",
    "false_merge": "#ef8a62",
    "wrong_pairing": "#fddbc7",
    "under_integration": "#67a9cf",
    "noisy": "#d1e5f0",
    "merged_but_related": "#f7f7a1",
    "ideal": "#1a9850",
    "not_applicable": "#d9d9d9",
}


def metric_heatmap(table: pd.DataFrame, title: str = "metrics across embeddings") -> Figure:
    """Embeddings x metrics, each column coloured by rank within it (green = best, NaN grey), values written."""
    values = table.apply(pd.to_numeric, errors="coerce")
    values = values.loc[:, values.notna().any()]
    score = values.copy()
    for col in score:
        v = score[col]
        lo, hi = v.min(), v.max()
        scaled = (v - lo) / (hi - lo) if hi > lo else v * 0 + 0.5
        score[col] = 1 - scaled if col in LOWER_IS_BETTER else scaled
    n_rows, n_cols = values.shape
    fig = Figure(figsize=(max(6.0, 0.62 * n_cols + 2.5), max(2.5, 0.42 * n_rows + 1.4)), layout="constrained")
    ax = fig.subplots()
    masked = np.ma.masked_invalid(score.to_numpy(dtype=float))
    from matplotlib import colormaps

    cmap = colormaps["RdYlGn"].with_extremes(bad="#e0e0e0")
    ax.imshow(masked, cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for i in range(n_rows):
        for j in range(n_cols):
            v = values.iat[i, j]
            ax.text(j, i, "NaN" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(n_cols), [str(c).replace("_", "\n") for c in values.columns], fontsize=8)
    ax.set_yticks(range(n_rows), values.index.astype(str), fontsize=9)
    ax.set_title(title + " (colour: rank within column; H2, H4-H6, H8-H10, H13: lower is better)", fontsize=10)
    return fig


def correlation_umaps(
    coords: pd.DataFrame,
    per_cell: Mapping[str, pd.DataFrame],
    columns: Sequence[str] = ("corr_same_library", "corr_cross_library", "corr_cross_dataset"),
    layout_name: str = "rvi",
) -> Figure:
    """One row per embedding, one panel per correlation column, all on one shared UMAP layout."""
    columns = [c for c in columns if any(c in pc and pc[c].notna().any() for pc in per_cell.values())]
    names = list(per_cell)
    ncols = max(len(columns), 1)
    fig = Figure(figsize=(3.6 * ncols + 0.8, 3.0 * len(names)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(names), ncols, squeeze=False))
    xy = coords.to_numpy(dtype=float)[:, :2]
    size = float(np.clip(20_000 / max(len(coords), 1), 0.5, 8))
    image = None
    for i, name in enumerate(names):
        pc = per_cell[name].reindex(coords.index)
        for j, col in enumerate(columns):
            ax = axes[i, j]
            v = pc[col].to_numpy(dtype=float) if col in pc else np.full(len(pc), np.nan)
            nan = ~np.isfinite(v)
            ax.scatter(*xy[nan].T, s=size, color="#d9d9d9", rasterized=True)
            image = ax.scatter(*xy[~nan].T, c=v[~nan], s=size, cmap="viridis", vmin=-0.2, vmax=1, rasterized=True)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col.removeprefix("corr_").replace("_", " "), fontsize=10)
            if j == 0:
                ax.set_ylabel(name, fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="neighbourhood marker correlation (grey: no neighbours)")
    fig.suptitle(f"marker-gene correlation with neighbours, on the {layout_name} UMAP", fontsize=11)
    return fig


def isolation_fractions(per_cell: Mapping[str, pd.DataFrame], masks=("cross_library", "cross_dataset")) -> pd.DataFrame:
    """Observed and expected (random graph) fraction of cells without a neighbour in each cross level."""
    rows = []
    for name, pc in per_cell.items():
        for mask in masks:
            if f"n_target_{mask}" not in pc or pc[f"n_{mask}"].isna().all():
                continue
            eligible = (pc[f"n_target_{mask}"] > 0) & (pc["degree"] > 0)
            if not eligible.any():
                continue
            rows.append(
                {
                    "embedding": name,
                    "level": mask,
                    "observed": float((pc.loc[eligible, f"n_{mask}"] == 0).mean()),
                    "expected": float(pc.loc[eligible, f"p_isolated_{mask}"].mean()),
                }
            )
    return pd.DataFrame(rows, columns=["embedding", "level", "observed", "expected"])


def isolation_bars(per_cell: Mapping[str, pd.DataFrame]) -> Figure:
    """Bars of the observed fraction of isolated cells per embedding and level, the random expectation marked."""
    frac = isolation_fractions(per_cell)
    levels = list(dict.fromkeys(frac["level"])) or ["cross_library"]
    fig = Figure(figsize=(4.2 * len(levels), 3.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(levels), squeeze=False).ravel())
    for ax, level in zip(axes, levels):
        sub = frac[frac["level"] == level]
        x = np.arange(len(sub))
        ax.bar(x, sub["observed"], color="#4c72b0", label="observed")
        ax.scatter(x, sub["expected"], color="black", marker="_", s=300, zorder=3, label="random graph")
        ax.set_xticks(x, sub["embedding"], rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("fraction without such neighbours", fontsize=9)
        ax.set_title(f"isolated cells: {level.replace('_', ' ')}", fontsize=10)
    axes[0].legend(fontsize=8)
    return fig


def failure_composition(per_cell: Mapping[str, pd.DataFrame]) -> Figure:
    """Stacked bars: share of cells per most severe failure mode, one bar per embedding."""
    order = [*FAILURE_SEVERITY, "not_applicable"]
    comp = (
        pd.DataFrame({name: pc["failure_mode"].value_counts(normalize=True) for name, pc in per_cell.items()})
        .reindex(order)
        .fillna(0.0)
    )
    fig = Figure(figsize=(max(4.5, 0.8 * comp.shape[1] + 3.5), 3.6), layout="constrained")
    ax = fig.subplots()
    bottom = np.zeros(comp.shape[1])
    for mode in order:
        ax.bar(comp.columns, comp.loc[mode], bottom=bottom, color=FAILURE_COLOURS[mode], label=mode.replace("_", " "))
        bottom += comp.loc[mode].to_numpy()
    ax.set_ylabel("fraction of cells", fontsize=9)
    ax.tick_params(axis="x", rotation=45, labelsize=8)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title("most severe failure mode per cell", fontsize=10)
    return fig
