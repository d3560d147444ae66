"""Scrublet doublet scores per library on raw counts.

Scrublet's algorithm (Wolock et al. 2019) as the ``scrublet`` package runs it: cells normalised to the mean
total, genes kept by Scrublet's v-score filter, doublets simulated from random pairs, both normalised to 1e6 by
their full totals, z-scored, PCA, a kNN classifier of simulated vs observed neighbours and the automatic
threshold between the modes of the simulated scores. The simulation, embedding, classifier and threshold are
scanpy's port of it (``scanpy.pp.scrublet`` with ``adata_sim``), which needs no annoy build: its exact kNN
(sklearn) replaces annoy's approximate one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

SCRUBLET_COLUMNS = ["obs_name", "library", "doublet_score", "predicted_doublet", "scrublet_status"]


def _running_quantile(x: np.ndarray, y: np.ndarray, p: float, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``p``-th percentile of ``y`` in ``n_bins`` equal-width bins of ``x`` (empty bins repeat the last)."""
    order = np.argsort(x)
    x, y = x[order], y[order]
    dx = (x[-1] - x[0]) / n_bins
    centres = np.linspace(x[0] + dx / 2, x[-1] - dx / 2, n_bins)
    out = np.full(n_bins, np.nan)
    for i, c in enumerate(centres):
        inside = (x >= c - dx / 2) & (x < c + dx / 2)
        if inside.any():
            out[i] = np.percentile(y[inside], p)
        elif i > 0:
            out[i] = out[i - 1]
    return centres, out


def vscore_genes(norm, min_vscore_pctl: float = 85, min_counts: int = 3, min_cells: int = 3) -> np.ndarray:
    """Scrublet's gene filter: positions of the genes whose v-score (above-Poisson variability, Klein et al.
    2015) is in the top ``100 - min_vscore_pctl`` percent and that have ``min_counts`` in ``min_cells`` cells.

    ``norm``: cells x genes counts normalised to the mean total per cell (sparse)."""
    from scipy.optimize import fmin

    norm = sp.csc_matrix(norm, dtype=np.float64)
    mean = np.asarray(norm.mean(axis=0)).ravel()
    genes = np.flatnonzero(mean > 0)
    mean = mean[genes]
    sq = norm[:, genes].copy()
    sq.data **= 2
    fano = (np.asarray(sq.mean(axis=0)).ravel() - mean**2) / mean
    x, y = _running_quantile(np.log(mean), np.log(fano / mean), 0.1, 50)
    x, y = x[~np.isnan(y)], y[~np.isnan(y)]
    hist, edges = np.histogram(np.log(fano), bins=200)
    c = max(np.exp((edges[:-1] + np.diff(edges) / 2)[np.argmax(hist)]), 1)
    b = fmin(lambda b2: np.sum(np.abs(np.log(c * np.exp(-x) + b2) - y)), x0=[0.1], disp=False)
    a = c / (1 + b) - 1
    vscore = fano / ((1 + a) * (1 + b) + b * mean)
    positive = vscore > 0
    vscore, genes = vscore[positive], genes[positive]
    expressed = np.asarray((norm[:, genes] >= min_counts).sum(axis=0)).ravel() >= min_cells
    return genes[expressed & (vscore >= np.percentile(vscore, min_vscore_pctl))]


def _scrub(X, expected_rate: float, n_prin_comps: int, min_gene_variability_pctl: float, random_state: int):
    """(automatic threshold or None, doublet score per cell) of one library's raw counts (CSR)."""
    import anndata as ad
    import scanpy as sc

    totals = np.asarray(X.sum(axis=1)).ravel()
    genes = vscore_genes(sp.diags(totals.mean() / totals) @ X, min_gene_variability_pctl)
    if len(genes) == 0:
        raise ValueError("no gene passes Scrublet's variability filter")
    counts = sp.csr_matrix(X[:, genes])
    sim = sc.pp.scrublet_simulate_doublets(ad.AnnData(counts), sim_doublet_ratio=2.0, random_seed=random_state)
    parents = sim.obsm["doublet_parents"]
    observed = ad.AnnData(sp.csr_matrix(sp.diags(1e6 / totals) @ counts))
    sim.X = sp.csr_matrix(sp.diags(1e6 / totals[parents].sum(axis=1)) @ sp.csr_matrix(sim.X))
    sc.pp.scrublet(
        observed,
        adata_sim=sim,
        expected_doublet_rate=expected_rate,
        n_prin_comps=n_prin_comps,
        random_state=random_state,
        verbose=False,
    )
    threshold = observed.uns["scrublet"].get("threshold")
    return threshold, observed.obs["doublet_score"].to_numpy(dtype=np.float64)


def scrublet_library(
    X,
    obs_names,
    library: str = "",
    expected_doublet_rate: float = 0.06,
    threshold: float | None = None,
    min_cells: int = 500,
    n_prin_comps: int = 30,
    min_gene_variability_pctl: float = 85,
    random_state: int = 0,
) -> pd.DataFrame:
    """Scrublet on one library's raw counts (cells x genes).

    Libraries with fewer than ``min_cells`` cells get NaN scores and status ``too_few_cells``.
    When Scrublet fails (typically a PCA with more components than usable genes) it is retried
    with fewer PCs (status ``retried_n_pcs=K``); if all tries fail, NaN and ``failed: <reason>``.
    ``threshold`` None uses Scrublet's automatic threshold, and where Scrublet cannot find one (no
    bimodal score distribution), the (1 - expected rate) quantile of the scores
    (status ``ok_quantile_threshold``). Returns columns :data:`SCRUBLET_COLUMNS`.
    """
    obs_names = np.asarray(obs_names, dtype=object)
    n = X.shape[0]
    out = pd.DataFrame(
        {
            "obs_name": obs_names,
            "library": library,
            "doublet_score": np.full(n, np.nan),
            "predicted_doublet": pd.array([pd.NA] * n, dtype="boolean"),
            "scrublet_status": "",
        }
    )
    if n < min_cells:
        out["scrublet_status"] = "too_few_cells"
        return out
    X = sp.csr_matrix(X, dtype=np.float64)
    status, auto, scores, last_error = "ok", None, None, ""
    tries = [k for k in (n_prin_comps, 20, 10, 5) if k <= n_prin_comps]
    for k in dict.fromkeys(tries):
        try:
            auto, scores = _scrub(X, expected_doublet_rate, k, min_gene_variability_pctl, random_state)
            if not np.isfinite(scores).all():
                raise ValueError("non-finite doublet scores")
            status = "ok" if k == n_prin_comps else f"retried_n_pcs={k}"
            break
        except Exception as e:  # Scrublet surfaces numerical failures as several exception types
            auto, scores, last_error = None, None, f"{type(e).__name__}: {e}"
    if scores is None:
        out["scrublet_status"] = f"failed: {last_error}"
        return out
    cutoff = threshold
    if cutoff is None:
        cutoff = auto
        if cutoff is None or not np.isfinite(cutoff):
            cutoff = float(np.quantile(scores, 1.0 - expected_doublet_rate))
            status = "ok_quantile_threshold" if status == "ok" else status + ",quantile_threshold"
    out["doublet_score"] = scores
    out["predicted_doublet"] = pd.array(scores > cutoff, dtype="boolean")
    out["scrublet_status"] = status
    out.attrs["threshold"] = float(cutoff)
    return out


def run_scrublet(
    adata,
    library_key: str = "library",
    expected_doublet_rate: float = 0.06,
    threshold: float | None = None,
    min_cells: int = 500,
    n_prin_comps: int = 30,
    min_gene_variability_pctl: float = 85,
    random_state: int = 0,
) -> pd.DataFrame:
    """:func:`scrublet_library` on every library of ``adata`` (raw counts in X); rows in adata order.

    The library column of the result is named ``library_key`` (``library`` in :data:`SCRUBLET_COLUMNS`)."""
    libs = adata.obs[library_key].astype(str).to_numpy()
    parts, thresholds = [], {}
    for lib in pd.unique(libs):
        idx = np.flatnonzero(libs == lib)
        df = scrublet_library(
            adata.X[idx],
            adata.obs_names[idx],
            library=lib,
            expected_doublet_rate=expected_doublet_rate,
            threshold=threshold,
            min_cells=min_cells,
            n_prin_comps=n_prin_comps,
            min_gene_variability_pctl=min_gene_variability_pctl,
            random_state=random_state,
        )
        thresholds[lib] = df.attrs.get("threshold", np.nan)
        parts.append(df.set_index(idx))
    if not parts:  # a library emptied by upstream QC still yields a (header-only) table
        empty = scrublet_library(adata.X[:0], adata.obs_names[:0], min_cells=min_cells)
        return empty.rename(columns={"library": library_key})
    out = pd.concat(parts).sort_index().reset_index(drop=True).rename(columns={"library": library_key})
    out.attrs["thresholds"] = thresholds
    return out
