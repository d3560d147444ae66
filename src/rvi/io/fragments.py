"""10x ATAC fragment files: sorted, bgzip-compressed, tabix-indexed (chrom, start, end, barcode, count)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from rvi.io.atomic import atomic_path

FRAGMENT_COLUMNS = ["chrom", "start", "end", "barcode", "count"]
#: The empty BGZF block every complete bgzip file ends with (SAM/BAM specification, section 4.1.2).
BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")
#: The config key that lets a study use fragments files without a tabix index.
NO_INDEX_KEY = "load_atac.require_index"


def fragments_file_problems(path: str | os.PathLike, require_index: bool = True) -> list[str]:
    """Cheap checks of a fragments file (its first and last bytes, its index): one line per problem.

    * bgzip-compressed (BGZF), not plain gzip or uncompressed: tabix and SnapATAC2 need BGZF;
    * complete: a bgzip file ends with the BGZF end-of-file block (missing = truncated copy / download);
    * ``<file>.tbi`` present (unless ``require_index`` is false) and not older than the file (an index of
      an earlier version of the file points to the wrong places: SnapATAC2 then fails inside Rust).

    Each message says what to run. Sorting is checked by tabix when indexing, and by
    :func:`rvi.atac.validate_fragments` when it scans a file without an index.
    """
    path = Path(path)
    if not path.is_file():
        return [f"{path}: fragments file does not exist"]
    with open(path, "rb") as fh:
        head = fh.read(18)
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(size - len(BGZF_EOF), 0))
        tail = fh.read()
    name = path.name
    index = Path(f"{path}.tbi")
    bgzf = head[:2] == b"\x1f\x8b" and len(head) >= 14 and head[3] & 4 != 0 and head[12:14] == b"BC"
    if head[:2] != b"\x1f\x8b":
        fix = f"`bgzip {name} && tabix -p bed {name}.gz`"
        what = "not compressed"
    else:
        fix = f"`zcat {name} | bgzip > {name}.bgz && mv {name}.bgz {name} && tabix -f -p bed {name}`"
        what = "plain gzip, not bgzip"
    if bgzf and tail != BGZF_EOF:
        return [f"{path}: truncated (no BGZF end-of-file block; an interrupted copy or download?): copy it again"]
    if not index.is_file():
        if not require_index:
            return []  # scanned as a whole (rvi.atac.validate_fragments also checks the order then)
        first = "" if bgzf else f" (and the file is {what}: {fix})"
        return [
            f"Tabix index not found: {index}{first}. Run `tabix -p bed {path}`, or set '{NO_INDEX_KEY}: false' "
            "in the config to scan the whole file instead"
        ]
    if not bgzf:
        return [f"{path}: {what} (tabix and SnapATAC2 need BGZF blocks to use its index): recompress with {fix}"]
    if index.stat().st_mtime < path.stat().st_mtime:
        return [
            f"{path}: tabix index {index.name} is older than the file (made for an earlier version of it): "
            f"re-index with `tabix -f -p bed {path}`"
        ]
    return []


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
