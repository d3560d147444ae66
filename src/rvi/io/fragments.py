"""10x ATAC fragment files: sorted, bgzip-compressed, tabix-indexed (chrom, start, end, barcode, count)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from rvi.io.atomic import atomic_path

FRAGMENT_COLUMNS = ["chrom", "start", "end", "barcode", "count"]


def write_fragments(
    path: str | os.PathLike,
    fragments: pd.DataFrame,
    chrom_order: Sequence[str] | None = None,
    header: Sequence[str] = (),
) -> Path:
    """Sort ``fragments`` by (chrom, start, end, barcode), bgzip it to ``path`` and tabix-index it
    (``path + '.tbi'``). ``chrom_order`` fixes the chromosome order (default: order of first
    appearance); ``header`` lines are written first with a ``# `` prefix, as CellRanger does.
    Both files appear only on success, the index first so the data file never lacks one."""
    import pysam  # imported here: only the ATAC path needs it

    path = Path(path)
    missing = [c for c in FRAGMENT_COLUMNS if c not in fragments.columns]
    if missing:
        raise ValueError(f"{path}: fragment table lacks columns {missing}")
    order = list(chrom_order) if chrom_order is not None else list(pd.unique(fragments["chrom"]))
    rank = pd.Categorical(fragments["chrom"], categories=order)
    if (rank.codes < 0).any():
        raise ValueError(
            f"{path}: fragments on chromosomes not in chrom_order: {sorted(set(fragments['chrom']) - set(order))}"
        )
    if (fragments["end"] <= fragments["start"]).any() or (fragments["start"] < 0).any():
        raise ValueError(f"{path}: fragments need 0 <= start < end")
    df = fragments[FRAGMENT_COLUMNS].assign(_r=rank.codes)
    df = df.sort_values(["_r", "start", "end", "barcode"], kind="stable").drop(columns="_r")

    with atomic_path(path) as tmp_gz:
        plain = tmp_gz.with_name(tmp_gz.name + ".txt")
        try:
            with open(plain, "w") as fh:
                for line in header:
                    fh.write(f"# {line}\n")
                df.to_csv(fh, sep="\t", header=False, index=False)
            pysam.tabix_compress(str(plain), str(tmp_gz), force=True)
        finally:
            plain.unlink(missing_ok=True)
        with atomic_path(Path(str(path) + ".tbi")) as tmp_tbi:
            pysam.tabix_index(str(tmp_gz), preset="bed", index=str(tmp_tbi), force=True)
    return path


def read_fragments(path: str | os.PathLike, region: str | None = None) -> pd.DataFrame:
    """Read fragments (all, or those overlapping ``region`` like ``chr1:1000-2000``) via the tabix index."""
    import pysam

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: fragments file does not exist")
    try:
        with pysam.TabixFile(str(path)) as tbx:
            rows = [line.split("\t") for line in tbx.fetch(region=region)]
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read fragments via its tabix index: {e}") from e
    df = pd.DataFrame(rows, columns=FRAGMENT_COLUMNS)
    for c in ("start", "end", "count"):
        df[c] = df[c].astype(np.int64)
    return df
