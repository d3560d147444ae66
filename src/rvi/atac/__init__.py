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

from rvi.atac.counting import count_peaks, count_tiles
from rvi.atac.matrix import atac_qc, join_rna_atac, read_peaks_from_10x_h5
from rvi.atac.reference import independent_insertion_counts
from rvi.atac.regions import DEFAULT_EXCLUDE_CHROMS, HG38_CHROM_SIZES, load_chrom_sizes, normalize_region, tile_names
from rvi.atac.validation import validate_fragments

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
