"""The figures stages and notebooks draw: UMAP panels, training curves, attribution maps.

Every function returns a ``matplotlib.figure.Figure`` that is not attached to pyplot (nothing leaks in
batch jobs; notebooks display it by leaving it as the cell's value). Conventions: unlabelled cells
(missing, "NA", "unassigned") are drawn first in light grey under the labelled ones; a category keeps
its colour in every panel of a figure; legends sit outside the axes, and columns with too many
categories for a legend are labelled at their centroids.
"""

from __future__ import annotations

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
