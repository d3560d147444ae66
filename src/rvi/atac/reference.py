"""An independent insertion counter (plain Python) that tests and audits compare SnapATAC2 against."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from rvi.atac.regions import DEFAULT_EXCLUDE_CHROMS, UnknownChroms, load_chrom_sizes, tile_names
from rvi.atac.validation import _open_text

# --------------------------------------------------------------------------------------------------


def independent_insertion_counts(
    fragments_path: str | os.PathLike,
    barcodes: Sequence[str] | None,
    chrom_sizes: Mapping[str, int] | str | os.PathLike | None,
    bin_size: int = 1000,
    *,
    exclude_chroms: Sequence[str] = DEFAULT_EXCLUDE_CHROMS,
    min_frag_size: int | None = None,
    max_frag_size: int | None = None,
    unknown_chroms: UnknownChroms = "error",
) -> ad.AnnData:
    """Count insertions per (cell, tile) with plain Python + numpy, without SnapATAC2.

    Follows the documented convention: every non-comment fragment line whose barcode is requested,
    whose chromosome is in ``chrom_sizes`` and not excluded, and whose size ``end - start`` is within
    the inclusive bounds contributes one insertion at ``start`` and one at ``end - 1`` (0-based), each
    to tile ``pos // bin_size``; the count column is ignored. Rows follow ``barcodes`` (or the order of
    first appearance when ``None``); columns are :func:`tile_names` order. Slow (reads the whole file
    in Python): meant for verification on small files.
    """
    path = Path(fragments_path)
    if not path.is_file():
        raise FileNotFoundError(f"ATAC fragments file not found: {path}")
    sizes = load_chrom_sizes(chrom_sizes)
    tiles = tile_names(sizes, bin_size, exclude_chroms)
    exclude = set(exclude_chroms)
    # First tile column of every counted chromosome.
    offset, col = {}, 0
    for chrom, size in sizes.items():
        if chrom in exclude:
            continue
        offset[chrom] = col
        col += -(-size // bin_size)
    row_of: dict[str, int] = {str(b): i for i, b in enumerate(barcodes)} if barcodes is not None else {}
    fixed = barcodes is not None
    rows: list[int] = []
    cols: list[int] = []
    unknown: set[str] = set()
    with _open_text(path) as handle:
        for line in handle:
            if line.startswith("#"):
                continue
            chrom, start_s, end_s, barcode = line.rstrip("\n").split("\t")[:4]
            if chrom not in sizes:
                unknown.add(chrom)
                continue
            if chrom in exclude:
                continue
            row = row_of.get(barcode)
            if row is None:
                if fixed:
                    continue
                row = row_of[barcode] = len(row_of)
            start, end = int(start_s), int(end_s)
            size = end - start
            if (min_frag_size is not None and size < min_frag_size) or (
                max_frag_size is not None and size > max_frag_size
            ):
                continue
            base = offset[chrom]
            rows += (row, row)
            cols += (base + start // bin_size, base + (end - 1) // bin_size)
    if unknown and unknown_chroms == "error":
        raise ValueError(f"Fragments file {path} has chromosome(s) not in chrom_sizes: {sorted(unknown)[:10]}.")
    n_rows = len(row_of)
    X = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64))),
        shape=(n_rows, len(tiles)),
    )
    X.sum_duplicates()
    names = list(barcodes) if fixed else list(row_of)
    return ad.AnnData(X=X, obs=pd.DataFrame(index=pd.Index([str(n) for n in names])), var=tiles)
