"""RNA quality control: per-cell metrics, library drop rule, per-dataset cell filters, gene filter and
the QC summary table (their figures: :func:`rvi.plots.qc_histograms`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

MT_PREFIXES = ("MT-", "mt-")

# threshold key -> (obs column, comparison); a cell fails when the comparison is False.
THRESHOLD_KEYS = {
    "min_counts": ("total_counts", "ge"),
    "max_counts": ("total_counts", "le"),
    "min_genes": ("n_genes", "ge"),
    "max_genes": ("n_genes", "le"),
    "max_mt_frac": ("mt_frac", "le"),
    "max_doublet_score": ("doublet_score", "le"),
    "min_fragments": ("atac_fragments", "ge"),
}


def _row_sums(X, chunk: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """Total counts and number of detected features per row, in row chunks (backed-friendly)."""
    n = X.shape[0]
    tot, det = np.zeros(n), np.zeros(n, dtype=np.int64)
    for s in range(0, n, chunk):
        block = X[s : s + chunk]
        if sp.issparse(block):
            block = sp.csr_matrix(block)
            tot[s : s + chunk] = np.asarray(block.sum(axis=1)).ravel()
            det[s : s + chunk] = np.diff((block > 0).tocsr().indptr)
        else:
            block = np.asarray(block)
            tot[s : s + chunk] = block.sum(axis=1)
            det[s : s + chunk] = (block > 0).sum(axis=1)
    return tot, det


def compute_qc_metrics(
    adata: ad.AnnData, mt_prefixes: Sequence[str] = MT_PREFIXES, gene_name_key: str | None = None
) -> pd.DataFrame:
    """Add ``n_genes``, ``total_counts``, ``mt_frac`` to ``adata.obs`` (raw counts in X) and return them.

    Mitochondrial genes are those whose name (var_names, or ``var[gene_name_key]``) starts with one of
    ``mt_prefixes``; with none found, ``mt_frac`` is 0.
    """
    names = adata.var_names if gene_name_key is None else adata.var[gene_name_key]
    is_mt = np.asarray(pd.Index(names).astype(str).str.startswith(tuple(mt_prefixes)))
    total, n_genes = _row_sums(adata.X)
    mt = _row_sums(adata.X[:, np.flatnonzero(is_mt)])[0] if is_mt.any() else np.zeros(adata.n_obs)
    adata.obs["n_genes"] = n_genes
    adata.obs["total_counts"] = total
    adata.obs["mt_frac"] = np.divide(mt, total, out=np.zeros_like(mt), where=total > 0)
    adata.var["mt"] = is_mt
    return adata.obs[["n_genes", "total_counts", "mt_frac"]].copy()


def library_quality(
    obs: pd.DataFrame, library_key: str = "library", min_counts: float = 1500, min_frac: float = 0.10
) -> pd.DataFrame:
    """Per library: n_cells, frac_above_min_counts (share of cells with total_counts > min_counts) and
    ``passed`` (that share >= min_frac). A library failing it is sequenced too shallowly to train on."""
    if "total_counts" not in obs.columns:
        raise ValueError("obs lacks 'total_counts': run compute_qc_metrics first")
    above = (obs["total_counts"] > min_counts).groupby(obs[library_key], observed=True)
    table = pd.DataFrame({"n_cells": above.size(), "frac_above_min_counts": above.mean()})
    table["passed"] = table["frac_above_min_counts"] >= min_frac
    table.index = table.index.astype(str)
    table.index.name = library_key
    return table


def drop_low_quality_libraries(
    adata: ad.AnnData, library_key: str = "library", min_counts: float = 1500, min_frac: float = 0.10
) -> tuple[ad.AnnData, list[str]]:
    """Remove libraries where fewer than ``min_frac`` of cells have more than ``min_counts`` counts.
    Returns the filtered AnnData (a copy) and the dropped library names."""
    table = library_quality(adata.obs, library_key, min_counts, min_frac)
    dropped = table.index[~table["passed"]].tolist()
    keep = ~adata.obs[library_key].astype(str).isin(dropped).to_numpy()
    out = adata[keep].copy()
    if isinstance(out.obs[library_key].dtype, pd.CategoricalDtype):
        out.obs[library_key] = out.obs[library_key].cat.remove_unused_categories()
    return out, dropped


def thresholds_for(thresholds: Mapping[str, Mapping[str, float]], dataset: str) -> dict[str, float]:
    merged = dict(thresholds.get("default", {}) or {})
    merged.update(thresholds.get(dataset, {}) or {})
    return {k: v for k, v in merged.items() if v is not None}


def cell_qc_table(
    obs: pd.DataFrame,
    thresholds: Mapping[str, Mapping[str, float]],
    dataset_key: str = "dataset",
    columns: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Per-cell pass/fail against per-dataset thresholds.

    ``thresholds`` maps a dataset name (or ``"default"``, applied first and overridden per dataset)
    to ``{key: value}`` with keys from :data:`THRESHOLD_KEYS` (min/max_counts, min/max_genes,
    max_mt_frac, max_doublet_score, min_fragments). ``columns`` overrides the obs column a key
    reads. A NaN metric passes (e.g. doublet scores of libraries too small for Scrublet). Returns
    one boolean ``fail_<key>`` column per threshold used and ``keep``.
    """
    cols = {k: c for k, (c, _) in THRESHOLD_KEYS.items()} | dict(columns or {})
    unknown = sorted({k for spec in thresholds.values() for k in (spec or {})} - set(THRESHOLD_KEYS))
    if unknown:
        raise ValueError(f"unknown QC threshold keys {unknown}; allowed: {sorted(THRESHOLD_KEYS)}")
    datasets = obs[dataset_key].astype(str).to_numpy() if dataset_key in obs.columns else np.full(len(obs), "")
    out = pd.DataFrame(index=obs.index)
    for ds in pd.unique(datasets):
        rows = datasets == ds
        for key, value in thresholds_for(thresholds, ds).items():
            col = cols[key]
            if col not in obs.columns:
                raise ValueError(f"QC threshold {key!r} (dataset {ds!r}) needs obs column {col!r}, which is missing")
            x = obs[col].to_numpy(dtype=np.float64)[rows]
            ok = x >= value if THRESHOLD_KEYS[key][1] == "ge" else x <= value
            name = f"fail_{key}"
            if name not in out.columns:
                out[name] = False
            out.loc[rows, name] = ~(ok | np.isnan(x))
    out["keep"] = ~out.any(axis=1) if out.shape[1] else True
    return out


def filter_cells(
    adata: ad.AnnData,
    thresholds: Mapping[str, Mapping[str, float]],
    dataset_key: str = "dataset",
    columns: Mapping[str, str] | None = None,
) -> ad.AnnData:
    """Copy of ``adata`` with the cells that pass :func:`cell_qc_table`."""
    table = cell_qc_table(adata.obs, thresholds, dataset_key, columns)
    return adata[table["keep"].to_numpy()].copy()


def filter_genes(adata: ad.AnnData, min_cells: int = 3) -> ad.AnnData:
    """Copy of ``adata`` keeping genes detected (count > 0) in at least ``min_cells`` cells."""
    X = adata.X
    detected = np.asarray((X > 0).sum(axis=0)).ravel() if sp.issparse(X) else (np.asarray(X) > 0).sum(axis=0)
    return adata[:, detected >= min_cells].copy()


def qc_summary(
    obs: pd.DataFrame,
    library_key: str = "library",
    dataset_key: str | None = "dataset",
    min_counts: float = 1500,
    min_frac: float = 0.10,
) -> pd.DataFrame:
    """One row per library: dataset, n_cells, median total counts / genes / mt fraction, share of cells
    above ``min_counts``, and whether the library passes the drop rule."""
    g = obs.groupby(obs[library_key].astype(str), observed=True)
    table = pd.DataFrame(
        {
            "n_cells": g.size(),
            "median_total_counts": g["total_counts"].median(),
            "median_n_genes": g["n_genes"].median(),
            "median_mt_frac": g["mt_frac"].median() if "mt_frac" in obs.columns else np.nan,
        }
    )
    if dataset_key and dataset_key in obs.columns:
        table.insert(0, dataset_key, g[dataset_key].first().astype(str))
    quality = library_quality(obs, library_key, min_counts, min_frac)
    table = table.join(quality[["frac_above_min_counts", "passed"]])
    table.index.name = library_key
    return table.reset_index()
