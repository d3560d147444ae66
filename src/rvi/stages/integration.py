"""Integration metrics of a model's latent space beside the RNA PCA baseline (the ``metrics.csv`` of a model)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


def integration_metrics(adata, latent: np.ndarray, cfg_metrics: Mapping, covariates: Mapping, levels, threads: int = 1):
    """Integration metrics of a latent (row ``rvi``) beside the RNA PCA baseline (row ``pca``).

    Batch terms use every cell, with the library and the dataset each as batch: ``batch_mixing_<key>``
    (:func:`rvi.metrics.batch_mixing_score`) and ``ilisi_<key>`` (scib-metrics iLISI, scaled to [0, 1]).
    The scib table (Bio / Batch / Total, batch = library) needs labels, so it runs on the labelled cells
    only; when those span a single library or dataset its batch terms say nothing about mixing across
    them, and a warning says so (the all-cell columns still do).
    """
    import warnings

    from rvi.metrics import pca_baseline, scib_benchmark

    lib_key, ds_key = covariates["library_key"], covariates["dataset_key"]
    batch_keys = [k for k in dict.fromkeys([lib_key, ds_key]) if k]
    pca = pca_baseline(adata) if cfg_metrics["enabled"] else None
    embeddings = {"rvi": latent} if pca is None else {"rvi": latent, "pca": pca}
    table = pd.DataFrame(
        {name: all_cell_batch_terms(emb, adata.obs, batch_keys, threads) for name, emb in embeddings.items()}
    ).T
    table["n_cells_batch_terms"] = adata.n_obs
    if not cfg_metrics["enabled"]:
        return table
    level = cfg_metrics["label_level"] or _metrics_level(adata.obs, levels, lib_key)
    if level is None:
        print("metrics: no label level with >= 2 labels over >= 2 libraries: batch terms on all cells only")
        return table
    labelled = adata.obs[level].notna().to_numpy()
    sub = adata[labelled]
    single = [k for k in batch_keys if sub.obs[k].nunique() < 2]
    if single:
        message = (
            f"metrics: the {int(labelled.sum())} cells labelled at {level!r} span a single "
            + " and a single ".join(f"{k} ({sub.obs[k].astype(str).iat[0]!r})" for k in single)
            + ": the scib batch terms on them do not measure mixing across "
            + ", ".join(single)
            + "; read batch_mixing_* / ilisi_* (all cells)"
        )
        warnings.warn(message, stacklevel=2)
        print(message)
    try:
        scib = scib_benchmark(
            sub,
            {"rvi": latent[labelled], "pca": pca[labelled]},
            label_key=level,
            batch_key=lib_key,
            n_jobs=threads,
            subsample=cfg_metrics["max_cells"],
        )
    except ValueError as exc:  # too few cells / labels for scib: keep the label-free numbers
        print(f"metrics: scib skipped ({exc})")
        return table
    scib["label_level"] = level
    scib["labelled_single_batch"] = ",".join(single)
    return scib.rename(columns={"n_cells": "n_cells_scib"}).join(table, how="left")


def all_cell_batch_terms(latent: np.ndarray, obs: pd.DataFrame, batch_keys: Sequence[str], threads: int = 1) -> dict:
    """Label-free batch terms of one embedding over every cell: entropy mixing and iLISI per batch key."""
    from scib_metrics import ilisi_knn

    from rvi.metrics import batch_mixing_score
    from rvi.metrics.scib import SCIB_NEIGHBOURS, _neighbors_results_class, exact_knn

    latent = np.asarray(latent, dtype=np.float32)
    out = {}
    k = min(max(SCIB_NEIGHBOURS), len(latent) - 1)
    neighbours = None
    for key in batch_keys:
        batch = obs[key].astype(str).to_numpy()
        out[f"batch_mixing_{key}"] = batch_mixing_score(latent, batch, n_jobs=threads)
        if len(np.unique(batch)) < 2 or k < 2:
            out[f"ilisi_{key}"] = np.nan
            continue
        if neighbours is None:
            idx, dist = exact_knn(latent, k + 1, n_jobs=threads)
            neighbours = _neighbors_results_class()(indices=idx, distances=dist)
        out[f"ilisi_{key}"] = float(ilisi_knn(neighbours, batch))
    return out


def _metrics_level(obs: pd.DataFrame, levels: Sequence[str], lib_key: str) -> str | None:
    for level in reversed(list(levels)):
        if level not in obs:
            continue
        lab = obs.loc[obs[level].notna(), [level, lib_key]]
        if lab[level].nunique() >= 2 and lab[lib_key].nunique() >= 2:
            return level
    return None
