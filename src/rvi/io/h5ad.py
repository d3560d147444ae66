"""Light reads of .h5ad files written by the workflow (stages and notebooks)."""

from __future__ import annotations

import os

import pandas as pd


def read_obs(path: str | os.PathLike) -> pd.DataFrame:
    """obs of an .h5ad without loading X."""
    import anndata as ad

    backed = ad.read_h5ad(path, backed="r")
    try:
        return backed.obs.copy()
    finally:
        backed.file.close()
