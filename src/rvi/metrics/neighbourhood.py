"""Label-free neighbourhood marker-gene correlation (docs/metrics.md, "Label-free").

Question answered: do a cell's neighbours in a model's latent kNN graph express the same marker genes,
within its own library, in other libraries of its dataset, in other datasets, and across technical
groups? Everything is computed with sparse matrices: the connectivity-weighted neighbour average of
a mask is ``A = M X / rowsum(M)``, and per-edge correlations are evaluated only on graph edges.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import pandas as pd
import scipy.sparse as sp

from rvi.nesting import check_library_nesting

from .scib import _get_counts, exact_knn, pca_from_counts, umap_connectivities

logger = logging.getLogger(__name__)

LEVEL_MASKS = ("same_library", "between_libraries", "cross_library", "cross_dataset")
HEADLINE_KEYS = tuple(f"H{i}" for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14))
COMPOSITE_KEYS = ("bio", "library_integration", "dataset_integration", "batch", "total")
_INTEGRATION_WEIGHTS = (0.4, 0.3, 0.3)
_EDGE_CHUNK = 200_000
_ROW_CHUNK = 4096


# --------------------------------------------------------------------------------------------------
# marker genes
# --------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------
# graph and masks
# --------------------------------------------------------------------------------------------------
#: Above this many cells the kNN search is approximate (pynndescent): exact search is O(n^2).
EXACT_KNN_MAX_CELLS = 50_000


def knn_connectivities(embedding: np.ndarray, n_neighbors: int = 15, n_jobs: int = 1, seed: int = 0) -> sp.csr_matrix:
    """Symmetric UMAP/scanpy-style connectivities of a kNN graph, diagonal removed.

    Exact search up to :data:`EXACT_KNN_MAX_CELLS` cells, pynndescent (what scanpy uses) above.
    """
    n = embedding.shape[0]
    k = min(n_neighbors, n - 1)
    if k < 1:
        raise ValueError("need at least two cells to build a kNN graph")
    if n > EXACT_KNN_MAX_CELLS:
        idx, dist = _approximate_knn(np.asarray(embedding, dtype=np.float32), k + 1, n_jobs, seed)
    else:
        idx, dist = exact_knn(embedding, k + 1, n_jobs=n_jobs)
    return _drop_diagonal(umap_connectivities(idx, dist))


def _approximate_knn(X: np.ndarray, k: int, n_jobs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from pynndescent import NNDescent

    index = NNDescent(X, n_neighbors=k, random_state=seed, n_jobs=n_jobs, low_memory=True)
    idx, dist = index.neighbor_graph
    # Self in column 0, as exact_knn gives it (umap_connectivities zeroes self edges either way).
    rows = np.arange(X.shape[0])
    swap = idx[:, 0] != rows
    if swap.any():
        idx[swap, 1:] = idx[swap, :-1]
        dist[swap, 1:] = dist[swap, :-1]
        idx[swap, 0], dist[swap, 0] = rows[swap], 0.0
    return idx, dist.astype(np.float32)


def _drop_diagonal(C) -> sp.csr_matrix:
    C = sp.csr_matrix(C, dtype=np.float64, copy=True)
    C.setdiag(0)
    C.eliminate_zeros()
    C.sort_indices()
    return C


def validate_dataset_key(obs: pd.DataFrame, library_key: str, dataset_key: str) -> pd.Series:
    """Dataset per cell, checked so that each library lies in exactly one dataset.

    Missing dataset values are warned about and filled from the library's dataset when that is known;
    cells of libraries without any dataset stay missing (NaN) and are left out of the cross-library and
    cross-dataset statistics. Libraries spanning several datasets raise a ValueError naming them.
    """
    if dataset_key not in obs:
        raise KeyError(f"dataset key {dataset_key!r} not in obs (columns: {list(obs.columns)})")
    lib = obs[library_key].astype(str)
    ds = obs[dataset_key].astype(object)
    missing = ds.isna()
    check_library_nesting(pd.DataFrame({library_key: lib, dataset_key: ds}), library_key, dataset_key)
    per_lib = pd.Series(ds[~missing].astype(str).to_numpy(), index=lib[~missing].to_numpy())
    per_lib = per_lib[~per_lib.index.duplicated()]
    ds = ds.where(missing, ds.astype(str))
    if missing.any():
        ds = ds.copy()
        ds[missing] = lib[missing].map(per_lib)
        left = ds.isna()
        warnings.warn(
            f"{int(missing.sum())} cells have no {dataset_key!r}: {int(missing.sum() - left.sum())} filled from their "
            f"library, {int(left.sum())} excluded from the cross-library and cross-dataset statistics",
            stacklevel=3,
        )
    return ds


def neighbour_masks(
    connectivities,
    library: np.ndarray,
    dataset: np.ndarray | None = None,
    technical: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Boolean edge masks over the CSR edges of ``connectivities`` (diagonal already removed).

    Returns same_library, between_libraries, cross_library (different library, same dataset),
    cross_dataset and, per technical key k, within_k / between_k plus cross_technical (union of the
    between_k). Edges touching a missing technical value are in neither within_k nor between_k.
    Without a dataset all libraries count as one dataset, so cross_dataset is empty.
    """
    C = sp.csr_matrix(connectivities)
    rows = _edge_rows(C)
    cols = C.indices
    lib = pd.factorize(np.asarray(library))[0]
    same_lib = lib[rows] == lib[cols]
    if dataset is None:
        cross_ds = np.zeros_like(same_lib)
        known = np.ones_like(same_lib)
    else:
        # A cell without a dataset is in neither cross level (nor in between_libraries, so that
        # between_libraries = cross_library + cross_dataset still holds).
        ds = pd.factorize(pd.Series(np.asarray(dataset, dtype=object)), use_na_sentinel=True)[0]
        known = (ds[rows] >= 0) & (ds[cols] >= 0)
        cross_ds = known & (ds[rows] != ds[cols])
    masks = {
        "same_library": same_lib,
        "between_libraries": ~same_lib & known,
        "cross_library": ~same_lib & known & ~cross_ds,
        "cross_dataset": cross_ds,
    }
    if technical:
        cross_tech = np.zeros_like(same_lib)
        for key, values in technical.items():
            codes = pd.factorize(pd.Series(np.asarray(values)), use_na_sentinel=True)[0]
            both = (codes[rows] >= 0) & (codes[cols] >= 0)
            same = codes[rows] == codes[cols]
            masks[f"within_{key}"] = both & same
            masks[f"between_{key}"] = both & ~same
            cross_tech |= both & ~same
        masks["cross_technical"] = cross_tech
    return masks


def mask_names(technical_covariate_keys: Sequence[str] | None = None) -> list[str]:
    """Names of the masks produced by :func:`neighbour_masks` for the given technical keys."""
    keys = list(technical_covariate_keys or [])
    tech = [f"{p}_{k}" for k in keys for p in ("within", "between")]
    return [*LEVEL_MASKS, *tech, *(["cross_technical"] if keys else [])]


def mask_matrix(connectivities, edge_mask: np.ndarray) -> sp.csr_matrix:
    """Connectivity matrix restricted to the edges of a mask (weights kept)."""
    C = sp.csr_matrix(connectivities)
    data = np.where(edge_mask, C.data, 0.0)
    M = sp.csr_matrix((data, C.indices.copy(), C.indptr.copy()), shape=C.shape)
    M.eliminate_zeros()
    return M


# --------------------------------------------------------------------------------------------------
# per-cell statistics
# --------------------------------------------------------------------------------------------------
def marker_profiles(counts, marker_idx: np.ndarray, log1p: bool = False) -> sp.csr_matrix:
    """Marker counts divided by each cell's total over ALL genes (optionally log1p of 1e4-scaled values)."""
    X = sp.csr_matrix(counts)
    totals = np.asarray(X.sum(axis=1)).ravel().astype(np.float64)
    P = sp.csr_matrix(X[:, marker_idx], dtype=np.float64)
    P = sp.diags(np.divide(1.0, totals, out=np.zeros_like(totals), where=totals > 0)) @ P
    P = sp.csr_matrix(P)
    if log1p:
        P.data = np.log1p(P.data * 1e4)
    P.eliminate_zeros()
    return P


def _row_moments(P: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(P.sum(axis=1)).ravel()
    ss = np.asarray(P.multiply(P).sum(axis=1)).ravel()
    return s, ss


def _pearson_from_moments(sxy, sx, sy, sxx, syy, n_feat) -> np.ndarray:
    """Pearson from row sums, sums of squares and cross products; NaN where a variance is ~0."""
    vx = sxx - sx**2 / n_feat
    vy = syy - sy**2 / n_feat
    # Relative test: a constant profile leaves only rounding noise in the centred sum of squares.
    flat = (vx <= 1e-10 * sxx) | (vy <= 1e-10 * syy)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (sxy - sx * sy / n_feat) / np.sqrt(vx * vy)
    return np.clip(np.where(flat, np.nan, r), -1.0, 1.0)


def average_profile_correlation(M: sp.csr_matrix, P: sp.csr_matrix) -> np.ndarray:
    """Per cell: Pearson(x_i, a_i) with A = M P / rowsum(M); NaN without neighbours or variance."""
    n, g = P.shape
    sx, sxx = _row_moments(P)
    out = np.full(n, np.nan)
    rowsum = np.asarray(M.sum(axis=1)).ravel()
    for start in range(0, n, _ROW_CHUNK):
        stop = min(n, start + _ROW_CHUNK)
        Mb = M[start:stop]
        rs = rowsum[start:stop]
        A = sp.diags(np.divide(1.0, rs, out=np.zeros_like(rs), where=rs > 0)) @ (Mb @ P)
        A = sp.csr_matrix(A)
        sa, saa = _row_moments(A)
        sxa = np.asarray(P[start:stop].multiply(A).sum(axis=1)).ravel()
        r = _pearson_from_moments(sxa, sx[start:stop], sa, sxx[start:stop], saa, g)
        r[rs <= 0] = np.nan
        out[start:stop] = r
    return out


def edge_correlations(C: sp.csr_matrix, P: sp.csr_matrix) -> np.ndarray:
    """Pearson correlation of the two endpoint profiles for every stored edge of C (CSR order).

    Chunked over edges, so the temporaries of the dot products and the moment gathering stay at
    ``_EDGE_CHUNK`` edges whatever the graph size.
    """
    n, g = P.shape
    rows = _edge_rows(C)
    cols = C.indices
    sx, sxx = _row_moments(P)
    out = np.empty(len(rows))
    for start in range(0, len(rows), _EDGE_CHUNK):
        stop = min(len(rows), start + _EDGE_CHUNK)
        r, c = rows[start:stop], cols[start:stop]
        dots = np.asarray(P[r].multiply(P[c]).sum(axis=1)).ravel()
        out[start:stop] = _pearson_from_moments(dots, sx[r], sx[c], sxx[r], sxx[c], g)
    return out


def _edge_rows(C: sp.csr_matrix) -> np.ndarray:
    """Row index of every stored edge (int32 while it fits: half the memory of the default int64)."""
    dtype = np.int32 if C.shape[0] < np.iinfo(np.int32).max else np.int64
    return np.repeat(np.arange(C.shape[0], dtype=dtype), np.diff(C.indptr))


def _grouped_edge_summary(rows: np.ndarray, values: np.ndarray, weights: np.ndarray, n: int) -> pd.DataFrame:
    """Per-cell mean, median, weighted mean/median and sd of edge values (NaN edges ignored).

    ``rows`` must be sorted (CSR order); the medians are taken over blocks of cells so that the sort
    and its copies hold at most ``_EDGE_CHUNK`` edges at a time.
    """
    ok = np.isfinite(values)
    r, v, w = rows[ok], values[ok], weights[ok]
    cnt = np.bincount(r, minlength=n).astype(np.float64)
    wsum = np.bincount(r, weights=w, minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.bincount(r, weights=v, minlength=n) / cnt
        wmean = np.bincount(r, weights=w * v, minlength=n) / wsum
        sq = np.bincount(r, weights=v * v, minlength=n)
        var = (sq - cnt * mean**2) / (cnt - 1)
    sd = np.where(cnt >= 2, np.sqrt(np.clip(var, 0, None)), np.nan)
    median = np.full(n, np.nan)
    wmedian = np.full(n, np.nan)
    c_all = cnt.astype(np.int64)
    first = np.concatenate([[0], np.cumsum(c_all)])  # edge offset of each cell in r / v / w
    cell = 0
    while cell < n and len(r):
        # A block of whole cells holding about _EDGE_CHUNK edges (at least one cell).
        end = int(np.searchsorted(first, first[cell] + _EDGE_CHUNK, side="right")) - 1
        end = min(max(end, cell + 1), n)
        e0, e1 = first[cell], first[end]
        if e1 > e0:
            _block_medians(
                r[e0:e1] - cell,
                v[e0:e1],
                w[e0:e1],
                c_all[cell:end],
                wsum[cell:end],
                median[cell:end],
                wmedian[cell:end],
            )
        cell = end
    return pd.DataFrame(
        {"pair_mean": mean, "pair_median": median, "pair_wmean": wmean, "pair_wmedian": wmedian, "pair_sd": sd}
    )


def _block_medians(r, v, w, c, wsum, median, wmedian) -> None:
    """Median and weighted median per cell of one block (``r``: cell index within the block), in place."""
    order = np.lexsort((v, r))
    v, w = v[order], w[order]
    starts = np.concatenate([[0], np.cumsum(c)[:-1]])
    has = c > 0
    lo = starts + (c - 1) // 2
    hi = starts + c // 2
    median[has] = 0.5 * (v[lo[has]] + v[hi[has]])
    cum = np.cumsum(w)
    before = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
    target = before + 0.5 * wsum
    pos = np.searchsorted(cum, target[has] * (1 - 1e-12), side="left")
    # Rounding in the cumulative sum must not move the pick outside the cell's own edges.
    pos = np.clip(pos, starts[has], starts[has] + c[has] - 1)
    wmedian[has] = v[pos]


def _hist_overlap(a: np.ndarray, b: np.ndarray, bins: int = 50) -> float:
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if not len(a) or not len(b):
        return float("nan")
    edges = np.linspace(-1, 1, bins + 1)
    ha = np.histogram(np.clip(a, -1, 1), bins=edges)[0] / len(a)
    hb = np.histogram(np.clip(b, -1, 1), bins=edges)[0] / len(b)
    return float(np.minimum(ha, hb).sum())


def _nanmedian(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if len(x) else float("nan")


def _weighted_nanmean(values: Sequence[float], weights: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    ok = np.isfinite(v)
    if not ok.any():
        return float("nan")
    return float(np.sum(v[ok] * w[ok]) / np.sum(w[ok]))


def isolation_probability(degree: np.ndarray, n_target: np.ndarray, n_cells: int) -> np.ndarray:
    """Analytical probability that a cell with ``degree`` random neighbours has none in its target group.

    (1 - p_match)^k with p_match = n_target / (n_cells - 1), the fraction of other cells in the group.
    """
    p = np.asarray(n_target, dtype=np.float64) / max(n_cells - 1, 1)
    return (1.0 - np.clip(p, 0, 1)) ** np.asarray(degree, dtype=np.float64)


@dataclass
class NeighbourhoodResult:
    """Per-cell table, headline metrics (H1-H12, H14 and composites) and the random-graph baseline."""

    per_cell: pd.DataFrame
    headline: pd.Series
    baseline: pd.Series | None = None
    baseline_per_cell: pd.DataFrame | None = None
    marker_genes: list[str] = field(default_factory=list)
    masks: list[str] = field(default_factory=list)
    failure_modes: pd.DataFrame | None = None
    missing_markers: list[str] = field(default_factory=list)


def _per_cell_table(
    C: sp.csr_matrix, P: sp.csr_matrix, masks: dict[str, np.ndarray], targets: dict[str, np.ndarray]
) -> pd.DataFrame:
    n = C.shape[0]
    rows = _edge_rows(C)
    degree = np.diff(C.indptr).astype(np.int64)
    ecorr = edge_correlations(C, P)
    cols: dict[str, np.ndarray] = {"degree": degree}
    for name, em in masks.items():
        M = mask_matrix(C, em)
        cnt = np.bincount(rows[em], minlength=n)
        cols[f"corr_{name}"] = average_profile_correlation(M, P)
        summ = _grouped_edge_summary(rows[em], ecorr[em], C.data[em], n)
        for c in summ.columns:
            cols[f"{c}_{name}"] = summ[c].to_numpy()
        cols[f"n_{name}"] = cnt
        with np.errstate(divide="ignore", invalid="ignore"):
            cols[f"frac_{name}"] = np.where(degree > 0, cnt / degree, np.nan)
        cols[f"weight_{name}"] = np.bincount(rows[em], weights=C.data[em], minlength=n)
        cols[f"discrepancy_{name}"] = cols[f"corr_{name}"] - cols[f"pair_mean_{name}"]
        if name in targets:
            cols[f"n_target_{name}"] = targets[name]
            cols[f"p_isolated_{name}"] = isolation_probability(degree, targets[name], n)
    return pd.DataFrame(cols)


def _isolation_ratio(pc: pd.DataFrame, mask: str) -> float:
    """Observed / expected fraction of cells with no neighbour in ``mask`` (cells that could have one)."""
    if f"n_target_{mask}" not in pc:
        return float("nan")
    eligible = (pc[f"n_target_{mask}"] > 0) & (pc["degree"] > 0)
    if not eligible.any():
        return float("nan")
    observed = float((pc.loc[eligible, f"n_{mask}"] == 0).mean())
    expected = float(pc.loc[eligible, f"p_isolated_{mask}"].mean())
    if expected <= 0:
        return float("inf") if observed > 0 else float("nan")
    return observed / expected


def headline_metrics(per_cell: pd.DataFrame, has_dataset: bool, has_technical: bool) -> pd.Series:
    """H1-H12, H14 and the composites of spec section 2.5/2.6 from a per-cell table."""
    pc = per_cell
    h: dict[str, float] = {}
    h["H1"] = _nanmedian(pc["corr_same_library"])
    h["H2"] = _nanmedian(pc["pair_sd_same_library"])
    for offset, mask, present in ((3, "cross_library", True), (7, "cross_dataset", has_dataset)):
        if present:
            corr = _nanmedian(pc[f"corr_{mask}"])
            iso = _isolation_ratio(pc, mask)
            disc = _nanmedian(pc[f"discrepancy_{mask}"])
        else:
            corr = iso = disc = float("nan")
        h[f"H{offset}"] = corr
        h[f"H{offset + 1}"] = h["H1"] - corr
        h[f"H{offset + 2}"] = iso
        h[f"H{offset + 3}"] = disc
    same = pc["corr_same_library"].to_numpy()
    h["H11"] = _hist_overlap(same, pc["corr_cross_library"].to_numpy())
    h["H12"] = _hist_overlap(same, pc["corr_cross_dataset"].to_numpy()) if has_dataset else float("nan")
    h["H14"] = _nanmedian(pc["corr_cross_technical"]) if has_technical else float("nan")

    def iso_score(x: float) -> float:
        return float("nan") if np.isnan(x) else 1.0 - float(np.clip(x, 0, 2))

    h["bio"] = h["H1"]
    h["library_integration"] = _weighted_nanmean([h["H3"], iso_score(h["H5"]), h["H11"]], _INTEGRATION_WEIGHTS)
    h["dataset_integration"] = (
        _weighted_nanmean([h["H7"], iso_score(h["H9"]), h["H12"]], _INTEGRATION_WEIGHTS)
        if has_dataset
        else float("nan")
    )
    h["batch"] = _weighted_nanmean([h["library_integration"], h["dataset_integration"]], [1.0, 1.0])
    h["total"] = _weighted_nanmean([h["bio"], h["batch"]], [0.6, 0.4])
    return pd.Series(h, dtype=np.float64)


def random_knn_graph(connectivities, seed: int = 0) -> sp.csr_matrix:
    """Degree-matched random graph: every cell keeps its degree and edge weights, neighbours drawn uniformly."""
    C = sp.csr_matrix(connectivities)
    n = C.shape[0]
    rng = np.random.default_rng(seed)
    degree = np.diff(C.indptr)
    rows = np.repeat(np.arange(n), degree)
    cols = rng.integers(0, n - 1, size=len(rows))
    cols[cols >= rows] += 1  # skip self
    # Redraw duplicate (row, col) pairs so that degrees are matched exactly.
    for _ in range(50):
        key = rows.astype(np.int64) * n + cols
        _, first = np.unique(key, return_index=True)
        dup = np.ones(len(key), dtype=bool)
        dup[first] = False
        if not dup.any():
            break
        new = rng.integers(0, n - 1, size=int(dup.sum()))
        new[new >= rows[dup]] += 1
        cols[dup] = new
    R = sp.csr_matrix((C.data.copy(), (rows, cols)), shape=C.shape)
    R.sum_duplicates()
    R.sort_indices()
    return R


def _target_sizes(library: np.ndarray, dataset: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per cell, the number of other cells in each cross level's target group (NaN without a dataset)."""
    n = len(library)
    lib_size = pd.Series(library).map(pd.Series(library).value_counts()).to_numpy().astype(np.float64)
    if dataset is None:
        return {"between_libraries": n - lib_size, "cross_library": n - lib_size, "cross_dataset": np.zeros(n)}
    ds = pd.Series(np.asarray(dataset, dtype=object))
    known = ds.notna().to_numpy()
    n_known = float(known.sum())
    ds_size = ds.map(ds.value_counts()).to_numpy().astype(np.float64)
    nan = np.where(known, 1.0, np.nan)
    return {
        "between_libraries": (n_known - lib_size) * nan,
        "cross_library": (ds_size - lib_size) * nan,
        "cross_dataset": (n_known - ds_size) * nan,
    }


def neighbourhood_correlation(
    adata,
    embedding: np.ndarray | None = None,
    connectivities=None,
    *,
    library_key: str,
    dataset_key: str | None = None,
    technical_covariate_keys: Sequence[str] | None = None,
    label_keys: Sequence[str] | None = None,
    layer: str | None = None,
    marker_genes: Sequence[str] | None = None,
    n_neighbors: int = 15,
    log1p: bool = False,
    random_baseline: bool = True,
    gene_symbols_key: str | None = None,
    seed: int = 0,
    n_jobs: int = 1,
) -> NeighbourhoodResult:
    """Neighbourhood marker-gene correlation of one model's latent kNN graph.

    Give either ``embedding`` (a kNN connectivity graph with ``n_neighbors`` is built) or a precomputed
    ``connectivities`` matrix. Counts come from ``adata.X`` or ``layer``. ``marker_genes`` (var names)
    skips marker selection, e.g. to share one marker set across models (see :func:`neighbourhood_benchmark`).
    With only ``library_key`` all dataset and technical outputs are NaN.
    """
    if (embedding is None) == (connectivities is None):
        raise ValueError("give exactly one of embedding or connectivities")
    obs = adata.obs
    if library_key not in obs:
        raise KeyError(f"library key {library_key!r} not in adata.obs (columns: {list(obs.columns)})")
    if obs[library_key].isna().any():
        # The library is the finest technical unit every mask is built from: no sensible exclusion exists.
        raise ValueError(f"library key {library_key!r} has {int(obs[library_key].isna().sum())} cells without a value")
    library = obs[library_key].astype(str).to_numpy()
    dataset = validate_dataset_key(obs, library_key, dataset_key).to_numpy() if dataset_key else None
    tech_keys = list(technical_covariate_keys or [])
    for key in tech_keys:
        if key not in obs:
            raise KeyError(f"technical covariate {key!r} not in adata.obs")
        if obs[key].isna().any():
            warnings.warn(
                f"technical covariate {key!r}: {int(obs[key].isna().sum())} cells without a value are excluded "
                "from its within/between statistics",
                stacklevel=2,
            )
    technical = {k: obs[k].to_numpy() for k in tech_keys}

    if connectivities is None:
        C = knn_connectivities(np.asarray(embedding), n_neighbors=n_neighbors, n_jobs=n_jobs, seed=seed)
    else:
        C = _drop_diagonal(connectivities)
    if C.shape != (adata.n_obs, adata.n_obs):
        raise ValueError(f"connectivities shape {C.shape} does not match {adata.n_obs} cells")

    if marker_genes is None:
        marker_genes = select_marker_genes(
            adata,
            label_keys=label_keys,
            layer=layer,
            dataset_key=dataset_key,
            gene_symbols_key=gene_symbols_key,
            seed=seed,
        )
    marker_genes = list(dict.fromkeys(marker_genes))
    marker_idx = pd.Index(adata.var_names).get_indexer(marker_genes)
    absent = [g for g, i in zip(marker_genes, marker_idx) if i < 0]
    if absent:
        warnings.warn(
            f"{len(absent)} of {len(marker_genes)} marker genes are not in var_names and are skipped: {absent[:10]}",
            stacklevel=2,
        )
        marker_genes = [g for g, i in zip(marker_genes, marker_idx) if i >= 0]
        marker_idx = marker_idx[marker_idx >= 0]
    if len(marker_genes) < 3:
        raise ValueError(f"need at least 3 marker genes present in the data, found {len(marker_genes)}")
    P = marker_profiles(_get_counts(adata, layer), marker_idx, log1p=log1p)
    targets = _target_sizes(library, dataset)

    def evaluate(graph: sp.csr_matrix) -> tuple[pd.DataFrame, pd.Series]:
        masks = neighbour_masks(graph, library, dataset, technical or None)
        pc = _per_cell_table(graph, P, masks, targets)
        if dataset is None:
            # Without datasets there is no cross-dataset level: report NaN rather than empty-mask zeros.
            for col in [c for c in pc.columns if c.endswith("_cross_dataset")]:
                pc[col] = np.nan
        pc.index = adata.obs_names
        return pc, headline_metrics(pc, has_dataset=dataset is not None, has_technical=bool(tech_keys))

    per_cell, headline = evaluate(C)
    baseline = baseline_pc = None
    if random_baseline:
        baseline_pc, baseline = evaluate(random_knn_graph(C, seed=seed))
    return NeighbourhoodResult(
        failure_modes=failure_modes(per_cell),
        per_cell=per_cell,
        headline=headline,
        baseline=baseline,
        baseline_per_cell=baseline_pc,
        marker_genes=marker_genes,
        masks=mask_names(tech_keys),
        missing_markers=absent,
    )


# --------------------------------------------------------------------------------------------------
# per-cell failure modes
# --------------------------------------------------------------------------------------------------
#: Leaves from most to least severe; each cell reports its most severe non-ideal leaf over the levels.
FAILURE_SEVERITY = (
    "forced_merge",
    "false_merge",
    "wrong_pairing",
    "under_integration",
    "noisy",
    "merged_but_related",
    "ideal",
)
FAILURE_LEVELS = {"within_library": "same_library", "cross_library": "cross_library", "cross_dataset": "cross_dataset"}


def failure_modes(
    per_cell: pd.DataFrame,
    other_models: Sequence[pd.DataFrame] = (),
    corr_threshold: float | None = None,
    sd_threshold: float | None = None,
) -> pd.DataFrame:
    """Per-cell failure-mode leaves per level and the most severe one overall.

    Thresholds default to the 25th percentile of same-library correlation (``t``) and the median
    same-library pairwise sd (``s``). Per level, with average-profile correlation c, pairwise sd sd and
    neighbour fraction f of the level's mask:

    * no neighbours or NaN correlation (flat profile): not applicable, except that a cell without
      neighbours at a cross level is ``under_integration`` if another model gives it neighbours there
      with c >= t, and ``ideal`` otherwise (nothing to integrate with);
    * c >= t: ``ideal`` if sd <= s, else ``noisy`` (the average matches, single neighbours scatter);
    * within library, c < t: ``wrong_pairing`` if sd <= s (consistently among other profiles), else
      ``false_merge`` (a mixture of matching and non-matching neighbours);
    * across levels, t/2 <= c < t: ``merged_but_related`` (related but distinct states were joined);
      c < t/2: ``forced_merge`` if f >= 0.5 (mostly mismatched neighbours from other libraries),
      else ``wrong_pairing`` if sd <= s, else ``false_merge``.
    """
    pc = per_cell
    t = float(np.nanpercentile(pc["corr_same_library"], 25)) if corr_threshold is None else corr_threshold
    s = float(np.nanmedian(pc["pair_sd_same_library"])) if sd_threshold is None else sd_threshold
    out = pd.DataFrame(index=pc.index)
    for level, mask in FAILURE_LEVELS.items():
        c = pc[f"corr_{mask}"].to_numpy(dtype=np.float64)
        sd = pc[f"pair_sd_{mask}"].to_numpy(dtype=np.float64)
        f = pc[f"frac_{mask}"].to_numpy(dtype=np.float64)
        n = pc[f"n_{mask}"].to_numpy(dtype=np.float64)
        has = np.nan_to_num(n) > 0
        good = c >= t
        tight = ~(sd > s)  # a single neighbour (sd NaN) counts as tight
        leaf = np.full(len(pc), None, dtype=object)
        leaf[has & good & tight] = "ideal"
        leaf[has & good & ~tight] = "noisy"
        low = has & (c < t)  # NaN correlation (flat profile) stays unclassified: not a model failure
        if level == "within_library":
            leaf[low & tight] = "wrong_pairing"
            leaf[low & ~tight] = "false_merge"
        else:
            if np.isnan(n).all():
                out[level] = leaf
                continue
            related = low & (c >= t / 2)
            very_low = low & ~related
            leaf[related] = "merged_but_related"
            leaf[very_low & (f >= 0.5)] = "forced_merge"
            leaf[very_low & (f < 0.5) & tight] = "wrong_pairing"
            leaf[very_low & (f < 0.5) & ~tight] = "false_merge"
            others = [o[f"corr_{mask}"].to_numpy(dtype=np.float64) for o in other_models]
            if others:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    best_other = np.nanmax(np.column_stack(others), axis=1)
                found = np.nan_to_num(best_other, nan=-np.inf) >= t
            else:
                found = np.zeros(len(pc), dtype=bool)
            possible = np.nan_to_num(pc.get(f"n_target_{mask}", pd.Series(1, index=pc.index)).to_numpy()) > 0
            leaf[~has & possible & found] = "under_integration"
            leaf[~has & possible & ~found] = "ideal"
        out[level] = leaf
    rank = {name: i for i, name in enumerate(FAILURE_SEVERITY)}
    ranks = out.apply(lambda col: col.map(lambda v: rank.get(v, len(FAILURE_SEVERITY))))
    worst = ranks.min(axis=1).to_numpy()
    names = np.array([*FAILURE_SEVERITY, "not_applicable"], dtype=object)
    out["failure_mode"] = names[worst]
    out.attrs.update(corr_threshold=t, sd_threshold=s)
    return out


# --------------------------------------------------------------------------------------------------
# several models
# --------------------------------------------------------------------------------------------------
def integration_failure_rate(
    per_model_cross_dataset_corr: Mapping[str, np.ndarray], good: float = 0.4, bad: float = 0.2
) -> pd.Series:
    """H13 per model: among cells whose best model reaches cross-dataset correlation > ``good``, the
    fraction where this model has no cross-dataset neighbours (NaN) or correlation < ``bad``.
    """
    if not per_model_cross_dataset_corr:
        raise ValueError("no models given")
    names = list(per_model_cross_dataset_corr)
    mat = np.column_stack([np.asarray(per_model_cross_dataset_corr[m], dtype=np.float64) for m in names])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        best = np.nanmax(mat, axis=1)
    eligible = np.isfinite(best) & (best > good)
    if not eligible.any():
        return pd.Series(np.nan, index=names, name="H13")
    sub = mat[eligible]
    failed = ~np.isfinite(sub) | (sub < bad)
    return pd.Series(failed.mean(axis=0), index=names, name="H13")


def neighbourhood_benchmark(
    adata,
    embeddings: Mapping[str, np.ndarray],
    *,
    library_key: str,
    dataset_key: str | None = None,
    technical_covariate_keys: Sequence[str] | None = None,
    label_keys: Sequence[str] | None = None,
    layer: str | None = None,
    n_neighbors: int = 15,
    random_baseline: bool = True,
    gene_symbols_key: str | None = None,
    marker_genes: Sequence[str] | None = None,
    connectivities: Mapping[str, sp.spmatrix] | None = None,
    seed: int = 0,
    n_jobs: int = 1,
) -> tuple[pd.DataFrame, dict[str, NeighbourhoodResult]]:
    """Run :func:`neighbourhood_correlation` for several embeddings with one shared marker set.

    Returns a table (one row per model: H1-H14 and composites; the random-graph baseline, degree-matched
    to the first model's graph, as row ``"random_knn"`` when requested) and the per-model results, whose
    ``failure_modes`` use the other models to detect under-integration. ``marker_genes`` replaces the
    marker selection (genes absent from var are reported and skipped); ``connectivities`` gives a
    precomputed graph for some of the embeddings (by name), e.g. the one a training stage saved.
    """
    if marker_genes is None:
        markers = select_marker_genes(
            adata,
            label_keys=label_keys,
            layer=layer,
            dataset_key=dataset_key,
            gene_symbols_key=gene_symbols_key,
            seed=seed,
        )
    else:
        markers = list(dict.fromkeys(marker_genes))
    present = set(adata.var_names)
    absent = [g for g in markers if g not in present]
    if absent:
        warnings.warn(
            f"{len(absent)} of {len(markers)} marker genes are not in var_names and are skipped: {absent[:10]}",
            stacklevel=2,
        )
        markers = [g for g in markers if g in present]
    graphs = dict(connectivities or {})
    results = {}
    for i, (name, emb) in enumerate(embeddings.items()):
        results[name] = neighbourhood_correlation(
            adata,
            None if name in graphs else emb,
            connectivities=graphs.get(name),
            library_key=library_key,
            dataset_key=dataset_key,
            technical_covariate_keys=technical_covariate_keys,
            layer=layer,
            marker_genes=markers,
            n_neighbors=n_neighbors,
            random_baseline=random_baseline and i == 0,
            seed=seed,
            n_jobs=n_jobs,
        )
    for name, r in results.items():
        others = [o.per_cell for m, o in results.items() if m != name]
        r.failure_modes = failure_modes(r.per_cell, others)
    table = pd.DataFrame({name: r.headline for name, r in results.items()}).T
    h13 = integration_failure_rate({m: r.per_cell["corr_cross_dataset"].to_numpy() for m, r in results.items()})
    table.insert(table.columns.get_loc("H14"), "H13", h13)
    first = next(iter(results.values()))
    if first.baseline is not None:
        base = first.baseline.copy()
        base["H13"] = np.nan
        table.loc["random_knn"] = base[table.columns]
    table.index.name = "model"
    table.attrs["missing_markers"] = absent
    table.attrs["marker_genes"] = markers
    return table, results
