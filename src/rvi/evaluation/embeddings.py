"""Embeddings to score: loading (parquet of cells x dims, or an ``.obsm`` key of an .h5ad), alignment to the
evaluated cells, and the checks that turn bad input into messages naming the embedding."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd


class EmbeddingError(ValueError):
    """An embedding that cannot be scored (missing cells, NaN rows, wrong shape); the message names it."""


def read_embedding(source: str | Mapping, name: str) -> pd.DataFrame:
    """Cells x dims table of an embedding.

    ``source`` is a parquet path (index: cell names) or ``{"path": file.h5ad, "obsm": key}``; a string
    ``file.h5ad:obsm_key`` is accepted as shorthand for the latter.
    """
    if isinstance(source, str) and ".h5ad:" in source:
        path, key = source.rsplit(":", 1)
        source = {"path": path, "obsm": key}
    if isinstance(source, Mapping):
        path, key = str(source["path"]), source.get("obsm")
        if not key:
            raise EmbeddingError(f"embedding {name!r}: {path} is an .h5ad, give the .obsm key to read ('obsm: X_key')")
        return _read_obsm(path, key, name)
    path = str(source)
    if not Path(path).exists():
        raise EmbeddingError(f"embedding {name!r}: file {path} does not exist")
    if not path.endswith(".parquet"):
        raise EmbeddingError(f"embedding {name!r}: {path} is neither a .parquet table nor an .h5ad with an obsm key")
    frame = pd.read_parquet(path)
    frame.index = frame.index.astype(str)
    return frame


def _read_obsm(path: str, key: str, name: str) -> pd.DataFrame:
    import anndata as ad

    if not Path(path).exists():
        raise EmbeddingError(f"embedding {name!r}: file {path} does not exist")
    backed = ad.read_h5ad(path, backed="r")
    try:
        if key not in backed.obsm:
            raise EmbeddingError(f"embedding {name!r}: {path} has no obsm[{key!r}] (keys: {sorted(backed.obsm)})")
        values = backed.obsm[key]
        values = values.to_numpy() if isinstance(values, pd.DataFrame) else np.asarray(values)
        index = backed.obs_names.astype(str)
    finally:
        backed.file.close()
    if values.ndim != 2:
        raise EmbeddingError(f"embedding {name!r}: obsm[{key!r}] of {path} has shape {values.shape}, expected 2-D")
    return pd.DataFrame(values, index=index, columns=[f"d{i}" for i in range(values.shape[1])])


def align_embedding(frame: pd.DataFrame, obs_names: pd.Index, name: str) -> np.ndarray:
    """Rows of ``frame`` in the order of ``obs_names`` as float32, after checking cells and values.

    Raises :class:`EmbeddingError` naming the embedding when cells are missing or extra (a table with a
    different number of cells and no matching names is reported by count), when a column is not numeric
    or when rows hold NaN / infinite values.
    """
    obs_names = pd.Index(obs_names).astype(str)
    if frame.shape[1] < 1:
        raise EmbeddingError(f"embedding {name!r} has no columns")
    non_numeric = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        raise EmbeddingError(f"embedding {name!r}: non-numeric columns {non_numeric[:5]}")
    index = pd.Index(frame.index).astype(str)
    if index.has_duplicates:
        raise EmbeddingError(
            f"embedding {name!r}: duplicated cell names, e.g. {index[index.duplicated()][:3].tolist()}"
        )
    missing = obs_names.difference(index)
    if len(missing):
        if len(index) != len(obs_names):
            raise EmbeddingError(
                f"embedding {name!r} has {len(index)} cells, the evaluated study has {len(obs_names)} "
                f"({len(missing)} of them missing from it, e.g. {missing[:3].tolist()})"
            )
        raise EmbeddingError(f"embedding {name!r} lacks {len(missing)} evaluated cells, e.g. {missing[:3].tolist()}")
    values = frame.set_axis(index).loc[obs_names].to_numpy(dtype=np.float64)
    validate_matrix(values, name, len(obs_names))
    return values.astype(np.float32)


def validate_matrix(values: np.ndarray, name: str, n_cells: int) -> None:
    """Shape (n_cells, d >= 1) and finite values, else :class:`EmbeddingError` naming the embedding."""
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[0] != n_cells or values.shape[1] < 1:
        raise EmbeddingError(
            f"embedding {name!r} has shape {values.shape}, expected ({n_cells}, d) for {n_cells} cells"
        )
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise EmbeddingError(
            f"embedding {name!r} has {int(bad.sum())} rows with NaN or infinite values "
            f"(first at row {np.flatnonzero(bad)[0]})"
        )


def modality_slices(frame: pd.DataFrame, prefix: str) -> dict[str, pd.DataFrame]:
    """Per-modality slices ``{prefix}_{modality}`` of a multimodal model's ``modality_latents`` table, whose
    columns are ``{modality}_z{i}``."""
    groups: dict[str, list[str]] = {}
    for col in frame.columns:
        modality, sep, _ = str(col).rpartition("_z")
        if not sep or not modality:
            raise EmbeddingError(f"modality latents of {prefix!r}: column {col!r} is not named '<modality>_z<i>'")
        groups.setdefault(modality, []).append(col)
    return {f"{prefix}_{m}": frame[cols] for m, cols in groups.items()}
