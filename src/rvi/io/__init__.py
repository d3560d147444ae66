"""Readers for 10x / AnnData inputs, sample sheets, and atomic writers."""

from importlib import import_module

from rvi.io.atomic import atomic_dir, atomic_path, save_figure, write_csv, write_h5ad, write_parquet

#: Sample-sheet columns holding input files (relative paths are resolved against the sheet's folder). Defined
#: here rather than in rvi.io.samples (which imports anndata) so that parsing the Snakefile stays light.
PATH_COLUMNS = ("rna_path", "fragments_path", "labels_path")

# Readers pull in anndata/h5py/pysam; load them on first use so `from rvi.io import write_csv` stays light.
_LAZY = {
    "validate_counts": "rvi.io.tenx",
    "read_10x_h5": "rvi.io.tenx",
    "read_10x_mtx": "rvi.io.tenx",
    "read_h5ad_counts": "rvi.io.tenx",
    "write_10x_h5": "rvi.io.tenx",
    "load_sample": "rvi.io.tenx",
    "read_sample_sheet": "rvi.io.samples",
    "load_sheet_sample": "rvi.io.samples",
    "write_fragments": "rvi.io.fragments",
    "read_fragments": "rvi.io.fragments",
    "read_obs": "rvi.io.h5ad",
}

__all__ = [
    "PATH_COLUMNS",
    "atomic_dir",
    "atomic_path",
    "save_figure",
    "write_csv",
    "write_h5ad",
    "write_parquet",
    *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rvi.io' has no attribute {name!r}")
