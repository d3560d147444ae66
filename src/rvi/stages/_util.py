"""Small helpers shared by the stage modules."""

from __future__ import annotations

import pandas as pd


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # jobs run headless (cluster nodes, CI)
    import matplotlib.pyplot as plt

    return plt


def restore_categoricals(obs: pd.DataFrame) -> None:
    # concat turns categoricals with differing categories into object columns; h5ad wants categories.
    for col in obs.columns:
        if obs[col].dtype == object and col != "barcode":
            obs[col] = pd.Categorical(obs[col].astype("string").astype(object).where(obs[col].notna()))
