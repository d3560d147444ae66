"""The sections of a study's HTML report, from the files the stages wrote (missing ones become notes)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from rvi.evaluation.scoring import best_per_family
from rvi.report_html import Missing, Section, render_report


def _csv(files: Mapping[str, Path], key: str, **kwargs) -> pd.DataFrame | None:
    path = files.get(key)
    return pd.read_csv(path, **kwargs) if path is not None and path.exists() else None


def _png(files: Mapping[str, Path], key: str, what: str):
    path = files.get(key)
    return path if path is not None and path.exists() else Missing(what)


def qc_figure(cells: pd.DataFrame) -> Figure:
    """Histograms of the per-cell QC metrics, cells kept vs removed."""
    cols = [c for c in ("total_counts", "n_genes", "mt_frac", "doublet_score", "atac_fragments") if c in cells]
    cols = [c for c in cols if cells[c].notna().any()]
    fig = Figure(figsize=(3.3 * max(len(cols), 1), 2.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(len(cols), 1), squeeze=False).ravel())
    kept = cells["pass_qc"].astype(bool)
    for ax, col in zip(axes, cols):
        v = cells[col].astype(float)
        log = col in ("total_counts", "n_genes", "atac_fragments")
        x = np.log10(v.clip(lower=1)) if log else v
        bins = np.histogram_bin_edges(x.dropna(), bins=50)
        ax.hist(x[kept].dropna(), bins=bins, color="#4c72b0", alpha=0.8, label="kept")
        ax.hist(x[~kept].dropna(), bins=bins, color="#dd8452", alpha=0.8, label="removed")
        ax.set_title(("log10 " if log else "") + col.replace("_", " "), fontsize=10)
        ax.tick_params(labelsize=8)
    axes[0].legend(fontsize=8)
    fig.suptitle("cell QC (train_rna.cell_qc)", fontsize=11)
    return fig


def atac_qc_figure(atac_qc: pd.DataFrame) -> Figure:
    """Histograms of the numeric ATAC QC columns."""
    cols = [c for c in atac_qc.columns if pd.api.types.is_numeric_dtype(atac_qc[c]) and atac_qc[c].notna().any()][:4]
    fig = Figure(figsize=(3.3 * max(len(cols), 1), 2.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(len(cols), 1), squeeze=False).ravel())
    for ax, col in zip(axes, cols):
        v = atac_qc[col].astype(float).dropna()
        log = v.min() >= 0 and v.max() > 100
        ax.hist(np.log10(v.clip(lower=1)) if log else v, bins=50, color="#55a868")
        ax.set_title(("log10 " if log else "") + col.replace("_", " "), fontsize=10)
        ax.tick_params(labelsize=8)
    fig.suptitle("ATAC QC", fontsize=11)
    return fig


def summary_cards(cfg: Mapping, files: Mapping[str, Path], composite: pd.DataFrame | None) -> dict[str, object]:
    """The one-screen numbers: cells in / kept, libraries, datasets, models."""
    from rvi.io.h5ad import read_obs

    cov = cfg["covariates"]
    out: dict[str, object] = {"study": cfg["study"]}
    cells = _csv(files, "cells", index_col=0)
    if cells is not None:
        out["cells in (after library QC)"] = f"{len(cells):,}"
        out["cells kept (cell QC)"] = f"{int(cells['pass_qc'].sum()):,} ({cells['pass_qc'].mean():.0%})"
    if files.get("rna") is not None and files["rna"].exists():
        obs = read_obs(str(files["rna"]))
        out["libraries"] = obs[cov["library_key"]].nunique()
        if cov["dataset_key"] and cov["dataset_key"] in obs:
            out["datasets"] = obs[cov["dataset_key"]].nunique()
    if composite is not None:
        out["embeddings scored"] = len(composite)
    out["modalities"] = " + ".join(cfg["modalities"])
    return out


def build_study_report(cfg: Mapping, files: Mapping[str, Path]) -> str:
    """The study report HTML (see :func:`rvi.report_html.render_report`)."""
    composite = _csv(files, "composite", index_col=0)
    headline = _csv(files, "headline", index_col=0)
    scib = _csv(files, "scib", index_col=0)
    notes_path = files.get("per_cell", Path("/nonexistent")) / "notes.csv"
    notes = pd.read_csv(notes_path)["note"].dropna().tolist() if notes_path.exists() else []
    sections = []

    qc_items: list = []
    cells = _csv(files, "cells", index_col=0)
    if cells is not None:
        qc_items.append(qc_figure(cells))
    summary_table = _csv(files, "qc_summary")
    qc_items.append(
        ("library QC (merge_rna)", summary_table) if summary_table is not None else Missing("qc_summary.csv")
    )
    sections.append(Section("Quality control and doublets", qc_items))
    if "atac" in cfg["modalities"]:
        atac = _csv(files, "atac_qc", index_col=0)
        sections.append(Section("ATAC QC", [atac_qc_figure(atac) if atac is not None else Missing("atac_qc.csv")]))

    metric_items: list = []
    if composite is not None:
        metric_items.append(("composite scores (label-free and scib)", composite))
    else:
        metric_items.append(Missing("metrics/composite.csv"))
    metric_items.append(_png(files, "heatmap_png", "metric heatmap"))
    if headline is not None:
        metric_items.append(("label-free headline metrics H1-H14 (random_knn: degree-matched random graph)", headline))
    if scib is not None and scib.drop(columns=["note"], errors="ignore").shape[1]:
        metric_items.append(("scib-metrics (unscaled)", scib))
    metric_items += [
        _png(files, "correlation_png", "correlation UMAPs"),
        _png(files, "isolation_png", "isolation bars"),
        _png(files, "failure_png", "failure-mode composition"),
    ]
    sections.append(Section("Integration metrics", metric_items))

    sections.append(
        Section(
            "RNA model",
            [
                _png(files, "rna_curves_png", "RNA model training curves"),
                _png(files, "rna_umap_png", "RNA model UMAPs by library / dataset / label"),
            ],
        )
    )
    purity = _csv(files, "purity", index_col=0)
    sections.append(
        Section(
            "Annotation", [("annotation purity", purity) if purity is not None else Missing("annotation_purity.csv")]
        )
    )
    if "atac" in cfg["modalities"]:
        sections.append(Section("Candidate regulatory elements", [_png(files, "cre_heatmap", "CRE heatmap")]))
        sections.append(
            Section(
                "Multimodal model",
                [
                    _png(files, "mm_curves_png", "multimodal training curves"),
                    _png(files, "mm_umap_png", "multimodal UMAPs"),
                    _png(files, "attribution_png", "modality attribution"),
                ],
            )
        )
    truth = _csv(files, "ground_truth")
    if truth is not None:
        sections.append(Section("Ground truth (simulated study)", [("checks", truth)]))
    best = best_per_family(composite) if composite is not None else None
    return render_report(
        f"rvi study report: {cfg['study']}", summary_cards(cfg, files, composite), sections, notes=notes, best=best
    )
