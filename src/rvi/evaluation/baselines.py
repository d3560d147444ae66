"""What a user would otherwise run, on the same cells and genes as the rvi models: unintegrated PCA,
Harmony on that PCA (harmonypy) and scvi-tools' SCVI with its usual settings."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from rvi.metrics.scib import pca_baseline


def pca_embedding(adata, n_comps: int = 50, drop_pc1_threshold: float = 0.5, seed: int = 0) -> tuple[np.ndarray, dict]:
    """PCA of log1p-normalised counts, PC1 dropped when |corr(PC1, total counts)| > ``drop_pc1_threshold``
    (``docs/metrics_spec.md`` section 1); returns the scores and ``{pc1_total_counts_corr, dropped_pc1}``."""
    return pca_baseline(
        adata, n_comps=n_comps, drop_pc1_threshold=drop_pc1_threshold, random_state=seed, return_info=True
    )


def harmony_embedding(
    pcs: np.ndarray, obs: pd.DataFrame, batch_key: str, seed: int = 0, max_iter: int = 10, threads: int = 1
) -> np.ndarray:
    """Harmony-corrected PCs (harmonypy's defaults: theta 2, sigma 0.1), one batch covariate."""
    import harmonypy

    if batch_key not in obs:
        raise KeyError(f"Harmony baseline: batch column {batch_key!r} not in obs (columns: {list(obs.columns)})")
    if obs[batch_key].isna().any():
        raise ValueError(f"Harmony baseline: {int(obs[batch_key].isna().sum())} cells have no {batch_key!r}")
    meta = pd.DataFrame({batch_key: obs[batch_key].astype(str).to_numpy()})
    if meta[batch_key].nunique() < 2:
        # Nothing to correct: Harmony's clustering would still move the cells around.
        return np.asarray(pcs, dtype=np.float32)
    ho = harmonypy.run_harmony(
        np.asarray(pcs, dtype=np.float64),
        meta,
        [batch_key],
        max_iter_harmony=max_iter,
        random_state=seed,
        verbose=False,
        ncores=max(int(threads), 1),
    )
    z = np.asarray(ho.Z_corr)
    # harmonypy returns dims x cells in some versions and cells x dims in others.
    if z.shape[0] != len(meta):
        z = z.T
    return np.ascontiguousarray(z, dtype=np.float32)


def scvi_embedding(adata, batch_key: str, spec: Mapping, threads: int = 1) -> tuple[np.ndarray, pd.DataFrame]:
    """scvi-tools SCVI with its usual settings (``batch_key`` = the library, ZINB, 1 hidden layer of 128,
    10 latent dims unless ``spec`` says otherwise) on raw counts; returns the latent and the training
    history (one row per epoch).

    ``spec``: ``n_latent``, ``n_hidden``, ``n_layers``, ``max_epochs`` (None: scvi-tools' own
    heuristic), ``batch_size``, ``accelerator``, ``seed``.
    """
    import scvi
    import torch

    from rvi.stages.training import history_frame

    torch.set_num_threads(max(int(threads), 1))
    scvi.settings.seed = int(spec["seed"])
    scvi.settings.dl_num_workers = 0
    data = adata.copy()
    scvi.model.SCVI.setup_anndata(data, batch_key=batch_key)
    model = scvi.model.SCVI(data, n_hidden=spec["n_hidden"], n_latent=spec["n_latent"], n_layers=spec["n_layers"])
    model.train(
        max_epochs=spec["max_epochs"],
        batch_size=spec["batch_size"],
        accelerator=spec["accelerator"],
        devices=1,
        enable_progress_bar=False,
    )
    return np.asarray(model.get_latent_representation(), dtype=np.float32), history_frame(model.history_)
