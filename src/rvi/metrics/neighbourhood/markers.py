"""Marker genes for the neighbourhood correlation: the curated table united with data-driven markers per dataset."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..scib import _get_counts, pca_from_counts
from .graph import knn_connectivities


def load_marker_table() -> pd.DataFrame:
    """The curated human immune / haematopoietic marker table shipped with rvi (gene, cell_type, lineage, category)."""
    with resources.files("rvi").joinpath("data/markers.tsv").open("r") as fh:
        return pd.read_csv(fh, sep="\t", dtype=str)


def data_driven_markers(
    counts,
    labels: pd.DataFrame,
    var_names: Sequence[str],
    min_mean: float = 1.0,
    min_specificity: float = 0.1,
    top_n: int = 500,
) -> list[str]:
    """Marker genes of one dataset from per-label mean expression.

    Each cell is normalised to sum to n_genes (so an average gene has expression 1); for every label
    column the per-label mean and specificity (mean / sum of means over labels) are computed. A gene is
    kept if, in some label column, its max mean exceeds ``min_mean``, its max specificity exceeds
    ``min_specificity`` and it is among the ``top_n`` most specific genes of some label.
    """
    X = sp.csr_matrix(counts, dtype=np.float64)
    n_genes = X.shape[1]
    totals = np.asarray(X.sum(axis=1)).ravel()
    X = sp.diags(np.divide(n_genes, totals, out=np.zeros_like(totals), where=totals > 0)) @ X
    var_names = np.asarray(var_names)
    keep = np.zeros(n_genes, dtype=bool)
    for col in labels.columns:
        lab = labels[col]
        ok = lab.notna().to_numpy()
        codes, uniq = pd.factorize(lab[ok])
        if len(uniq) < 2:
            continue
        onehot = sp.csr_matrix((np.ones(ok.sum()), (codes, np.flatnonzero(ok))), shape=(len(uniq), X.shape[0]))
        means = np.asarray((onehot @ X).todense()) / np.bincount(codes)[:, None]
        denom = means.sum(axis=0)
        spec = np.divide(means, denom, out=np.zeros_like(means), where=denom > 0)
        top = np.zeros(n_genes, dtype=bool)
        k = min(top_n, n_genes)
        top_idx = np.argpartition(-spec, k - 1, axis=1)[:, :k]
        top[np.unique(top_idx)] = True
        keep |= (means.max(axis=0) > min_mean) & (spec.max(axis=0) > min_specificity) & top
    return var_names[keep].tolist()


def _leiden_clusters(counts, n_neighbors: int = 15, resolution: float = 1.0, seed: int = 0) -> np.ndarray:
    """Leiden clusters on a PCA kNN graph, the label stand-in for data-driven markers on unlabelled data."""
    import igraph as ig
    import leidenalg

    n = counts.shape[0]
    if n < 10:
        return np.zeros(n, dtype=int)
    pcs = pca_from_counts(counts, n_comps=30, random_state=seed)
    conn = knn_connectivities(pcs, n_neighbors=min(n_neighbors, n - 1))
    upper = sp.triu(conn, k=1).tocoo()
    g = ig.Graph(n=n, edges=list(zip(upper.row.tolist(), upper.col.tolist())), directed=False)
    part = leidenalg.find_partition(
        g,
        leidenalg.RBConfigurationVertexPartition,
        weights=upper.data.tolist(),
        resolution_parameter=resolution,
        seed=seed,
    )
    return np.asarray(part.membership)


def select_marker_genes(
    adata,
    label_keys: Sequence[str] | None = None,
    layer: str | None = None,
    dataset_key: str | None = None,
    marker_table: pd.DataFrame | None = None,
    gene_symbols_key: str | None = None,
    cluster_if_unlabelled: bool = True,
    seed: int = 0,
) -> list[str]:
    """Marker genes (as ``adata.var_names``): curated table united with data-driven markers per dataset.

    ``gene_symbols_key`` names a var column with gene symbols when var_names are e.g. Ensembl IDs. With
    no ``label_keys`` and ``cluster_if_unlabelled``, Leiden clusters per dataset stand in for labels.
    """
    table = load_marker_table() if marker_table is None else marker_table
    symbols = adata.var[gene_symbols_key].astype(str) if gene_symbols_key else pd.Series(adata.var_names)
    symbols = pd.Series(np.asarray(symbols), index=adata.var_names)
    curated = set(table["gene"].astype(str).str.upper())
    chosen = set(symbols.index[symbols.str.upper().isin(curated)])

    counts = _get_counts(adata, layer)
    groups = (
        {None: np.arange(adata.n_obs)}
        if dataset_key is None
        else {
            d: np.flatnonzero((adata.obs[dataset_key] == d).to_numpy())
            for d in adata.obs[dataset_key].dropna().unique()
        }
    )
    for idx in groups.values():
        if len(idx) < 2:
            continue
        sub = counts[idx]
        if label_keys:
            labels = adata.obs.iloc[idx][list(label_keys)].reset_index(drop=True)
        elif cluster_if_unlabelled:
            labels = pd.DataFrame({"leiden": _leiden_clusters(sub, seed=seed)})
        else:
            continue
        chosen.update(data_driven_markers(sub, labels, adata.var_names))
    order = pd.Index(adata.var_names)
    return [g for g in order if g in chosen]
