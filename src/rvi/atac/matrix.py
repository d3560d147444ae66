"""10x Peaks matrices, per-cell ATAC QC and joining ATAC cells to RNA cells."""

from __future__ import annotations

import os
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from rvi.atac.counting import _fragment_qc
from rvi.atac.regions import MITO_CHROMS, normalize_region

# --------------------------------------------------------------------------------------------------


def read_peaks_from_10x_h5(path: str | os.PathLike) -> ad.AnnData:
    """The 'Peaks' features of a 10x CellRanger-ARC ``filtered_feature_bc_matrix.h5``.

    Read by :func:`rvi.io.tenx.read_10x_h5` (``feature_type="Peaks"``: the same checks of the file);
    returns float32 CSR counts, obs_names = barcodes, var_names = peak regions (``chr:start-end``) with
    var columns ``gene_ids``, ``name``, ``feature_types``, ``interval``, ``chrom``, ``start``, ``end``.
    """
    from rvi.io.tenx import read_10x_h5

    peaks = read_10x_h5(path, feature_type="Peaks")
    ids = peaks.var["gene_ids"].astype(str).to_numpy()
    interval = peaks.var["interval"] if "interval" in peaks.var else ""
    var = pd.DataFrame(
        {"gene_ids": ids, "name": peaks.var_names.to_numpy(), "feature_types": "Peaks", "interval": interval},
        index=pd.Index([normalize_region(i) for i in ids]),
    )
    parts = var.index.str.replace(":", "-").str.rsplit("-", n=2, expand=True)
    var["chrom"] = parts.get_level_values(0)
    var["start"] = parts.get_level_values(1).astype(np.int64)
    var["end"] = parts.get_level_values(2).astype(np.int64)
    X = sp.csr_matrix(peaks.X, dtype=np.float32)
    X.sort_indices()
    out = ad.AnnData(X=X, obs=pd.DataFrame(index=peaks.obs_names.copy()), var=var)
    out.uns["files"] = {"matrix_h5": str(path)}
    return out


# --------------------------------------------------------------------------------------------------
# QC and joining with RNA
# --------------------------------------------------------------------------------------------------


def atac_qc(
    adata: ad.AnnData,
    gene_anno: str | os.PathLike | None = None,
    peaks=None,
) -> pd.DataFrame:
    """Per-cell ATAC QC table.

    Columns: ``n_fragment`` (fragment lines on nuclear chromosomes; NaN for a 10x Peaks matrix),
    ``total_counts`` (insertions in the features), ``n_features_accessible`` (features with count > 0),
    and, when available, ``frac_dup``, ``frac_mito``, ``tsse`` (TSS enrichment), ``frip`` (fraction of
    insertions in peaks). ``tsse``/``frip`` are taken from ``obs`` (computed by :func:`count_tiles`
    with ``gene_anno``/``qc_peaks``) or computed here when ``adata`` still holds SnapATAC2 fragments
    (``obsm['fragment_paired']``) and ``gene_anno``/``peaks`` are given.
    """
    X = sp.csr_matrix(adata.X)
    qc = pd.DataFrame(index=adata.obs_names.copy())
    qc["n_fragment"] = adata.obs["n_fragment"].to_numpy() if "n_fragment" in adata.obs else np.nan
    qc["total_counts"] = np.asarray(X.sum(axis=1)).ravel()
    qc["n_features_accessible"] = np.diff(X.indptr)
    if "fragment_paired" in adata.obsm and (gene_anno is not None or peaks is not None):
        tmp = ad.AnnData(obs=pd.DataFrame(index=adata.obs_names.copy()))
        tmp.obsm["fragment_paired"] = adata.obsm["fragment_paired"]
        tmp.uns["reference_sequences"] = adata.uns["reference_sequences"]
        _fragment_qc(tmp, gene_anno, peaks, MITO_CHROMS)
        for col in ("tsse", "frip"):
            if col in tmp.obs:
                qc[col] = tmp.obs[col].to_numpy()
    elif gene_anno is not None or peaks is not None:
        if (gene_anno is not None and "tsse" not in adata.obs) or (peaks is not None and "frip" not in adata.obs):
            raise ValueError(
                "TSS enrichment / FRiP need fragments: pass gene_anno / qc_peaks to count_tiles "
                "(or keep_fragments=True)."
            )
    for col in ("frac_dup", "frac_mito", "tsse", "frip"):
        if col in adata.obs and col not in qc:
            qc[col] = adata.obs[col].to_numpy()
    return qc


def join_rna_atac(
    rna_obs_names: Sequence[str],
    atac: ad.AnnData,
    library: str,
    fragments_path: str | os.PathLike | None = None,
    min_fraction_matched: float = 0.0,
    library_key: str = "library",
) -> tuple[ad.AnnData, dict]:
    """Align ATAC cells (fragment-file barcodes) to RNA cells named ``{library}-{barcode}``.

    The library goes to ``obs[library_key]`` (the study's ``covariates.library_key``).

    Only RNA cells of this library (names starting with ``{library}-``) are considered. The result holds
    the matched cells in RNA order with obs_names ``{library}-{barcode}`` and ``obs['barcode']``.
    ATAC obs names that already carry the ``{library}-`` prefix are used as they are.

    Returns ``(atac_aligned, report)`` with report keys library, fragments, n_rna_cells,
    n_atac_barcodes, n_matched, n_rna_unmatched, n_atac_unmatched, frac_rna_matched.

    Raises
    ------
    ValueError
        If no ATAC barcode matches an RNA cell (names the fragments file and shows example barcodes on
        both sides), or if the matched fraction of RNA cells is below ``min_fraction_matched``.
    """
    prefix = f"{library}-"
    source = str(
        fragments_path
        or atac.uns.get("files", {}).get("fragments")
        or atac.uns.get("files", {}).get("matrix_h5", "<in-memory ATAC data>")
    )
    rna = pd.Index([str(n) for n in rna_obs_names])
    rna_lib = rna[rna.str.startswith(prefix)]
    atac_names = pd.Index(atac.obs_names.astype(str))
    already = len(atac_names) > 0 and bool(atac_names.str.startswith(prefix).all())
    atac_full = atac_names if already else prefix + atac_names
    if atac_full.has_duplicates:
        raise ValueError(f"Duplicate ATAC barcodes in {source}.")
    pos = atac_full.get_indexer(rna_lib)
    matched = pos >= 0
    n_matched = int(matched.sum())
    report = {
        "library": library,
        "fragments": source,
        "n_rna_cells": int(len(rna_lib)),
        "n_atac_barcodes": int(atac.n_obs),
        "n_matched": n_matched,
        "n_rna_unmatched": int(len(rna_lib) - n_matched),
        "n_atac_unmatched": int(atac.n_obs - n_matched),
        "frac_rna_matched": float(n_matched / len(rna_lib)) if len(rna_lib) else 0.0,
    }
    if n_matched == 0:
        raise ValueError(
            f"No barcode of {source} matches an RNA cell of library {library!r}: "
            f"example ATAC barcodes {atac_names[:5].tolist()} -> {atac_full[:3].tolist()}; "
            f"example RNA cells of this library {rna_lib[:5].tolist()} "
            f"(RNA obs names overall: {rna[:3].tolist()}). Expected RNA obs names '{{library}}-{{barcode}}' with the "
            f"barcode exactly as in the fragments file."
        )
    if report["frac_rna_matched"] < min_fraction_matched:
        raise ValueError(
            f"Only {report['frac_rna_matched']:.1%} of the RNA cells of library {library!r} have ATAC data in "
            f"{source} (min_fraction_matched={min_fraction_matched})."
        )
    aligned = atac[pos[matched]].copy()
    aligned.obs["barcode"] = atac_names[pos[matched]].str.removeprefix(prefix) if already else atac_names[pos[matched]]
    aligned.obs[library_key] = library
    aligned.obs_names = rna_lib[matched]
    return aligned, report


# --------------------------------------------------------------------------------------------------
# Independent reference counter (for tests and audits)
