"""Scrublet doublet scores per library on raw counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

SCRUBLET_COLUMNS = ["obs_name", "library", "doublet_score", "predicted_doublet", "scrublet_status"]


def _scrub(X, expected_rate: float, n_prin_comps: int, min_gene_variability_pctl: float, random_state: int):
    import scrublet

    scr = scrublet.Scrublet(X, expected_doublet_rate=expected_rate, random_state=random_state)
    scores, _ = scr.scrub_doublets(
        n_prin_comps=n_prin_comps,
        min_gene_variability_pctl=min_gene_variability_pctl,
        verbose=False,
    )
    return scr, np.asarray(scores, dtype=np.float64)


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
    status, scr, scores, last_error = "ok", None, None, ""
    tries = [k for k in (n_prin_comps, 20, 10, 5) if k <= n_prin_comps]
    for k in dict.fromkeys(tries):
        try:
            scr, scores = _scrub(X, expected_doublet_rate, k, min_gene_variability_pctl, random_state)
            if not np.isfinite(scores).all():
                raise ValueError("non-finite doublet scores")
            status = "ok" if k == n_prin_comps else f"retried_n_pcs={k}"
            break
        except Exception as e:  # Scrublet surfaces numerical failures as several exception types
            scr, scores, last_error = None, None, f"{type(e).__name__}: {e}"
    if scores is None:
        out["scrublet_status"] = f"failed: {last_error}"
        return out
    cutoff = threshold
    if cutoff is None:
        cutoff = getattr(scr, "threshold_", None)
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
