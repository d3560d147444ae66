"""Small helpers shared by the stage modules."""

from __future__ import annotations

import pandas as pd


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # jobs run headless (cluster nodes, CI)
    import matplotlib.pyplot as plt

    return plt


def read_obs(path: str) -> pd.DataFrame:
    """obs of an .h5ad without loading X."""
    import anndata as ad

    backed = ad.read_h5ad(path, backed="r")
    try:
        return backed.obs.copy()
    finally:
        backed.file.close()


def restore_categoricals(obs: pd.DataFrame) -> None:
    # concat turns categoricals with differing categories into object columns; h5ad wants categories.
    for col in obs.columns:
        if obs[col].dtype == object and col != "barcode":
            obs[col] = pd.Categorical(obs[col].astype("string").astype(object).where(obs[col].notna()))
