"""The figures stages and notebooks draw: UMAP panels, training curves, QC distributions and counts,
doublet scores, ATAC QC, annotation purity and composition, attribution maps, ground-truth checks and
the annotation's confusion against the truth.

Every function returns a ``matplotlib.figure.Figure`` that is not attached to pyplot (nothing leaks in
batch jobs; notebooks display it by leaving it as the cell's value). Conventions: unlabelled cells
(missing, "NA", "unassigned") are drawn first in light grey under the labelled ones; a category keeps
its colour in every panel of a figure; legends sit outside the axes, and columns with too many
categories for a legend are labelled at their centroids.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

UNLABELLED = ("NA", "nan", "None", "", "unassigned", "<NA>")
UNLABELLED_COLOUR = "#d9d9d9"
MAX_LEGEND = 30


def _palette(n: int) -> list:
    from matplotlib import colormaps

    if n <= 10:
        return list(colormaps["tab10"].colors)[:n]
    if n <= 20:
        return list(colormaps["tab20"].colors)[:n]
    return [colormaps["gist_ncar"](x) for x in np.linspace(0.05, 0.95, n)]


def _title(key: str, titles: Mapping[str, str] | None) -> str:
    if titles and key in titles:
        return titles[key]
    return key.replace("_", " ")


def _grid(n_panels: int, ncols: int, panel_size: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    ncols = max(1, min(ncols, n_panels))
    nrows = -(-n_panels // ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def umap_panels(
    coords: pd.DataFrame,
    frame: pd.DataFrame,
    keys: Sequence[str | None],
    titles: Mapping[str, str] | None = None,
    ncols: int = 3,
    size: float | None = None,
) -> Figure:
    """One UMAP panel per categorical column of ``frame`` (rows matched to ``coords`` by index)."""
    keys = [k for k in dict.fromkeys(keys) if k is not None and k in frame]
    if not keys:
        raise ValueError(f"none of the columns {list(keys)} is in the table (columns: {list(frame.columns)})")
    xy = coords.to_numpy(dtype=float)[:, :2]
    size = size if size is not None else float(np.clip(30_000 / max(len(coords), 1), 0.5, 12))
    fig, axes = _grid(len(keys), ncols, (5.2, 4.2))
    for ax, key in zip(axes, keys):
        values = frame[key].reindex(coords.index).astype(object).where(lambda v: v.notna(), "NA").astype(str)
        unlabelled = values.isin(UNLABELLED).to_numpy()
        cats = sorted(values[~unlabelled].unique(), key=_natural)
        colours = dict(zip(cats, _palette(len(cats))))
        if unlabelled.any():
            ax.scatter(*xy[unlabelled].T, s=size, color=UNLABELLED_COLOUR, label="unlabelled", rasterized=True)
        for cat in cats:
            m = (values == cat).to_numpy()
            ax.scatter(*xy[m].T, s=size, color=colours[cat], label=cat, rasterized=True)
        if len(cats) <= MAX_LEGEND:
            ax.legend(
                markerscale=max(1.0, 6 / size) ** 0.5 * 2,
                fontsize=8,
                loc="center left",
                bbox_to_anchor=(1.0, 0.5),
                frameon=False,
                ncols=1 if len(cats) <= 15 else 2,
            )
        else:  # too many for a legend: name each category at its centroid
            for cat in cats:
                m = (values == cat).to_numpy()
                cx, cy = np.median(xy[m], axis=0)
                ax.text(cx, cy, cat, fontsize=7, ha="center", va="center", weight="bold")
        ax.set_title(f"{_title(key, titles)} ({len(cats)})", fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("UMAP1", fontsize=9)
        ax.set_ylabel("UMAP2", fontsize=9)
    return fig


def _natural(value: str):
    """Sort '2' before '10' (Leiden clusters), strings alphabetically."""
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def training_curves(history: pd.DataFrame, title: str, max_panels: int = 9, ncols: int = 3) -> Figure:
    """Train and validation curves of the logged losses, the ELBO and reconstruction first, in a grid."""
    keys = [c[: -len("_train")] for c in history.columns if c.endswith("_train")]
    keys = sorted(keys, key=lambda k: (k != "elbo", k != "reconstruction_loss", k))[:max_panels]
    if not keys:
        raise ValueError(f"no '*_train' columns in the training history (columns: {list(history.columns)})")
    fig, axes = _grid(len(keys), ncols, (4.2, 3.0))
    for ax, key in zip(axes, keys):
        for split, style in (("train", "-"), ("validation", "--")):
            col = f"{key}_{split}"
            if col in history and history[col].notna().any():
                ax.plot(history.index, history[col].astype(float), style, label=split)
        ax.set_title(_title(key, None), fontsize=11)
        ax.set_xlabel("epoch", fontsize=9)
        ax.tick_params(labelsize=8)
    axes[0].legend(fontsize=9)
    fig.suptitle(title, fontsize=12)
    return fig


def attribution_panels(coords: pd.DataFrame, attribution: pd.DataFrame, columns: Sequence[str] | None = None) -> Figure:
    """UMAPs coloured by modality attribution: the log2 ratio on a diverging scale centred at 0 that
    spans the data (1st-99th percentile), the per-modality Jacobian norms on a sequential one."""
    from matplotlib.colors import TwoSlopeNorm

    if columns is None:
        columns = [c for c in attribution if c.startswith("log2_ratio_")]
        columns += [c for c in attribution if c.startswith("frob_") and "_decoder_" not in c]
    xy = coords.to_numpy(dtype=float)[:, :2]
    fig, axes = _grid(len(columns), 3, (5.0, 4.0))
    for ax, col in zip(axes, columns):
        v = attribution[col].reindex(coords.index).to_numpy(dtype=float)
        if col.startswith("log2_ratio_"):
            lo, hi = np.nanpercentile(v, [1, 99])
            lo, hi = min(lo, -1e-6), max(hi, 1e-6)
            image = ax.scatter(*xy.T, c=v, s=2, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, lo, hi), rasterized=True)
        else:
            image = ax.scatter(*xy.T, c=v, s=2, cmap="viridis", rasterized=True)
        ax.set_title(attribution_title(col), fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def attribution_title(column: str) -> str:
    """Readable names for the attribution columns (``frob_atac`` -> 'ATAC latent block: Jacobian norm')."""
    if column.startswith("log2_ratio_"):
        a, _, b = column.removeprefix("log2_ratio_").partition("_")
        return f"log2 influence of the {a.upper()} vs {b.upper()} latent block" if b else column
    if column.startswith("frob_") and "_decoder_" in column:
        decoder, _, block = column.removeprefix("frob_").partition("_decoder_")
        return f"{block.removesuffix('_block').upper()} block -> {decoder.upper()} decoder: Jacobian norm"
    if column.startswith("frob_"):
        return f"influence of the {column.removeprefix('frob_').upper()} latent block (Jacobian norm)"
    return column.replace("_", " ")


def setup_notebook(study: str, dpi: int = 90) -> None:
    """First cell of every notebook: inline figures (a Figure left as a cell's value is drawn), their
    resolution, and which study and interpreter run the notebook."""
    import matplotlib

    try:
        from IPython import get_ipython
    except ImportError:
        shell = None
    else:
        shell = get_ipython()
    if shell is not None:
        shell.run_line_magic("matplotlib", "inline")
    matplotlib.rcParams["figure.dpi"] = dpi
    print(f"study {study}; kernel python {sys.executable}")


# --------------------------------------------------------------------------------------------------
# Cell QC, doublets, ATAC QC
# --------------------------------------------------------------------------------------------------


def qc_histograms(
    obs: pd.DataFrame,
    dataset_key: str = "dataset",
    metrics: Sequence[str] = ("total_counts", "n_genes", "mt_frac"),
    thresholds: Mapping[str, Mapping[str, float]] | None = None,
    log_scale: Sequence[str] = ("total_counts", "n_genes"),
    bins: int = 50,
) -> Figure:
    """Histograms of QC metrics: one row per dataset, one column per metric; dashed lines mark the
    dataset's thresholds (``{"default": {...}, dataset: {...}}``, as :func:`rvi.qc.cell_qc_table`)."""
    from rvi.qc import THRESHOLD_KEYS, thresholds_for

    datasets = sorted(obs[dataset_key].astype(str).unique()) if dataset_key in obs.columns else [""]
    fig = Figure(figsize=(3.2 * len(metrics), 2.4 * len(datasets)), layout="constrained")
    axes = fig.subplots(len(datasets), len(metrics), squeeze=False)
    for i, ds in enumerate(datasets):
        sub = obs if ds == "" else obs[obs[dataset_key].astype(str) == ds]
        limits = thresholds_for(thresholds or {}, ds)
        for j, metric in enumerate(metrics):
            ax = axes[i, j]
            x = sub[metric].to_numpy(dtype=np.float64)
            x = x[np.isfinite(x)]
            if metric in log_scale:
                x = np.log10(np.maximum(x, 1))
            ax.hist(x, bins=bins, color="0.4")
            for key, value in limits.items():
                if THRESHOLD_KEYS[key][0] == metric:
                    ax.axvline(np.log10(max(value, 1)) if metric in log_scale else value, color="C3", ls="--")
            ax.set_xlabel(f"log10 {metric}" if metric in log_scale else metric)
            if j == 0:
                ax.set_ylabel(f"{ds} cells" if ds else "cells")
    return fig


def qc_counts(table: pd.DataFrame, library_key: str) -> Figure:
    """Cells kept and removed per library (stacked bars) and removed cells per failed check, from a
    ``cell_qc.csv`` table (``pass_qc``, ``fail_reasons``; a cell failing two checks counts in both)."""
    passed = table["pass_qc"].astype(bool)
    per_lib = pd.crosstab(table[library_key].astype(str), passed.map({True: "kept", False: "removed"}))
    per_lib = per_lib.reindex(columns=["kept", "removed"], fill_value=0)
    per_lib = per_lib.loc[sorted(per_lib.index, key=_natural)]
    reasons = table.loc[~passed, "fail_reasons"].fillna("").astype(str).str.split(",").explode()
    reasons = reasons[reasons != ""].value_counts()
    fig = Figure(figsize=(max(6.0, 0.35 * len(per_lib) + 4.5), 3.4), layout="constrained")
    ax_lib, ax_why = fig.subplots(1, 2, width_ratios=[max(len(per_lib), 3), 3])
    x = np.arange(len(per_lib))
    ax_lib.bar(x, per_lib["kept"], color="0.45", label="kept")
    ax_lib.bar(x, per_lib["removed"], bottom=per_lib["kept"], color="C3", label="removed")
    ax_lib.set_xticks(x, per_lib.index, rotation=90, fontsize=8)
    ax_lib.set_ylabel("cells")
    ax_lib.set_title(f"{int(passed.sum())} of {len(table)} cells kept", fontsize=10)
    ax_lib.legend(fontsize=8, frameon=False)
    if len(reasons):
        ax_why.barh(reasons.index[::-1], reasons.to_numpy()[::-1], color="C3")
    else:
        ax_why.text(0.5, 0.5, "no cell removed", ha="center", va="center", transform=ax_why.transAxes)
        ax_why.set_yticks([])
    ax_why.set_xlabel("cells removed")
    ax_why.set_title("by failed check", fontsize=10)
    return fig


def library_cells(summary: pd.DataFrame, library_key: str) -> Figure:
    """Cells per library of the merge_rna QC summary; libraries dropped by the library rule in red."""
    fig = Figure(figsize=(max(4.0, 0.5 * len(summary)), 3.0), layout="constrained")
    ax = fig.subplots()
    ax.bar(summary[library_key].astype(str), summary["n_cells"], color=np.where(summary["passed"], "0.4", "C3"))
    ax.set_ylabel("cells")
    ax.set_title("red: dropped by the library rule", fontsize=10)
    ax.tick_params(axis="x", rotation=90)
    return fig


def doublet_scores(scores: pd.DataFrame, library_key: str = "library", bins: int = 40) -> Figure:
    """Histogram of doublet scores per library (log counts); predicted doublets in red, the threshold dashed."""
    libs = [lib for lib in pd.unique(scores[library_key].astype(str))]
    ncol = min(3, max(1, len(libs)))
    nrow = -(-len(libs) // ncol)
    fig = Figure(figsize=(3.2 * ncol, 2.4 * nrow), layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, lib in zip(axes, libs):
        sub = scores[scores[library_key].astype(str) == lib]
        s = sub["doublet_score"].to_numpy(dtype=np.float64)
        ok = np.isfinite(s)
        if not ok.any():
            ax.text(0.5, 0.5, str(sub["scrublet_status"].iloc[0]), ha="center", va="center", transform=ax.transAxes)
        else:
            pred = sub["predicted_doublet"].fillna(False).to_numpy(dtype=bool)
            edges = np.linspace(0, max(s[ok].max(), 1e-3), bins + 1)
            ax.hist([s[ok & ~pred], s[ok & pred]], bins=edges, stacked=True, color=["0.5", "C3"], log=True)
            if (ok & pred).any():
                # Scrublet calls a doublet above its threshold: the line sits at the lowest called score.
                cut = float(s[ok & pred].min())
                ax.axvline(cut, color="k", ls="--", lw=1)
                ax.text(cut, 0.95, f" threshold {cut:.2f}", transform=ax.get_xaxis_transform(), fontsize=7, va="top")
        ax.set_title(lib, fontsize=9)
        ax.set_xlabel("doublet score")
    for ax in axes[len(libs) :]:
        ax.set_visible(False)
    return fig


_LOG_METRICS = ("n_fragment", "n_features_accessible")


def atac_qc_histograms(qc: pd.DataFrame, library_key: str, bins: int = 40) -> Figure:
    """Per-library distributions of the ATAC QC metrics (fragments, TSS enrichment, mitochondrial
    fraction, accessible features), plus TSS enrichment against fragments when both are known."""
    metrics = [
        c for c in ("n_fragment", "tsse", "frac_mito", "n_features_accessible") if c in qc and qc[c].nunique() > 1
    ]  # a constant column (no mitochondrial fragments) has nothing to show
    scatter = "tsse" in metrics and "n_fragment" in metrics
    fig, axes = _grid(len(metrics) + scatter, 3, (3.8, 3.0))
    libs = sorted(qc[library_key].astype(str).unique(), key=_natural)
    for ax, metric in zip(axes, metrics):
        for lib in libs:
            x = qc.loc[qc[library_key].astype(str) == lib, metric].dropna()
            x = np.log10(np.maximum(x, 1)) if metric in _LOG_METRICS else x
            ax.hist(x, bins=bins, histtype="step", label=lib)
        ax.set_xlabel(("log10 " if metric in _LOG_METRICS else "") + metric)
    if metrics and len(libs) <= MAX_LEGEND:
        axes[0].legend(fontsize=7, frameon=False)
    if scatter:
        ax = axes[-1]
        ax.scatter(np.log10(np.maximum(qc["n_fragment"], 1)), qc["tsse"], s=2, alpha=0.5, rasterized=True)
        ax.set_xlabel("log10 fragments")
        ax.set_ylabel("TSS enrichment")
    return fig


# --------------------------------------------------------------------------------------------------
# Annotation, attribution, ground truth
# --------------------------------------------------------------------------------------------------


def purity_bars(purity: pd.DataFrame, min_fraction: float = 0.5) -> Figure:
    """Majority-label fraction per cluster (``annotation_purity.csv``), the vote's cut-off dashed."""
    fig = Figure(figsize=(max(4.0, 0.3 * len(purity)), 3.0), layout="constrained")
    ax = fig.subplots()
    ax.bar(purity.index.astype(str), purity["fraction"], color="0.4")
    ax.axhline(min_fraction, color="C3", ls="--")
    ax.set_ylabel("majority fraction")
    ax.set_xlabel("cluster")
    ax.tick_params(axis="x", rotation=90)
    return fig


def composition_bars(table: pd.DataFrame, by: str, label: str) -> Figure:
    """Fraction of each ``label`` (unassigned included) within each ``by`` group, stacked."""
    groups = table[label].astype(object).where(table[label].notna(), "unassigned").astype(str)
    comp = pd.crosstab(table[by].astype(str), groups, normalize="index")
    fig = Figure(figsize=(8.0, 0.5 * len(comp) + 1.5), layout="constrained")
    ax = fig.subplots()
    colours = dict(zip(comp.columns, _palette(len(comp.columns))))
    left = np.zeros(len(comp))
    for col in comp.columns:
        ax.barh(comp.index, comp[col], left=left, color=colours[col], label=col, height=0.8)
        left += comp[col].to_numpy()
    ax.set_xlabel(f"fraction of cells ({label})")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    return fig


def attribution_by_group(attribution: pd.DataFrame, groups: pd.Series, column: str | None = None) -> Figure:
    """Box plot of a log2 attribution ratio per group (cell type), groups ordered by their median."""
    column = column or next(c for c in attribution if c.startswith("log2_ratio_"))
    frame = pd.DataFrame(
        {"group": groups.reindex(attribution.index).fillna("unassigned").astype(str), "ratio": attribution[column]}
    )
    order = frame.groupby("group")["ratio"].median().sort_values().index
    fig = Figure(figsize=(max(4.0, 0.45 * len(order)), 3.2), layout="constrained")
    ax = fig.subplots()
    ax.boxplot([frame.loc[frame["group"] == g, "ratio"].dropna() for g in order], showfliers=False)
    ax.set_xticks(range(1, len(order) + 1), order, rotation=90)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_ylabel(attribution_title(column), fontsize=9)
    return fig


def ground_truth_checks(report: pd.DataFrame) -> Figure:
    """The ground-truth report's checks against their thresholds (green: passed, red: failed)."""
    checks = report.dropna(subset=["threshold"])
    fig = Figure(figsize=(1.4 * len(checks) + 2, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.bar(checks["check"], checks["value"], color=np.where(checks["passed"].astype(bool), "C2", "C3"))
    ax.scatter(checks["check"], checks["threshold"], marker="_", s=600, color="k", label="threshold")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", rotation=30)
    return fig


def confusion_fractions(counts: pd.DataFrame, unassigned: str = "unassigned") -> pd.DataFrame:
    """Row-normalised confusion matrix from a long table of ``true``, ``predicted``, ``n_cells``.

    Rows are the true labels, columns the predicted ones in the same order (so the diagonal is the agreement),
    then labels only ever predicted, then ``unassigned`` (a missing prediction) last. Each row sums to 1: the
    fraction of that label's cells given each prediction.
    """
    missing = {"true", "predicted", "n_cells"} - set(counts.columns)
    if missing:
        raise ValueError(f"confusion table lacks column(s) {sorted(missing)} (has {list(counts.columns)})")
    frame = counts.assign(
        true=counts["true"].astype(str),
        predicted=counts["predicted"].astype(object).where(counts["predicted"].notna(), unassigned).astype(str),
    )
    matrix = frame.pivot_table(index="true", columns="predicted", values="n_cells", aggfunc="sum", fill_value=0)
    rows = sorted(matrix.index, key=_natural)
    extra = sorted((c for c in matrix.columns if c not in set(rows) and c != unassigned), key=_natural)
    cols = [*rows, *extra] + ([unassigned] if unassigned in matrix.columns else [])
    matrix = matrix.reindex(index=rows, columns=cols, fill_value=0).astype(float)
    totals = matrix.sum(axis=1)
    return matrix.div(totals.where(totals > 0), axis=0).fillna(0.0)


def annotation_confusion(table: pd.DataFrame, levels: Sequence[str] | None = None) -> Figure:
    """One heatmap per annotation level of the predicted label (columns) against the true one (rows),
    row-normalised (:func:`confusion_fractions`), each cell's fraction printed when the matrix is small.

    ``table``: the ground-truth stage's ``ground_truth_confusion.csv`` (level, true, predicted, n_cells)."""
    levels = list(levels) if levels is not None else list(dict.fromkeys(table["level"].astype(str)))
    levels = [lv for lv in levels if (table["level"].astype(str) == lv).any()]
    if not levels:
        raise ValueError(f"no annotation level to draw (levels in the table: {sorted(set(table['level']))})")
    mats = {lv: confusion_fractions(table.loc[table["level"].astype(str) == lv]) for lv in levels}
    side = max(max(m.shape) for m in mats.values())
    fig, axes = _grid(len(levels), len(levels), (max(3.2, 0.45 * side + 2.0), max(3.0, 0.4 * side + 1.6)))
    for ax, (level, mat) in zip(axes, mats.items()):
        image = ax.imshow(mat.to_numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(mat.shape[1]), mat.columns, rotation=90, fontsize=9)
        ax.set_yticks(range(mat.shape[0]), mat.index, fontsize=9)
        ax.set_xlabel("predicted", fontsize=10)
        ax.set_ylabel("true", fontsize=10)
        n = int(table.loc[table["level"].astype(str) == level, "n_cells"].sum())
        ax.set_title(f"{_title(level, None)} ({n} cells)", fontsize=11)
        if max(mat.shape) <= 15:
            for (i, j), value in np.ndenumerate(mat.to_numpy()):
                if value >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{value:.2f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if value > 0.6 else "black",
                    )
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="fraction of the true label's cells")
    return fig
