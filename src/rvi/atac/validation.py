"""Checks of a fragments file before counting: sort order, chromosome names and ends, barcodes."""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping
from pathlib import Path

from rvi.atac.regions import UnknownChroms

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
