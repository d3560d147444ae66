"""Genome regions of the ATAC features: chromosome sizes, tiles, peak names."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

# UCSC/GENCODE GRCh38 (hg38) primary chromosome lengths (public reference facts).
HG38_CHROM_SIZES: dict[str, int] = {
    "chr1": 248956422,
    "chr2": 242193529,
    "chr3": 198295559,
    "chr4": 190214555,
    "chr5": 181538259,
    "chr6": 170805979,
    "chr7": 159345973,
    "chr8": 145138636,
    "chr9": 138394717,
    "chr10": 133797422,
    "chr11": 135086622,
    "chr12": 133275309,
    "chr13": 114364328,
    "chr14": 107043718,
    "chr15": 101991189,
    "chr16": 90338345,
    "chr17": 83257441,
    "chr18": 80373285,
    "chr19": 58617616,
    "chr20": 64444167,
    "chr21": 46709983,
    "chr22": 50818468,
    "chrX": 156040895,
    "chrY": 57227415,
    "chrM": 16569,
}

# Mitochondrial reads are QC, and chrY tiles would make features depend on donor sex (SnapATAC2 default).
DEFAULT_EXCLUDE_CHROMS: tuple[str, ...] = ("chrM", "chrY", "M", "Y")
MITO_CHROMS: tuple[str, ...] = ("chrM", "M")

UnknownChroms = Literal["error", "drop"]


# --------------------------------------------------------------------------------------------------
# Genome helpers
# --------------------------------------------------------------------------------------------------


def load_chrom_sizes(chrom_sizes: Mapping[str, int] | str | os.PathLike | None = None) -> dict[str, int]:
    """Return chromosome sizes from a dict, a two-column ``chrom<TAB>size`` file, or hg38 (``None``)."""
    if chrom_sizes is None:
        return dict(HG38_CHROM_SIZES)
    if isinstance(chrom_sizes, Mapping):
        sizes = {str(k): int(v) for k, v in chrom_sizes.items()}
    else:
        path = Path(chrom_sizes)
        if not path.is_file():
            raise FileNotFoundError(f"Chromosome sizes file not found: {path}")
        table = pd.read_csv(path, sep="\t", header=None, comment="#", usecols=[0, 1], dtype={0: str, 1: np.int64})
        sizes = dict(zip(table[0], table[1].astype(int)))
    if not sizes:
        raise ValueError("chrom_sizes is empty.")
    bad = {k: v for k, v in sizes.items() if v <= 0}
    if bad:
        raise ValueError(f"Chromosome sizes must be positive: {bad}")
    return sizes


def tile_names(chrom_sizes: Mapping[str, int], bin_size: int, exclude_chroms: Iterable[str] = ()) -> pd.DataFrame:
    """Tiles ``chrom:start-end`` (0-based half-open, last tile truncated) in ``chrom_sizes`` order."""
    exclude = set(exclude_chroms)
    frames = []
    for chrom, size in chrom_sizes.items():
        if chrom in exclude:
            continue
        starts = np.arange(0, size, bin_size, dtype=np.int64)
        ends = np.minimum(starts + bin_size, size)
        frames.append(pd.DataFrame({"chrom": chrom, "start": starts, "end": ends}))
    tiles = pd.concat(frames, ignore_index=True)
    tiles.index = tiles["chrom"] + ":" + tiles["start"].astype(str) + "-" + tiles["end"].astype(str)
    return tiles


def normalize_region(region: str) -> str:
    """Normalise ``chr1:100-200``, ``chr1-100-200`` or ``chr1_100_200`` to ``chr1:100-200``."""
    region = str(region).strip()
    if ":" in region:
        chrom, rest = region.rsplit(":", 1)
        start, end = rest.replace(",", "").split("-")
    else:
        sep = "-" if region.count("-") >= 2 else "_"
        parts = region.rsplit(sep, 2)
        if len(parts) != 3:
            raise ValueError(f"Cannot parse region {region!r} (expected chrom:start-end).")
        chrom, start, end = parts
    start_i, end_i = int(start), int(end)
    if end_i <= start_i:
        raise ValueError(f"Region {region!r} has end <= start.")
    return f"{chrom}:{start_i}-{end_i}"


def _read_peaks(peaks) -> list[str]:
    """Peaks from a list of region strings, a DataFrame (chrom/start/end) or a BED file (optionally gz)."""
    if isinstance(peaks, pd.DataFrame):
        cols = list(peaks.columns[:3])
        return [f"{c}:{int(s)}-{int(e)}" for c, s, e in peaks[cols].itertuples(index=False)]
    if isinstance(peaks, str | os.PathLike):
        path = Path(peaks)
        if not path.is_file():
            raise FileNotFoundError(f"Peak BED file not found: {path}")
        bed = pd.read_csv(path, sep="\t", header=None, comment="#", usecols=[0, 1, 2], dtype={0: str})
        bed = bed[~bed[0].str.startswith(("track", "browser"))]
        return [f"{c}:{int(s)}-{int(e)}" for c, s, e in bed.itertuples(index=False)]
    return [normalize_region(p) for p in peaks]


# --------------------------------------------------------------------------------------------------
# Fragment file validation
