"""Fragments -> cell x tile / peak insertion counts with SnapATAC2 (the convention: :mod:`rvi.atac`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from rvi.atac.regions import DEFAULT_EXCLUDE_CHROMS, MITO_CHROMS, UnknownChroms, _read_peaks, load_chrom_sizes
from rvi.atac.validation import _example_file_barcodes, validate_fragments

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
