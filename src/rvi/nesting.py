"""Libraries nest in datasets: each library (a 10x channel) belongs to exactly one dataset.

The model's per-dataset terms (feature scaling, dispersion) and per-library terms (ambient, library
size) assume it; the sample sheet, the model setup and the neighbourhood metrics check it with
:func:`check_library_nesting`, the start-time checks with :func:`libraries_in_several_datasets`.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["check_library_nesting", "libraries_in_several_datasets", "nesting_message"]


def libraries_in_several_datasets(table: pd.DataFrame, library_key: str, dataset_key: str) -> dict[str, list[str]]:
    """``{library: [its datasets]}`` for every library of ``table`` with more than one dataset (missing
    values ignored); empty when the libraries nest."""
    pairs = table[[library_key, dataset_key]].dropna().astype(str).drop_duplicates()
    counts = pairs.groupby(library_key)[dataset_key].nunique()
    return {str(lib): sorted(pairs.loc[pairs[library_key] == lib, dataset_key]) for lib in counts.index[counts > 1]}


def nesting_message(bad: dict[str, list[str]], library_key: str, dataset_key: str) -> str:
    detail = "; ".join(f"library {lib!r} -> datasets {datasets}" for lib, datasets in bad.items())
    return f"each {library_key!r} must belong to exactly one {dataset_key!r}; libraries in several datasets: {detail}"


def check_library_nesting(table: pd.DataFrame, library_key: str, dataset_key: str, where: str = "") -> None:
    """Raise a ValueError naming the libraries of ``table`` that lie in several datasets."""
    bad = libraries_in_several_datasets(table, library_key, dataset_key)
    if bad:
        raise ValueError((f"{where}: " if where else "") + nesting_message(bad, library_key, dataset_key))
