"""Shared fixtures: locating ../shared/data and small count matrices."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("RVI_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real test data not found at {path} (set RVI_SHARED_DATA)")
    return path


def make_counts(n_cells: int = 300, n_genes: int = 60, seed: int = 0) -> ad.AnnData:
    """Small NB counts with three libraries in two datasets."""
    rng = np.random.default_rng(seed)
    means = rng.lognormal(0.0, 1.0, n_genes)
    size = rng.lognormal(0.0, 0.3, n_cells)
    X = rng.negative_binomial(5, 5 / (5 + np.outer(size, means)))
    obs = pd.DataFrame(
        {"lib": rng.choice(["a", "b", "c"], n_cells), "depth": size}, index=[f"cell{i}" for i in range(n_cells)]
    )
    obs["ds"] = obs["lib"].map({"a": "d1", "b": "d1", "c": "d2"})
    return ad.AnnData(
        sp.csr_matrix(X.astype(np.float32)), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)])
    )


@pytest.fixture
def counts_adata() -> ad.AnnData:
    return make_counts()
