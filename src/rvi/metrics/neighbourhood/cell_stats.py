"""Per-cell statistics of one graph: marker profiles, neighbour-average and per-edge correlations, their
per-cell summaries and the isolation probabilities, chunked so that memory stays bounded at atlas scale."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .graph import _edge_rows, mask_matrix

_EDGE_CHUNK = 200_000
_ROW_CHUNK = 4096


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


def isolation_probability(degree: np.ndarray, n_target: np.ndarray, n_cells: int) -> np.ndarray:
    """Analytical probability that a cell with ``degree`` random neighbours has none in its target group.

    (1 - p_match)^k with p_match = n_target / (n_cells - 1), the fraction of other cells in the group.
    """
    p = np.asarray(n_target, dtype=np.float64) / max(n_cells - 1, 1)
    return (1.0 - np.clip(p, 0, 1)) ** np.asarray(degree, dtype=np.float64)


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
