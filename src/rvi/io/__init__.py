"""Readers for 10x / AnnData inputs, sample sheets, and atomic writers."""

from rvi.io.atomic import atomic_dir, atomic_path, save_figure, write_csv, write_h5ad, write_parquet

__all__ = ["atomic_dir", "atomic_path", "save_figure", "write_csv", "write_h5ad", "write_parquet"]
