"""ATAC loading for the ``load_atac`` stage: fragments -> cell x tile / peak counts via SnapATAC2.

Counting convention (verified against SnapATAC2 2.9 on toy files and on the real 10x PBMC fragments,
see tests/test_atac.py)
-----------------------------------------------------------------------------------------------
A 10x fragments file has one line per unique fragment: ``chrom, start, end, barcode, count`` with
0-based ``start`` and exclusive ``end`` that are already Tn5-shift adjusted (10x applies the +4/-5
shift), and ``count`` = number of read pairs that collapsed onto the fragment (PCR duplicates).

* Each fragment line contributes exactly two insertions: one at 0-based position ``start`` and one at
  ``end - 1``. No further shift is applied (``shift_left``/``shift_right`` only exist in SnapATAC2's
  BAM conversion, not when importing fragments).
* The ``count`` column is ignored for counting (duplicates are already collapsed; repeated identical
  lines are counted as separate fragments). SnapATAC2 uses it only for ``frac_dup``
  (``1 - n_lines / sum(count)``).
* Insertion at position ``p`` goes to tile ``p // bin_size`` of its chromosome (tiles are
  ``[k * bin_size, min((k + 1) * bin_size, chrom_size))``), or to every peak with
  ``start <= p < end`` (peaks are 0-based half-open, ``chrom:start-end``).
* ``counting_strategy="insertion"`` is used throughout, so a fragment with both ends in one tile adds
  2 to that tile (SnapATAC2's default ``"paired-insertion"`` would add 1).
* Fragment size is ``end - start``; ``min_frag_size``/``max_frag_size`` are inclusive bounds and
  default to no filtering.
* Chromosomes in ``exclude_chroms`` (default chrM/chrY) get no tiles. Fragments on chromosomes absent
  from ``chrom_sizes`` are rejected by default (``unknown_chroms="error"``) or dropped.
* ``obs['n_fragment']`` is SnapATAC2's number of fragment lines per cell on nuclear chromosomes (chrM
  excluded); ``frac_mito`` is the mitochondrial share.

Threads: SnapATAC2 uses a Rust thread pool sized by ``RAYON_NUM_THREADS`` (set it before import in
cluster jobs); ``n_jobs`` only parallelises over several files.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = [
    "DEFAULT_EXCLUDE_CHROMS",
    "HG38_CHROM_SIZES",
    "atac_qc",
    "count_peaks",
    "count_tiles",
    "independent_insertion_counts",
    "join_rna_atac",
    "load_chrom_sizes",
    "normalize_region",
    "read_peaks_from_10x_h5",
    "tile_names",
    "validate_fragments",
]

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
# --------------------------------------------------------------------------------------------------


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.suffix in {".gz", ".bgz"} else open(path)


def _example_file_barcodes(path: Path, n: int = 5, max_lines: int = 200_000) -> list[str]:
    """A few distinct barcodes from the start of a fragments file (for error messages)."""
    seen: dict[str, None] = {}
    with _open_text(path) as handle:
        for i, line in enumerate(handle):
            if i >= max_lines or len(seen) >= n:
                break
            if line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) >= 4:
                seen.setdefault(fields[3].strip(), None)
    return list(seen)


def _scan_chromosomes(path: Path) -> dict[str, int]:
    """Full pass over a fragments file: chromosome -> maximum fragment end."""
    max_end: dict[str, int] = {}
    current, last_start = None, -1
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if line.startswith("#"):
                continue
            chrom, start, end = line.split("\t", 3)[:3]
            s, e = int(start), int(end)
            if chrom != current:
                if chrom in max_end:
                    raise ValueError(_unsorted(path, number, f"chromosome {chrom!r} appears again after {current!r}"))
                current, last_start = chrom, -1
            if s < last_start:
                raise ValueError(_unsorted(path, number, f"start {s} after {last_start} on {chrom!r}"))
            last_start = s
            if e > max_end.get(chrom, -1):
                max_end[chrom] = e
    return max_end


def _unsorted(path: Path, line: int, what: str) -> str:
    return (
        f"Fragments file {path} is not sorted by chromosome and start (line {line}: {what}): sort it with "
        f"`zcat {path.name} | sort -k1,1 -k2,2n | bgzip > sorted.tsv.gz && tabix -p bed sorted.tsv.gz`"
    )


def validate_fragments(
    fragments_path: str | os.PathLike,
    chrom_sizes: Mapping[str, int],
    unknown_chroms: UnknownChroms = "error",
    require_index: bool = True,
) -> list[str]:
    """Check a fragments file before SnapATAC2 reads it; return the chromosomes it contains.

    Checks: the file exists; its tabix index (``<file>.tbi``) exists when ``require_index`` (used to list
    chromosomes and look at chromosome ends without reading the whole file; with
    ``require_index=False`` the file is scanned once instead); its chromosome names match
    ``chrom_sizes`` (at least one always has to; others are an error or dropped per ``unknown_chroms``);
    no fragment ends past its chromosome's size (a different genome build; SnapATAC2 would abort).
    """
    if unknown_chroms not in ("error", "drop"):
        raise ValueError(f"unknown_chroms must be 'error' or 'drop', got {unknown_chroms!r}.")
    from rvi.io.fragments import fragments_file_problems

    path = Path(fragments_path)
    if not path.is_file():
        raise FileNotFoundError(f"ATAC fragments file not found: {path}")
    if require_index and not Path(f"{path}.tbi").is_file():
        raise FileNotFoundError(fragments_file_problems(path, require_index)[0])
    problems = fragments_file_problems(path, require_index)
    if problems:
        raise ValueError(problems[0])
    index = Path(f"{path}.tbi")
    if index.is_file():
        import pysam

        with pysam.TabixFile(str(path)) as tbx:
            chroms = list(tbx.contigs)
            max_end = {}
            for chrom in chroms:
                if chrom in chrom_sizes:
                    size = chrom_sizes[chrom]
                    # Only records overlapping the last base can end past the chromosome.
                    ends = [int(rec.split("\t")[2]) for rec in tbx.fetch(chrom, max(size - 1, 0), size + 10_000_000)]
                    max_end[chrom] = max(ends, default=0)
    elif require_index:
        raise FileNotFoundError(
            f"Tabix index not found: {index}. Index the bgzipped fragments file (e.g. `tabix -p bed {path.name}` or "
            f"pysam.tabix_index(path, preset='bed')), or pass require_index=False to scan the whole file instead."
        )
    else:
        max_end = _scan_chromosomes(path)
        chroms = list(max_end)
    if not chroms:
        raise ValueError(f"Fragments file {path} contains no fragments.")
    known = [c for c in chroms if c in chrom_sizes]
    unknown = [c for c in chroms if c not in chrom_sizes]
    if not known:
        raise ValueError(
            f"No chromosome of fragments file {path} is in chrom_sizes (different naming or genome?): file has "
            f"{chroms[:8]}, chrom_sizes has {list(chrom_sizes)[:8]}."
        )
    if unknown and unknown_chroms == "error":
        raise ValueError(
            f"Fragments file {path} has chromosome(s) not in chrom_sizes: {unknown[:10]}"
            f"{' ...' if len(unknown) > 10 else ''}. Add them to chrom_sizes, or pass unknown_chroms='drop' to ignore "
            f"their fragments (e.g. unplaced scaffolds)."
        )
    beyond = {c: (max_end[c], chrom_sizes[c]) for c in known if max_end.get(c, 0) > chrom_sizes[c]}
    if beyond:
        raise ValueError(
            f"Fragments in {path} end beyond the chromosome size (wrong genome build?): "
            f"{{chrom: (max fragment end, chrom size)}} = {beyond}"
        )
    return chroms


# --------------------------------------------------------------------------------------------------
# SnapATAC2 import and counting
# --------------------------------------------------------------------------------------------------


def _import_fragments(
    fragments_path,
    barcodes: Sequence[str] | None,
    chrom_sizes,
    min_num_fragments: int | None,
    sorted_by_barcode: bool,
    n_jobs: int,
    unknown_chroms: UnknownChroms,
    require_index: bool,
    tempdir,
):
    """Validate, import fragments in memory with SnapATAC2, and check that barcodes were found."""
    import snapatac2 as snap

    sizes = load_chrom_sizes(chrom_sizes)
    validate_fragments(fragments_path, sizes, unknown_chroms=unknown_chroms, require_index=require_index)
    if barcodes is not None:
        barcodes = [str(b) for b in barcodes]
        if len(barcodes) == 0:
            raise ValueError("barcodes is empty; pass None to import every barcode of the fragments file.")
        if len(set(barcodes)) != len(barcodes):
            raise ValueError("barcodes contains duplicates.")
    if min_num_fragments is None:
        # With a whitelist (cells called on RNA) keep every cell; cell QC happens downstream.
        min_num_fragments = 0 if barcodes is not None else 200
    data = snap.pp.import_fragments(
        str(fragments_path),
        sizes,
        file=None,
        min_num_fragments=0 if barcodes is not None else min_num_fragments,
        sorted_by_barcode=sorted_by_barcode,
        whitelist=barcodes,
        chrM=list(MITO_CHROMS),
        tempdir=tempdir,
        n_jobs=n_jobs,
    )
    if barcodes is not None and data.n_obs == 0:
        raise ValueError(
            f"None of the {len(barcodes)} requested barcodes occur in fragments file {fragments_path}. "
            f"Example barcodes in the file: {_example_file_barcodes(Path(fragments_path))}; "
            f"example barcodes requested: {barcodes[:5]}."
        )
    return data, sizes, min_num_fragments


def _tile_order(
    snap_names: pd.Index, reference_order: Sequence[str], sizes: Mapping[str, int], bin_size: int, exclude
) -> tuple[np.ndarray, pd.DataFrame]:
    """Column permutation from SnapATAC2's tile order to ``sizes`` order, and the matching var table.

    SnapATAC2 lays tiles out chromosome by chromosome in its reference-sequence order; the
    permutation is built block-wise with integers (string matching 3 M tile names takes seconds),
    then checked at every block boundary against SnapATAC2's own names.
    """
    exclude = set(exclude)
    n_tiles = {c: -(-size // bin_size) for c, size in sizes.items() if c not in exclude}
    snap_chroms = [c for c in reference_order if c in n_tiles]
    if sorted(snap_chroms) != sorted(n_tiles) or sum(n_tiles.values()) != len(snap_names):
        raise RuntimeError(
            f"Unexpected SnapATAC2 tile layout: {len(snap_names)} tiles for chromosomes {snap_chroms}, "
            f"expected {sum(n_tiles.values())} for {list(n_tiles)}."
        )
    offset = dict(zip(snap_chroms, np.concatenate([[0], np.cumsum([n_tiles[c] for c in snap_chroms])[:-1]])))
    perm = np.concatenate([np.arange(offset[c], offset[c] + n_tiles[c]) for c in n_tiles])
    starts = np.concatenate([np.arange(n_tiles[c], dtype=np.int64) * bin_size for c in n_tiles])
    ends = np.concatenate(
        [np.minimum((np.arange(n_tiles[c], dtype=np.int64) + 1) * bin_size, sizes[c]) for c in n_tiles]
    )
    chrom = pd.Categorical(np.repeat(np.arange(len(n_tiles)), list(n_tiles.values())), categories=range(len(n_tiles)))
    chrom = chrom.rename_categories(list(n_tiles))
    for c in n_tiles:
        first, last = offset[c], offset[c] + n_tiles[c] - 1
        expected = (f"{c}:0-{min(bin_size, sizes[c])}", f"{c}:{(n_tiles[c] - 1) * bin_size}-{sizes[c]}")
        if (snap_names[first], snap_names[last]) != expected:
            raise RuntimeError(
                f"Unexpected SnapATAC2 tile names {snap_names[first]}, {snap_names[last]}; expected {expected}."
            )
    var = pd.DataFrame({"chrom": chrom, "start": starts, "end": ends}, index=pd.Index(np.asarray(snap_names)[perm]))
    return perm, var


def _finish(
    X: sp.csr_matrix,
    fragments_data: ad.AnnData,
    barcodes: Sequence[str] | None,
    min_num_fragments: int,
    var: pd.DataFrame,
    fragments_path,
    info: dict,
    keep_fragments: bool,
) -> ad.AnnData:
    """Rows to ``barcodes`` (zero rows for absent ones) for columns already in ``var`` order; QC obs."""
    obs = fragments_data.obs.copy()
    obs.index = obs.index.astype(str)
    if barcodes is not None:
        barcodes = [str(b) for b in barcodes]
        row = obs.index.get_indexer(barcodes)
        present = row >= 0
        # Cells without any fragment get an all-zero row so outputs align with the RNA barcodes.
        X = sp.vstack([X, sp.csr_matrix((1, X.shape[1]), dtype=X.dtype)]).tocsr()[np.where(present, row, X.shape[0])]
        obs = obs.reindex(barcodes)
        obs["n_fragment"] = obs["n_fragment"].fillna(0).astype(np.int64)
        obs["in_fragments_file"] = present
    keep = obs["n_fragment"].to_numpy() >= min_num_fragments
    out = ad.AnnData(X=X.astype(np.float32), obs=obs, var=var.copy())
    if keep_fragments and barcodes is None:
        out.obsm["fragment_paired"] = fragments_data.obsm["fragment_paired"]
        out.uns["reference_sequences"] = fragments_data.uns["reference_sequences"]
    out.uns["files"] = {"fragments": str(fragments_path)}
    out.uns["atac_counting"] = info
    if not keep.all():
        out = out[keep].copy()
    return out


def _fragment_qc(data, gene_anno, qc_peaks, exclude_chroms) -> None:
    """TSS enrichment and fraction of insertions in peaks, computed while fragments are in memory."""
    import snapatac2 as snap

    if gene_anno is not None:
        if isinstance(gene_anno, str | os.PathLike) and not Path(gene_anno).is_file():
            raise FileNotFoundError(f"Gene annotation (GTF/GFF) not found: {gene_anno}")
        snap.metrics.tsse(data, gene_anno, exclude_chroms=list(exclude_chroms), inplace=True)
    if qc_peaks is not None:
        snap.metrics.frip(data, {"frip": _read_peaks(qc_peaks)}, normalized=True, count_as_insertion=True, inplace=True)


def count_tiles(
    fragments_path: str | os.PathLike,
    barcodes: list[str] | None,
    chrom_sizes: Mapping[str, int] | str | os.PathLike | None = None,
    bin_size: int = 1000,
    min_num_fragments: int | None = None,
    sorted_by_barcode: bool = False,
    n_jobs: int = 1,
    *,
    exclude_chroms: Sequence[str] = DEFAULT_EXCLUDE_CHROMS,
    min_frag_size: int | None = None,
    max_frag_size: int | None = None,
    unknown_chroms: UnknownChroms = "error",
    require_index: bool = True,
    gene_anno: str | os.PathLike | None = None,
    qc_peaks=None,
    keep_fragments: bool = False,
    tempdir: str | os.PathLike | None = None,
) -> ad.AnnData:
    """Cell x genome-tile insertion counts from a 10x fragments file (SnapATAC2, in memory).

    Parameters
    ----------
    fragments_path
        bgzipped 10x ``atac_fragments.tsv.gz`` (tabix index next to it unless ``require_index=False``).
    barcodes
        Cell barcodes as written in the fragments file (whitelist). Output rows follow this order;
        barcodes without fragments get all-zero rows (``obs['in_fragments_file']`` False). ``None``
        imports every barcode with at least ``min_num_fragments`` fragments.
    chrom_sizes
        Dict, ``chrom<TAB>size`` file, or ``None`` for hg38 (:data:`HG38_CHROM_SIZES`).
    bin_size
        Tile width in bp.
    min_num_fragments
        Cells with fewer fragments (``obs['n_fragment']``) are dropped. Default: 0 with ``barcodes``
        (keep every requested cell), 200 without.
    sorted_by_barcode
        Whether the file is sorted by barcode (10x files are sorted by position: keep False; SnapATAC2
        then sorts through temporary files in ``tempdir``).
    n_jobs
        Passed to SnapATAC2 (parallelism over files only).
    exclude_chroms
        Chromosomes without tiles (default chrM, chrY).
    min_frag_size, max_frag_size
        Inclusive fragment size (``end - start``) bounds; ``None`` = no bound.
    unknown_chroms
        ``"error"`` (default) or ``"drop"`` for fragments on chromosomes not in ``chrom_sizes``.
    require_index
        Require the ``.tbi`` index (fast validation) instead of scanning the file.
    gene_anno
        GTF/GFF path (or ``snapatac2.genome.Genome``) -> ``obs['tsse']`` (TSS enrichment).
    qc_peaks
        Peaks (region strings, BED path, or DataFrame) -> ``obs['frip']``: fraction of insertions in peaks.
    keep_fragments
        Keep ``obsm['fragment_paired']`` (only when ``barcodes`` is None, as rows must match).

    Returns
    -------
    AnnData with ``X`` float32 CSR insertion counts (see module docstring for the convention),
    ``var`` tiles (chrom, start, end) in ``chrom_sizes`` order, ``obs`` n_fragment, frac_dup,
    frac_mito (+ tsse, frip), ``uns['files']['fragments']`` and ``uns['atac_counting']``.
    """
    import snapatac2 as snap

    if bin_size <= 0:
        raise ValueError(f"bin_size must be positive, got {bin_size}.")
    data, sizes, min_num = _import_fragments(
        fragments_path,
        barcodes,
        chrom_sizes,
        min_num_fragments,
        sorted_by_barcode,
        n_jobs,
        unknown_chroms,
        require_index,
        tempdir,
    )
    _fragment_qc(data, gene_anno, qc_peaks, MITO_CHROMS)
    counts = snap.pp.add_tile_matrix(
        data,
        bin_size=bin_size,
        inplace=False,
        exclude_chroms=list(exclude_chroms),
        min_frag_size=min_frag_size,
        max_frag_size=max_frag_size,
        counting_strategy="insertion",
        n_jobs=n_jobs,
    )
    perm, var = _tile_order(
        pd.Index(counts.var_names),
        data.uns["reference_sequences"]["reference_seq_name"].tolist(),
        sizes,
        bin_size,
        exclude_chroms,
    )
    info = {
        "features": "tiles",
        "bin_size": int(bin_size),
        "counting_strategy": "insertion",
        "convention": "2 insertions per fragment line at start and end-1 (0-based); count column ignored",
        "exclude_chroms": list(exclude_chroms),
        "min_frag_size": -1 if min_frag_size is None else int(min_frag_size),
        "max_frag_size": -1 if max_frag_size is None else int(max_frag_size),
        "min_num_fragments": int(min_num),
    }
    return _finish(sp.csr_matrix(counts.X)[:, perm], data, barcodes, min_num, var, fragments_path, info, keep_fragments)


def count_peaks(
    fragments_path: str | os.PathLike,
    peaks,
    barcodes: list[str] | None,
    chrom_sizes: Mapping[str, int] | str | os.PathLike | None = None,
    min_num_fragments: int | None = None,
    sorted_by_barcode: bool = False,
    n_jobs: int = 1,
    *,
    min_frag_size: int | None = None,
    max_frag_size: int | None = None,
    unknown_chroms: UnknownChroms = "error",
    require_index: bool = True,
    gene_anno: str | os.PathLike | None = None,
    tempdir: str | os.PathLike | None = None,
) -> ad.AnnData:
    """Cell x peak insertion counts from a fragments file (``snap.pp.make_peak_matrix``).

    ``peaks`` are region strings (``chr:start-end``, ``chr-start-end``), a BED file, or a DataFrame with
    chrom/start/end columns; 0-based half-open. Output columns keep the given peak order, var names are
    ``chr:start-end``. ``obs['frip']`` is the fraction of the cell's insertions that fall in these
    peaks. Other parameters as :func:`count_tiles`.
    """
    import snapatac2 as snap

    peak_list = _read_peaks(peaks)
    if not peak_list:
        raise ValueError("No peaks given.")
    if len(set(peak_list)) != len(peak_list):
        raise ValueError("Peaks contain duplicates.")
    sizes = load_chrom_sizes(chrom_sizes)
    var = pd.DataFrame([p.replace(":", "-").rsplit("-", 2) for p in peak_list], columns=["chrom", "start", "end"])
    var[["start", "end"]] = var[["start", "end"]].astype(np.int64)
    var.index = pd.Index(peak_list)
    bad = var[~var["chrom"].isin(list(sizes))]
    if len(bad):
        raise ValueError(f"Peak chromosome(s) not in chrom_sizes: {bad['chrom'].unique()[:10].tolist()}.")
    data, sizes, min_num = _import_fragments(
        fragments_path,
        barcodes,
        sizes,
        min_num_fragments,
        sorted_by_barcode,
        n_jobs,
        unknown_chroms,
        require_index,
        tempdir,
    )
    _fragment_qc(data, gene_anno, peak_list, MITO_CHROMS)
    counts = snap.pp.make_peak_matrix(
        data,
        use_rep=peak_list,
        counting_strategy="insertion",
        min_frag_size=min_frag_size,
        max_frag_size=max_frag_size,
    )
    info = {
        "features": "peaks",
        "counting_strategy": "insertion",
        "convention": "2 insertions per fragment line at start and end-1 (0-based); count column ignored",
        "min_frag_size": -1 if min_frag_size is None else int(min_frag_size),
        "max_frag_size": -1 if max_frag_size is None else int(max_frag_size),
        "min_num_fragments": int(min_num),
    }
    col = pd.Index(counts.var_names).get_indexer(var.index)
    if (col < 0).any():
        raise RuntimeError(f"SnapATAC2 output lacks peaks, e.g. {var.index[col < 0][:5].tolist()}.")
    X = sp.csr_matrix(counts.X)[:, col]
    return _finish(X, data, barcodes, min_num, var, fragments_path, info, keep_fragments=False)


# --------------------------------------------------------------------------------------------------
# 10x Peaks matrix
# --------------------------------------------------------------------------------------------------


def _decode(values) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def read_peaks_from_10x_h5(path: str | os.PathLike) -> ad.AnnData:
    """Read the 'Peaks' features of a 10x CellRanger-ARC ``filtered_feature_bc_matrix.h5``.

    The file stores a features x barcodes CSC matrix (``matrix/data, indices, indptr, shape``), which
    is a barcodes x features CSR matrix; only columns with ``feature_type == 'Peaks'`` are kept.
    Returns float32 CSR counts, obs_names = barcodes, var_names = peak ids (``chr:start-end``) with var
    columns ``gene_ids``, ``feature_types``, ``interval``, ``chrom``, ``start``, ``end``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"10x matrix file not found: {path}")
    with h5py.File(path, "r") as f:
        if "matrix" not in f:
            raise ValueError(f"{path} is not a 10x feature-barcode matrix (no 'matrix' group).")
        m = f["matrix"]
        n_features, n_barcodes = (int(x) for x in m["shape"][:])
        feats = m["features"]
        ftype = _decode(feats["feature_type"][:])
        ids = _decode(feats["id"][:])
        names = _decode(feats["name"][:]) if "name" in feats else ids
        interval = _decode(feats["interval"][:]) if "interval" in feats else np.full(n_features, "", dtype=object)
        X = sp.csr_matrix(
            (m["data"][:], m["indices"][:], m["indptr"][:]),
            shape=(n_barcodes, n_features),
        )
        barcodes = _decode(m["barcodes"][:])
    is_peak = ftype == "Peaks"
    if not is_peak.any():
        raise ValueError(f"{path} has no 'Peaks' features (feature types: {sorted(set(ftype))}).")
    X = X[:, np.flatnonzero(is_peak)].astype(np.float32)
    X.sort_indices()
    regions = [normalize_region(i) for i in ids[is_peak]]
    var = pd.DataFrame(
        {"gene_ids": ids[is_peak], "name": names[is_peak], "feature_types": "Peaks", "interval": interval[is_peak]},
        index=pd.Index(regions),
    )
    parts = var.index.str.replace(":", "-").str.rsplit("-", n=2, expand=True)
    var["chrom"] = parts.get_level_values(0)
    var["start"] = parts.get_level_values(1).astype(np.int64)
    var["end"] = parts.get_level_values(2).astype(np.int64)
    out = ad.AnnData(X=X, obs=pd.DataFrame(index=pd.Index(barcodes)), var=var)
    out.uns["files"] = {"matrix_h5": str(path)}
    return out


# --------------------------------------------------------------------------------------------------
# QC and joining with RNA
# --------------------------------------------------------------------------------------------------


def atac_qc(
    adata: ad.AnnData,
    gene_anno: str | os.PathLike | None = None,
    peaks=None,
) -> pd.DataFrame:
    """Per-cell ATAC QC table.

    Columns: ``n_fragment`` (fragment lines on nuclear chromosomes; NaN for a 10x Peaks matrix),
    ``total_counts`` (insertions in the features), ``n_features_accessible`` (features with count > 0),
    and, when available, ``frac_dup``, ``frac_mito``, ``tsse`` (TSS enrichment), ``frip`` (fraction of
    insertions in peaks). ``tsse``/``frip`` are taken from ``obs`` (computed by :func:`count_tiles`
    with ``gene_anno``/``qc_peaks``) or computed here when ``adata`` still holds SnapATAC2 fragments
    (``obsm['fragment_paired']``) and ``gene_anno``/``peaks`` are given.
    """
    X = sp.csr_matrix(adata.X)
    qc = pd.DataFrame(index=adata.obs_names.copy())
    qc["n_fragment"] = adata.obs["n_fragment"].to_numpy() if "n_fragment" in adata.obs else np.nan
    qc["total_counts"] = np.asarray(X.sum(axis=1)).ravel()
    qc["n_features_accessible"] = np.diff(X.indptr)
    if "fragment_paired" in adata.obsm and (gene_anno is not None or peaks is not None):
        tmp = ad.AnnData(obs=pd.DataFrame(index=adata.obs_names.copy()))
        tmp.obsm["fragment_paired"] = adata.obsm["fragment_paired"]
        tmp.uns["reference_sequences"] = adata.uns["reference_sequences"]
        _fragment_qc(tmp, gene_anno, peaks, MITO_CHROMS)
        for col in ("tsse", "frip"):
            if col in tmp.obs:
                qc[col] = tmp.obs[col].to_numpy()
    elif gene_anno is not None or peaks is not None:
        if (gene_anno is not None and "tsse" not in adata.obs) or (peaks is not None and "frip" not in adata.obs):
            raise ValueError(
                "TSS enrichment / FRiP need fragments: pass gene_anno / qc_peaks to count_tiles "
                "(or keep_fragments=True)."
            )
    for col in ("frac_dup", "frac_mito", "tsse", "frip"):
        if col in adata.obs and col not in qc:
            qc[col] = adata.obs[col].to_numpy()
    return qc


def join_rna_atac(
    rna_obs_names: Sequence[str],
    atac: ad.AnnData,
    library: str,
    fragments_path: str | os.PathLike | None = None,
    min_fraction_matched: float = 0.0,
) -> tuple[ad.AnnData, dict]:
    """Align ATAC cells (fragment-file barcodes) to RNA cells named ``{library}-{barcode}``.

    Only RNA cells of this library (names starting with ``{library}-``) are considered. The result holds
    the matched cells in RNA order with obs_names ``{library}-{barcode}`` and ``obs['barcode']``.
    ATAC obs names that already carry the ``{library}-`` prefix are used as they are.

    Returns ``(atac_aligned, report)`` with report keys library, fragments, n_rna_cells,
    n_atac_barcodes, n_matched, n_rna_unmatched, n_atac_unmatched, frac_rna_matched.

    Raises
    ------
    ValueError
        If no ATAC barcode matches an RNA cell (names the fragments file and shows example barcodes on
        both sides), or if the matched fraction of RNA cells is below ``min_fraction_matched``.
    """
    prefix = f"{library}-"
    source = str(
        fragments_path
        or atac.uns.get("files", {}).get("fragments")
        or atac.uns.get("files", {}).get("matrix_h5", "<in-memory ATAC data>")
    )
    rna = pd.Index([str(n) for n in rna_obs_names])
    rna_lib = rna[rna.str.startswith(prefix)]
    atac_names = pd.Index(atac.obs_names.astype(str))
    already = len(atac_names) > 0 and bool(atac_names.str.startswith(prefix).all())
    atac_full = atac_names if already else prefix + atac_names
    if atac_full.has_duplicates:
        raise ValueError(f"Duplicate ATAC barcodes in {source}.")
    pos = atac_full.get_indexer(rna_lib)
    matched = pos >= 0
    n_matched = int(matched.sum())
    report = {
        "library": library,
        "fragments": source,
        "n_rna_cells": int(len(rna_lib)),
        "n_atac_barcodes": int(atac.n_obs),
        "n_matched": n_matched,
        "n_rna_unmatched": int(len(rna_lib) - n_matched),
        "n_atac_unmatched": int(atac.n_obs - n_matched),
        "frac_rna_matched": float(n_matched / len(rna_lib)) if len(rna_lib) else 0.0,
    }
    if n_matched == 0:
        raise ValueError(
            f"No barcode of {source} matches an RNA cell of library {library!r}: "
            f"example ATAC barcodes {atac_names[:5].tolist()} -> {atac_full[:3].tolist()}; "
            f"example RNA cells of this library {rna_lib[:5].tolist()} "
            f"(RNA obs names overall: {rna[:3].tolist()}). Expected RNA obs names '{{library}}-{{barcode}}' with the "
            f"barcode exactly as in the fragments file."
        )
    if report["frac_rna_matched"] < min_fraction_matched:
        raise ValueError(
            f"Only {report['frac_rna_matched']:.1%} of the RNA cells of library {library!r} have ATAC data in "
            f"{source} (min_fraction_matched={min_fraction_matched})."
        )
    aligned = atac[pos[matched]].copy()
    aligned.obs["barcode"] = atac_names[pos[matched]].str.removeprefix(prefix) if already else atac_names[pos[matched]]
    aligned.obs["library"] = library
    aligned.obs_names = rna_lib[matched]
    return aligned, report


# --------------------------------------------------------------------------------------------------
# Independent reference counter (for tests and audits)
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
