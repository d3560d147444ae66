"""Latent kNN graph construction, the edge masks of each comparison level and the degree-matched random graph."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from rvi.nesting import check_library_nesting

from ..scib import exact_knn, umap_connectivities

LEVEL_MASKS = ("same_library", "between_libraries", "cross_library", "cross_dataset")
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


def _edge_rows(C: sp.csr_matrix) -> np.ndarray:
    """Row index of every stored edge (int32 while it fits: half the memory of the default int64)."""
    dtype = np.int32 if C.shape[0] < np.iinfo(np.int32).max else np.int64
    return np.repeat(np.arange(C.shape[0], dtype=dtype), np.diff(C.indptr))


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
