"""Label-based integration metrics (scib-metrics) and simple baselines.

See docs/metrics.md ("Label-based"). scib-metrics' ``Benchmarker`` is used unchanged for the metric
definitions; only neighbour search is swapped for an exact scikit-learn search and the UMAP
connectivities for a numpy implementation of the same algorithm, because the default pynndescent/umap
paths spend 10-40 s in numba compilation per process, which dominates on CPU for subsamples of <= 50k
cells.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)

#: Neighbourhood sizes used by scib-metrics' Benchmarker (15: graph connectivity, 50: kBET, 90: LISI).
SCIB_NEIGHBOURS = (15, 50, 90)
BIO_COLUMNS = ("Isolated labels", "KMeans NMI", "KMeans ARI", "Silhouette label", "cLISI")
BATCH_COLUMNS = ("iLISI", "KBET", "Graph connectivity", "PCR comparison")
AGGREGATE_COLUMNS = ("Bio conservation", "Batch correction", "Total")


# --------------------------------------------------------------------------------------------------
# helpers shared with rvi.metrics.neighbourhood
# --------------------------------------------------------------------------------------------------
def _get_counts(adata, layer: str | None):
    X = adata.layers[layer] if layer is not None else adata.X
    if X is None:
        raise ValueError("adata has no count matrix (X is None and no layer given)")
    return X


def normalise_log1p(X, target_sum: float | None = 1e4):
    """Library-size normalise rows of a count matrix to ``target_sum`` and apply log1p (sparse-preserving)."""
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float64, copy=True)
        totals = np.asarray(X.sum(axis=1)).ravel()
    else:
        X = np.asarray(X, dtype=np.float64).copy()
        totals = X.sum(axis=1)
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    if sp.issparse(X):
        X = sp.diags(scale) @ X
        X.data = np.log1p(X.data)
        return X.tocsr()
    return np.log1p(X * scale[:, None])


def exact_knn(X: np.ndarray, k: int, n_jobs: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean kNN including each cell itself in column 0; returns (indices, distances)."""
    from sklearn.neighbors import NearestNeighbors

    X = np.asarray(X, dtype=np.float32)
    n = X.shape[0]
    if k > n:
        raise ValueError(f"asked for {k} neighbours (incl. self) but only {n} cells are available")
    nn = NearestNeighbors(n_neighbors=k, algorithm="brute" if X.shape[1] > 15 else "auto", n_jobs=n_jobs).fit(X)
    dist, idx = nn.kneighbors(X)
    # Duplicated points can push a cell out of its own first slot; scib-metrics assumes self comes first.
    rows = np.arange(n)
    not_first = idx[:, 0] != rows
    if not_first.any():
        for i in np.flatnonzero(not_first):
            pos = np.flatnonzero(idx[i] == i)
            if pos.size:
                idx[i, [0, pos[0]]] = idx[i, [pos[0], 0]]
                dist[i, [0, pos[0]]] = dist[i, [pos[0], 0]]
            else:
                idx[i, 1:] = idx[i, :-1].copy()
                dist[i, 1:] = dist[i, :-1].copy()
                idx[i, 0], dist[i, 0] = i, 0.0
    return idx, dist.astype(np.float32)


def umap_connectivities(indices: np.ndarray, distances: np.ndarray) -> sp.csr_matrix:
    """UMAP fuzzy-simplicial-set connectivities (as scanpy / scib-metrics) in vectorised numpy.

    Same algorithm as ``umap.umap_.fuzzy_simplicial_set`` with local_connectivity=1 and
    set_op_mix_ratio=1 (binary search for sigma over all cells at once), but without numba, whose
    compilation costs ~10-20 s per process and dominates small benchmarks on CPU. Self edges get 0.
    """
    dist = np.asarray(distances, dtype=np.float32)
    idx = np.asarray(indices)
    n, k = dist.shape
    target = np.log2(k)
    masked = np.where(dist > 0, dist, np.inf)
    rho = np.min(masked, axis=1)
    rho = np.where(np.isfinite(rho), rho, 0.0).astype(np.float32)
    lo = np.zeros(n)
    hi = np.full(n, np.inf)
    mid = np.ones(n)
    active = np.ones(n, dtype=bool)
    d = dist[:, 1:].astype(np.float64) - rho[:, None]
    for _ in range(64):
        if not active.any():
            break
        a = np.flatnonzero(active)
        da = d[a]
        psum = np.where(da > 0, np.exp(-np.clip(da, 0, None) / mid[a, None]), 1.0).sum(axis=1)
        done = np.abs(psum - target) < 1e-5
        over = ~done & (psum > target)
        under = ~done & ~over
        hi[a[over]] = mid[a[over]]
        mid[a[over]] = (lo[a[over]] + hi[a[over]]) / 2.0
        lo[a[under]] = mid[a[under]]
        grow = a[under][~np.isfinite(hi[a[under]])]
        halve = a[under][np.isfinite(hi[a[under]])]
        mid[grow] *= 2.0
        mid[halve] = (lo[halve] + hi[halve]) / 2.0
        active[a[done]] = False
    sigma = mid.astype(np.float32)
    floor = 1e-3 * np.where(rho > 0, dist.mean(axis=1), dist.mean())
    sigma = np.maximum(sigma, floor).astype(np.float32)
    delta = dist - rho[:, None]
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        vals = np.where((delta <= 0) | (sigma[:, None] == 0), 1.0, np.exp(-delta / sigma[:, None]))
    vals[idx == np.arange(n)[:, None]] = 0.0
    vals[idx < 0] = 0.0
    rows = np.repeat(np.arange(n), k)
    P = sp.csr_matrix((vals.ravel().astype(np.float32), (rows, np.maximum(idx, 0).ravel())), shape=(n, n))
    P.eliminate_zeros()
    Pt = P.T.tocsr()
    C = (P + Pt - P.multiply(Pt)).tocsr()
    C.eliminate_zeros()
    return C


def _neighbors_results_class():
    """scib-metrics NeighborsResults whose connectivities come from :func:`umap_connectivities`."""
    from functools import cached_property

    from scib_metrics.nearest_neighbors import NeighborsResults

    class FastNeighborsResults(NeighborsResults):
        @cached_property
        def knn_graph_connectivities(self) -> sp.csr_matrix:
            return umap_connectivities(self.indices, self.distances)

    return FastNeighborsResults


# --------------------------------------------------------------------------------------------------
# baselines and subsampling
# --------------------------------------------------------------------------------------------------
def pca_baseline(
    adata,
    n_comps: int = 50,
    layer: str | None = None,
    drop_pc1_threshold: float = 0.5,
    random_state: int = 0,
    return_info: bool = False,
):
    """PCA of log1p(normalised) counts, the unintegrated baseline embedding.

    PC1 is dropped when its absolute Pearson correlation with total counts exceeds
    ``drop_pc1_threshold`` (it then mostly encodes sequencing depth, not biology), so the result has
    ``n_comps - 1`` columns in that case. With ``return_info`` a dict with ``pc1_total_counts_corr`` and
    ``dropped_pc1`` is returned as well.
    """
    counts = _get_counts(adata, layer)
    totals = np.asarray(counts.sum(axis=1)).ravel().astype(np.float64)
    emb = pca_from_counts(counts, n_comps=n_comps, random_state=random_state)
    pc1 = emb[:, 0]
    if np.std(pc1) > 0 and np.std(totals) > 0:
        corr = float(np.corrcoef(pc1, totals)[0, 1])
    else:
        corr = 0.0
    dropped = abs(corr) > drop_pc1_threshold
    if dropped:
        logger.info("PCA baseline: dropping PC1 (|corr with total counts| = %.2f)", abs(corr))
        emb = emb[:, 1:]
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if return_info:
        return emb, {"pc1_total_counts_corr": corr, "dropped_pc1": bool(dropped)}
    return emb


def pca_from_counts(counts, n_comps: int = 50, random_state: int = 0) -> np.ndarray:
    """PCA scores of log1p(normalised) counts; n_comps is capped by the matrix shape."""
    from sklearn.decomposition import PCA

    Xn = normalise_log1p(counts)
    n_comps = int(min(n_comps, Xn.shape[0] - 1, Xn.shape[1] - 1))
    if n_comps < 2:
        raise ValueError(f"need at least 3 cells and 3 genes for a PCA, got shape {Xn.shape}")
    if sp.issparse(Xn) and Xn.shape[0] * Xn.shape[1] > 2e8:
        return _sparse_centred_pca(Xn, n_comps, random_state)
    Xd = Xn.toarray() if sp.issparse(Xn) else Xn
    return PCA(n_components=n_comps, random_state=random_state).fit_transform(Xd)


def _sparse_centred_pca(X: sp.csr_matrix, n_comps: int, random_state: int) -> np.ndarray:
    """PCA scores of a large sparse matrix with implicit centring (never densifies X)."""
    from scipy.sparse.linalg import LinearOperator, svds

    mean = np.asarray(X.mean(axis=0)).ravel()
    ones = np.ones(X.shape[0])
    op = LinearOperator(
        X.shape,
        matvec=lambda v: X @ v - mean @ v,
        rmatvec=lambda u: X.T @ u - mean * u.sum(),
        matmat=lambda V: X @ V - np.outer(ones, mean @ V),
        rmatmat=lambda U: X.T @ U - np.outer(mean, U.sum(axis=0)),
        dtype=np.float64,
    )
    u, s, _ = svds(op, k=n_comps, random_state=random_state)
    order = np.argsort(-s)
    u = u[:, order] * s[order]
    # Deterministic signs (as sklearn's svd_flip): the largest |score| of each component is positive.
    signs = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])])
    return u * np.where(signs == 0, 1.0, signs)


def stratified_subsample(
    obs: pd.DataFrame, label_key: str, library_key: str, n: int = 50000, seed: int = 0
) -> np.ndarray:
    """Sorted integer positions of a subsample stratified by label x library.

    Allocation is proportional to stratum size with at least one cell per stratum, so rare cell types
    and small libraries survive. Strata holding a single cell are merged into a per-label stratum
    (otherwise every singleton would be kept with certainty and inflate its weight).
    """
    n_total = len(obs)
    if n >= n_total:
        return np.arange(n_total)
    if n <= 0:
        raise ValueError("n must be positive")
    label = obs[label_key].astype(str).to_numpy()
    library = obs[library_key].astype(str).to_numpy()
    strata = pd.Series(label, dtype=object) + "\x1f" + pd.Series(library, dtype=object)
    sizes = strata.value_counts()
    singletons = strata.map(sizes).to_numpy() == 1
    strata = strata.to_numpy()
    strata[singletons] = label[singletons]
    codes, uniq = pd.factorize(strata)
    sizes = np.bincount(codes).astype(np.int64)

    exact = n * sizes / n_total
    quota = np.minimum(sizes, np.maximum(1, np.floor(exact))).astype(np.int64)
    deficit = n - int(quota.sum())
    while deficit > 0:
        room = quota < sizes
        order = np.argsort(-(exact - quota) * room, kind="stable")
        order = order[room[order]][:deficit]
        quota[order] += 1
        deficit = n - int(quota.sum())
    while deficit < 0:
        # More strata than requested cells: trim the over-allocated strata first, then the smallest.
        surplus = np.where(quota > 1, quota - exact, -np.inf)
        if np.isfinite(surplus).any():
            order = np.argsort(-surplus, kind="stable")[:-deficit]
            order = order[quota[order] > 1]
        else:
            order = np.argsort(sizes, kind="stable")
            order = order[quota[order] > 0][:-deficit]
        quota[order] -= 1
        deficit = n - int(quota.sum())

    rng = np.random.default_rng(seed)
    order = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    chosen = [rng.choice(order[bounds[s] : bounds[s + 1]], size=quota[s], replace=False) for s in range(len(uniq))]
    return np.sort(np.concatenate(chosen))


# --------------------------------------------------------------------------------------------------
# supervised label probe
# --------------------------------------------------------------------------------------------------
def knn_label_accuracy(embedding: np.ndarray, labels, k: int = 15, folds: int = 5, seed: int = 0) -> float:
    """Stratified ``folds``-fold cross-validated kNN (``k``) accuracy of predicting ``labels`` from the
    embedding: how much label information it holds, supervised, whatever its geometry does to clustering."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    labels = np.asarray(labels).astype(str)
    if len(labels) != len(embedding):
        raise ValueError(f"knn_label_accuracy: {len(embedding)} cells in the embedding but {len(labels)} labels.")
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(KNeighborsClassifier(k), embedding, labels, cv=cv).mean())


# --------------------------------------------------------------------------------------------------
# label-free batch mixing
# --------------------------------------------------------------------------------------------------
def batch_mixing_score(embedding: np.ndarray, batch, k: int = 15, n_jobs: int = 1) -> float:
    """Label-free batch mixing: mean normalised entropy of batch labels among each cell's k neighbours.

    Each cell's neighbourhood entropy is divided by the entropy of the global batch composition (what a
    perfectly mixed neighbourhood would show, also for unbalanced batches) and clipped to 1, so 1 means
    perfectly mixed and 0 means every neighbourhood is single-batch. NaN with fewer than two batches.
    """
    embedding = np.asarray(embedding)
    batch = pd.Series(np.asarray(batch))
    if embedding.shape[0] != len(batch):
        raise ValueError("embedding and batch must have the same number of cells")
    if batch.isna().any():
        raise ValueError("batch contains missing values")
    codes, uniq = pd.factorize(batch)
    if len(uniq) < 2:
        warnings.warn("batch_mixing_score: fewer than two batches, returning NaN", stacklevel=2)
        return float("nan")
    n = embedding.shape[0]
    k = min(k, n - 1)
    if k < 1:
        raise ValueError("need at least two cells")
    idx, _ = exact_knn(embedding, k + 1, n_jobs=n_jobs)
    neigh = codes[idx[:, 1:]]
    counts = np.zeros((n, len(uniq)))
    np.add.at(counts, (np.repeat(np.arange(n), k), neigh.ravel()), 1.0)
    p = counts / k
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.nansum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
    glob = np.bincount(codes) / n
    max_ent = -np.sum(glob * np.log(glob))
    # Small neighbourhoods cannot reach the global entropy of many batches; cap the reference accordingly.
    max_ent = min(max_ent, np.log(k)) if k > 1 else max_ent
    return float(np.mean(np.minimum(ent / max_ent, 1.0)))


# --------------------------------------------------------------------------------------------------
# scib-metrics wrapper
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _exact_neighbours_in_scib(n_jobs: int):
    """Route scib-metrics' internal pynndescent calls (kBET diffusion neighbours) to exact kNN."""
    import scib_metrics.nearest_neighbors as nn_mod

    original = nn_mod.pynndescent
    results_cls = _neighbors_results_class()

    def _exact(X, n_neighbors, random_state=0, n_jobs_=n_jobs, **_):
        idx, dist = exact_knn(np.asarray(X), n_neighbors, n_jobs=n_jobs_)
        return results_cls(indices=idx, distances=dist)

    nn_mod.pynndescent = _exact
    try:
        yield _exact
    finally:
        nn_mod.pynndescent = original


def scib_benchmark(
    adata,
    embeddings: Mapping[str, np.ndarray],
    label_key: str,
    batch_key: str,
    n_jobs: int = 1,
    subsample: int | None = 50000,
    layer: str | None = None,
    pre_integrated: np.ndarray | None = None,
    library_key: str | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Run scib-metrics (unscaled) on several embeddings of the same cells.

    Parameters
    ----------
    adata
        Cells x genes with raw counts in ``X`` or ``layer`` (used for the pre-integration PCA that the
        PCR comparison needs, unless ``pre_integrated`` is given) and ``label_key``/``batch_key`` in obs.
    embeddings
        name -> array (n_obs x d), rows aligned with ``adata``.
    subsample
        Stratified subsample size (label x ``library_key``, default ``batch_key``); None keeps all cells.

    Returns
    -------
    One row per embedding: the scib metrics (bio: isolated labels, KMeans NMI/ARI, silhouette label,
    cLISI; batch: iLISI, kBET, graph connectivity, PCR comparison) and "Bio conservation",
    "Batch correction", "Total" (= 0.6 Bio + 0.4 Batch), plus ``n_cells``.
    """
    import anndata as ad
    from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation

    if not embeddings:
        raise ValueError("no embeddings given")
    for key in (label_key, batch_key):
        if key not in adata.obs:
            raise KeyError(f"{key!r} not in adata.obs")
    n_obs = adata.n_obs
    for name, emb in embeddings.items():
        emb = np.asarray(emb)
        if emb.ndim != 2 or emb.shape[0] != n_obs:
            raise ValueError(f"embedding {name!r} has shape {emb.shape}, expected ({n_obs}, d)")
        if not np.isfinite(emb).all():
            raise ValueError(f"embedding {name!r} contains non-finite values")

    # dict.fromkeys: library_key may be the batch key itself (one column, not a duplicated pair).
    obs = adata.obs[list(dict.fromkeys([label_key, batch_key, *([library_key] if library_key else [])]))].copy()
    keep = obs[label_key].notna().to_numpy() & obs[batch_key].notna().to_numpy()
    if not keep.all():
        warnings.warn(f"scib_benchmark: dropping {int((~keep).sum())} cells with missing label/batch", stacklevel=2)
    pos = np.flatnonzero(keep)
    if subsample is not None and len(pos) > subsample:
        sub = stratified_subsample(obs.iloc[pos], label_key, library_key or batch_key, n=subsample, seed=seed)
        pos = pos[sub]

    n = len(pos)
    if n <= max(SCIB_NEIGHBOURS):
        raise ValueError(
            f"scib_benchmark needs more than {max(SCIB_NEIGHBOURS)} cells (its largest neighbourhood), got {n}"
        )
    sub_obs = pd.DataFrame(
        {
            "label": obs[label_key].iloc[pos].astype(str).to_numpy(),
            "batch": obs[batch_key].iloc[pos].astype(str).to_numpy(),
        },
        index=adata.obs_names[pos].astype(str),
    )
    if sub_obs["batch"].nunique() < 2:
        raise ValueError("scib_benchmark needs at least two batches")
    if sub_obs["label"].nunique() < 2:
        raise ValueError("scib_benchmark needs at least two labels")

    if pre_integrated is None:
        pre = pca_baseline(adata[pos], n_comps=50, layer=layer, drop_pc1_threshold=np.inf)
    else:
        pre = np.asarray(pre_integrated)[pos]

    keys = [f"emb{i}" for i in range(len(embeddings))]
    obsm = {k: np.ascontiguousarray(np.asarray(e)[pos], dtype=np.float32) for k, e in zip(keys, embeddings.values())}
    obsm["X_pre"] = np.ascontiguousarray(pre, dtype=np.float32)
    bdata = ad.AnnData(obs=sub_obs, obsm=obsm)

    results_cls = _neighbors_results_class()

    def neighbours(X, k):
        idx, dist = exact_knn(X, k, n_jobs=n_jobs)
        return results_cls(indices=idx, distances=dist)

    bm = Benchmarker(
        bdata,
        batch_key="batch",
        label_key="label",
        embedding_obsm_keys=keys,
        bio_conservation_metrics=BioConservation(
            isolated_labels=True,
            nmi_ari_cluster_labels_leiden=False,
            nmi_ari_cluster_labels_kmeans=True,
            silhouette_label=True,
            clisi_knn=True,
        ),
        batch_correction_metrics=BatchCorrection(
            bras=False, ilisi_knn=True, kbet_per_label=True, graph_connectivity=True, pcr_comparison=True
        ),
        pre_integrated_embedding_obsm_key="X_pre",
        n_jobs=n_jobs,
        progress_bar=False,
    )
    # The Benchmarker calls gc.collect() before every metric; freezing the objects that already exist
    # (jax, numba, the caller's data) makes those collections cheap without changing what gets freed.
    gc.freeze()
    try:
        with _exact_neighbours_in_scib(n_jobs), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="PCR comparison score is negative")
            bm.prepare(neighbor_computer=neighbours)
            bm.benchmark()
    finally:
        gc.unfreeze()
    res = bm.get_results(min_max_scale=False)
    res = res.drop(index="Metric Type").astype(float)
    res.index = pd.Index(list(embeddings), name="embedding")
    metric_cols = [c for c in (*BIO_COLUMNS, *BATCH_COLUMNS) if c in res.columns]
    res = res[metric_cols + [c for c in res.columns if c not in metric_cols]]
    # Recompute the aggregates explicitly so the contract (NaN metrics skipped, 0.6/0.4) does not depend
    # on the Benchmarker's internal groupby.
    res["Bio conservation"] = res[[c for c in BIO_COLUMNS if c in res]].mean(axis=1, skipna=True)
    res["Batch correction"] = res[[c for c in BATCH_COLUMNS if c in res]].mean(axis=1, skipna=True)
    res["Total"] = 0.6 * res["Bio conservation"] + 0.4 * res["Batch correction"]
    res["n_cells"] = n
    return res
