"""Atomic output writing: a failed or killed job never leaves a file Snakemake would take as done."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(tmp: Path, is_dir: bool) -> None:
    # mkstemp/mkdtemp create 0600/0700 entries; give the final output the permissions a normal
    # open() would have (shared cluster folders must stay group-readable).
    os.chmod(tmp, (0o777 if is_dir else 0o666) & ~_umask())


def _tmp_sibling(path: Path, is_dir: bool) -> Path:
    # The temporary lives next to the target so the final rename stays on one filesystem (atomic).
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.tmp-"
    if is_dir:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=path.suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path that replaces ``path`` only if the block succeeds.

    The suffix of ``path`` is kept on the temporary, so writers that infer the format from the
    suffix (``.h5ad``, ``.parquet``, ``.png``) behave as with the final name.
    """
    path = Path(path)
    tmp = _tmp_sibling(path, is_dir=False)
    try:
        yield tmp
        _publish_mode(tmp, is_dir=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces directory ``path`` only if the block succeeds."""
    path = Path(path)
    tmp = _tmp_sibling(path, is_dir=True)
    try:
        yield tmp
        _publish_mode(tmp, is_dir=True)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_h5ad(adata, path: str | os.PathLike, compression: str | None = "gzip") -> None:
    """Write an AnnData atomically."""
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp, compression=compression)


def write_csv(df, path: str | os.PathLike, **kwargs) -> None:
    """Write a DataFrame as CSV atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kwargs)


def write_parquet(df, path: str | os.PathLike) -> None:
    """Write a DataFrame as parquet atomically (column names must be strings)."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Save a matplotlib figure atomically (format from the suffix)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
