"""Headline metrics H1-H14 and the composites (docs/metrics.md) from per-cell tables."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

HEADLINE_KEYS = tuple(f"H{i}" for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14))
COMPOSITE_KEYS = ("bio", "library_integration", "dataset_integration", "batch", "total")
_INTEGRATION_WEIGHTS = (0.4, 0.3, 0.3)


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
