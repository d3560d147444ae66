"""Chunked passes over count matrices (in memory, sparse or backed .h5ad): validation and init statistics."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


def iter_row_chunks(X, chunk_size: int = 10_000) -> Iterator[tuple[int, np.ndarray | sp.csr_matrix]]:
    """Yield (start, rows) blocks; works for numpy, scipy sparse and anndata backed datasets."""
    n = X.shape[0]
    for start in range(0, n, chunk_size):
        block = X[start : min(start + chunk_size, n)]
        if sp.issparse(block):
            block = sp.csr_matrix(block)
        elif not isinstance(block, np.ndarray):
            block = np.asarray(block)
        yield start, block


def validate_counts(X, name: str = "counts") -> None:
    """Raise if X is empty or holds negative, non-integer or non-finite values (chunked; see rvi.io.tenx)."""
    from rvi.io.tenx import validate_counts as check_values

    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(X.shape)}): nothing to train on.")
    check_values(X, name)


@dataclass
class ModalityStats:
    """Per-feature and per-cell summaries used to initialise one modality."""

    total: np.ndarray  # per cell
    mean: np.ndarray  # per feature
    var: np.ndarray  # per feature
    mean_fraction: np.ndarray  # per feature: mean over cells of x / total
    category_fraction: list[np.ndarray]  # per ambient key: (n_cats, F) mean of x / total in each category
    density: float  # fraction of non-zero entries
    detected: np.ndarray  # per feature: number of cells with a non-zero count


def modality_stats(X, ambient_codes: list[np.ndarray], n_cats: list[int], chunk_size: int = 10_000) -> ModalityStats:
    """One chunked pass: totals, Welford-merged mean/variance per feature, mean normalised fractions."""
    n, f = X.shape
    total = np.zeros(n)
    count, mean, m2 = 0, np.zeros(f), np.zeros(f)
    frac_sum = np.zeros(f)
    cat_sums = [np.zeros((k, f)) for k in n_cats]
    cat_counts = [np.zeros(k) for k in n_cats]
    nnz = 0
    detected = np.zeros(f)
    for start, block in iter_row_chunks(X, chunk_size):
        rows = block.shape[0]
        nnz += int(np.count_nonzero(block.data if sp.issparse(block) else block))
        detected += np.asarray((block > 0).sum(0)).ravel()
        if sp.issparse(block):
            block = block.astype(np.float64)
            t = np.asarray(block.sum(1)).ravel()
            b_mean = np.asarray(block.mean(0)).ravel()
            b_sq = np.asarray(block.multiply(block).mean(0)).ravel()
            scaled = sp.diags(1.0 / np.maximum(t, 1.0)) @ block
        else:
            block = np.asarray(block, dtype=np.float64)
            t = block.sum(1)
            b_mean = block.mean(0)
            b_sq = (block**2).mean(0)
            scaled = block / np.maximum(t, 1.0)[:, None]
        total[start : start + rows] = t
        b_m2 = (b_sq - b_mean**2) * rows
        # Chan et al. parallel merge of (count, mean, M2)
        delta = b_mean - mean
        new_count = count + rows
        mean = mean + delta * rows / new_count
        m2 = m2 + b_m2 + delta**2 * count * rows / new_count
        count = new_count
        frac_sum += np.asarray(scaled.sum(0)).ravel()
        for k, codes in enumerate(ambient_codes):
            c = codes[start : start + rows]
            ind = sp.csr_matrix((np.ones(rows), (c, np.arange(rows))), shape=(n_cats[k], rows))
            cat_sums[k] += np.asarray((ind @ scaled).todense() if sp.issparse(scaled) else ind @ scaled)
            cat_counts[k] += np.bincount(c, minlength=n_cats[k])
    var = m2 / max(count - 1, 1)
    cat_frac = [s / np.maximum(c, 1)[:, None] for s, c in zip(cat_sums, cat_counts)]
    return ModalityStats(total, mean, var, frac_sum / max(n, 1), cat_frac, nnz / max(n * f, 1), detected)


def library_prior_stats(total: np.ndarray, groups: np.ndarray | None, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of log total counts per library-size group (cells with zero counts excluded)."""
    log_t = np.log(np.maximum(total, 1.0))
    keep = total > 0
    groups = np.zeros(len(total), dtype=int) if groups is None else groups
    means, variances = np.zeros(n_groups), np.ones(n_groups)
    overall = log_t[keep].mean() if keep.any() else 0.0
    for g in range(n_groups):
        sel = keep & (groups == g)
        if sel.sum() >= 2:
            means[g], variances[g] = log_t[sel].mean(), max(log_t[sel].var(), 1e-2)
        else:
            means[g], variances[g] = (log_t[sel].mean() if sel.any() else overall), 1.0
    return means, variances


def dispersion_from_data(
    mean: np.ndarray, var: np.ndarray, total: np.ndarray, technical_fraction: float = 0.1, bounds=(0.01, 20.0)
) -> np.ndarray:
    """theta_g from the law of total variance (docs/model.md, "Dispersion initialisation").

    Var(x) = mu + mu^2 CV^2(L) + (mu^2/theta)(1 + CV^2(L)). The gene-specific excess over Poisson and
    library-size noise is split into biology (left to the latent space) and a technical share;
    excess_tech = technical_fraction * excess / (1 + CV^2) gives theta = mu^2 / excess_tech.
    """
    present = total[total > 0]
    cv2 = present.var() / present.mean() ** 2 if present.size else 0.0
    excess = var - mean - mean**2 * cv2
    excess_tech = technical_fraction * np.maximum(excess, 0.0) / (1.0 + cv2)
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = np.where(excess_tech > 0, mean**2 / excess_tech, bounds[1])
    return np.clip(np.nan_to_num(theta, nan=bounds[1]), *bounds)
