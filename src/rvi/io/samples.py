"""Sample sheets: one row per sample, validated before any job starts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import pandas as pd

from rvi.io import PATH_COLUMNS
from rvi.io.tenx import GENE_EXPRESSION, load_sample
from rvi.nesting import libraries_in_several_datasets, nesting_message


def read_sample_sheet(
    path: str | os.PathLike,
    check_paths: bool = True,
    library_key: str = "library",
    dataset_key: str | None = "dataset",
) -> pd.DataFrame:
    """Read and validate a sample sheet (.tsv/.txt tab-separated, .csv comma-separated).

    Required columns: sample, the library column (``library_key``: the config's
    ``covariates.library_key``), the dataset column (``dataset_key``; None: none) and rna_path.
    Optional: fragments_path, labels_path (empty = none) and any metadata (donor, tissue,
    condition, technical covariates) that :func:`load_sheet_sample` copies into obs. Relative
    paths are resolved against the sheet's folder and returned absolute. Raises ValueError for
    missing columns or values, duplicate sample ids, or a library in several datasets
    (:mod:`rvi.nesting`); FileNotFoundError for a path that does not exist. The result is
    indexed by sample.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: sample sheet does not exist")
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    sheet = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    sheet.columns = [c.strip() for c in sheet.columns]
    sheet = sheet.apply(lambda col: col.str.strip())
    required = [c for c in ("sample", library_key, dataset_key, "rna_path") if c]
    missing = [c for c in required if c not in sheet.columns]
    if missing:
        raise ValueError(f"{path}: sample sheet lacks required columns {missing} (has {list(sheet.columns)})")
    if sheet.empty:
        raise ValueError(f"{path}: sample sheet has a header but no samples (one row per sample is needed)")
    for col in required:
        empty = sheet.index[sheet[col] == ""].tolist()
        if empty:
            raise ValueError(f"{path}: empty {col!r} in rows {[i + 2 for i in empty]} (line numbers)")
    dup = sorted(sheet.loc[sheet["sample"].duplicated(), "sample"].unique())
    if dup:
        raise ValueError(f"{path}: duplicate sample ids {dup}")
    bad = libraries_in_several_datasets(sheet, library_key, dataset_key) if dataset_key else {}
    if bad:
        raise ValueError(f"{path}: {nesting_message(bad, library_key, dataset_key)}")
    lib_dup = sorted(sheet.loc[sheet[library_key].duplicated(), library_key].unique())
    if lib_dup:
        used = {lib: sheet.loc[sheet[library_key] == lib, "sample"].tolist() for lib in lib_dup}
        detail = "; ".join(f"{lib!r}: samples {names}" for lib, names in used.items())
        raise ValueError(
            f"{path}: library ids used by several samples ({detail}); each sample is one library (Scrublet and "
            "the ambient / library priors work per library): give each sample its own library id"
        )
    for col in PATH_COLUMNS:
        if col not in sheet.columns:
            sheet[col] = ""
        resolved = []
        for sample, value in zip(sheet["sample"], sheet[col]):
            if value == "":
                resolved.append("")
                continue
            p = Path(value).expanduser()
            p = p if p.is_absolute() else (path.parent / p)
            p = Path(os.path.normpath(p.absolute()))
            if check_paths and not p.exists():
                raise FileNotFoundError(f"{path}: sample {sample!r}: {col} {value!r} does not exist ({p})")
            resolved.append(str(p))
        sheet[col] = resolved
    for col in ("rna_path", "fragments_path"):
        used = sheet.loc[sheet[col] != "", [col, "sample"]]
        twice = used[used[col].duplicated(keep=False)]
        if len(twice):
            detail = "; ".join(f"{f}: samples {g['sample'].tolist()}" for f, g in twice.groupby(col, sort=True))
            raise ValueError(
                f"{path}: the same {col} is listed for several samples (cells would be duplicated): {detail}"
            )
    return sheet.set_index("sample", drop=False)


def load_sheet_sample(
    sheet: pd.DataFrame,
    sample: str,
    label_columns: Sequence[str] = (),
    feature_type: str | None = GENE_EXPRESSION,
    layer: str | None = None,
    library_key: str = "library",
) -> ad.AnnData:
    """Load one sample of a sheet from :func:`read_sample_sheet` with its metadata as obs columns."""
    if sample not in sheet.index:
        raise KeyError(f"sample {sample!r} not in the sample sheet (has {list(sheet.index)[:10]} ...)")
    row = sheet.loc[sample]
    # File columns describe inputs, not cells; every other column becomes an obs column.
    metadata = {k: v for k, v in row.items() if k not in PATH_COLUMNS}
    return load_sample(
        row["rna_path"],
        library=row[library_key],
        library_key=library_key,
        metadata=metadata,
        feature_type=feature_type,
        labels_path=row.get("labels_path") or None,
        label_columns=label_columns,
        fragments_path=row.get("fragments_path") or None,
        layer=layer,
    )
