"""Count-matrix readers (10x HDF5, 10x mtx, h5ad), count validation, the 10x HDF5 writer and
the per-sample loader used by the ``load_rna`` rule."""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp

from rvi.io.atomic import atomic_path

GENE_EXPRESSION = "Gene Expression"
PEAKS = "Peaks"


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------
def validate_counts(X, name: str, chunk_size: int = 5_000_000) -> None:
    """Raise ValueError naming ``name`` unless ``X`` holds finite, non-negative integer counts.

    Works on scipy sparse matrices (checks the stored values in chunks) and dense arrays or h5py
    datasets (row chunks), so a large matrix is never copied whole.
    """

    def check(block: np.ndarray) -> None:
        if block.size == 0:
            return
        if np.issubdtype(block.dtype, np.integer):
            lo = block.min()
            if lo < 0:
                raise ValueError(f"{name}: counts contain negative values (min {lo}); raw counts are required")
            return
        if not np.isfinite(block).all():
            raise ValueError(f"{name}: counts contain NaN or infinite values; raw integer counts are required")
        lo = block.min()
        if lo < 0:
            raise ValueError(f"{name}: counts contain negative values (min {lo:g}); raw counts are required")
        frac = block != np.floor(block)
        if frac.any():
            example = block[frac][0]
            raise ValueError(
                f"{name}: counts contain non-integer values (e.g. {example:g}); raw integer counts are required, "
                "not normalised or log-transformed data"
            )

    if sp.issparse(X):
        data = X.data
        for s in range(0, data.size, chunk_size):
            check(np.asarray(data[s : s + chunk_size]))
        return
    n_rows = X.shape[0]
    step = max(1, chunk_size // max(1, X.shape[1] if len(X.shape) > 1 else 1))
    for s in range(0, n_rows, step):
        block = X[s : s + step]  # backed .h5ad sparse datasets return scipy blocks
        check(np.asarray(block.data if sp.issparse(block) else block))


def check_sparse_structure(indptr, indices, n_major: int, n_minor: int, nnz: int, name: str) -> None:
    """Raise ValueError naming ``name`` unless (indptr, indices) describe a valid compressed sparse matrix.

    ``n_major`` is the number of compressed rows (CSR) or columns (CSC), ``n_minor`` the other dimension and
    ``nnz`` the number of stored values. Checked: indptr has n_major + 1 entries, starts at 0, never
    decreases and ends at nnz; indices has nnz entries, all in [0, n_minor). scipy checks none of the value
    ranges when it wraps such arrays, and a corrupted matrix then crashes (or segfaults) a later step.
    """
    indptr = np.asarray(indptr)
    indices = np.asarray(indices)
    if indptr.ndim != 1 or indptr.size != n_major + 1:
        raise ValueError(f"{name}: corrupt sparse matrix: indptr has {indptr.size} entries, expected {n_major + 1}")
    if indptr.size and (indptr[0] != 0 or indptr[-1] != nnz):
        raise ValueError(
            f"{name}: corrupt sparse matrix: indptr runs from {indptr[0]} to {indptr[-1]}, expected 0 to {nnz} "
            "(stored values)"
        )
    steps = np.diff(indptr)
    if steps.size and steps.min() < 0:
        bad = int(np.flatnonzero(steps < 0)[0])
        raise ValueError(f"{name}: corrupt sparse matrix: indptr decreases at position {bad + 1}")
    if indices.size != nnz:
        raise ValueError(f"{name}: corrupt sparse matrix: {indices.size} indices for {nnz} stored values")
    if indices.size and (indices.min() < 0 or indices.max() >= n_minor):
        raise ValueError(
            f"{name}: corrupt sparse matrix: indices range {indices.min()}..{indices.max()} outside 0..{n_minor - 1}"
        )


def check_sparse_matrix(X, name: str) -> None:
    """:func:`check_sparse_structure` of a scipy CSR / CSC matrix (no-op for dense arrays)."""
    if not sp.issparse(X) or X.format not in ("csr", "csc"):
        return
    n_rows, n_cols = X.shape
    n_major, n_minor = (n_rows, n_cols) if X.format == "csr" else (n_cols, n_rows)
    check_sparse_structure(X.indptr, X.indices, n_major, n_minor, X.data.size, name)


def check_unique_var_names(var_names, name: str, show: int = 10) -> None:
    """Raise ValueError naming ``name`` and listing duplicated feature names (they would be merged or misaligned)."""
    names = pd.Index(var_names)
    if names.is_unique:
        return
    dup = sorted(map(str, names[names.duplicated()].unique()))
    more = f" ... ({len(dup)} in all)" if len(dup) > show else ""
    raise ValueError(
        f"{name}: duplicated feature names {dup[:show]}{more}; make them unique (e.g. adata.var_names_make_unique()) "
        "or index var by unique ids"
    )


# --------------------------------------------------------------------------------------------------
# 10x HDF5
# --------------------------------------------------------------------------------------------------
def _decode(values) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def _features_from_group(path: Path, grp: h5py.Group) -> pd.DataFrame:
    if "features" in grp:  # CellRanger >= 3 / ARC
        f = grp["features"]
        ids = _decode(f["id"][:])
        feats = pd.DataFrame(
            {
                "gene_ids": ids,
                "name": _decode(f["name"][:]) if "name" in f else ids,
                "feature_types": _decode(f["feature_type"][:]),
            }
        )
        for key in ("genome", "interval"):
            if key in f:
                feats[key] = _decode(f[key][:])
        return feats
    if "genes" in grp:  # CellRanger 2 (one group per genome)
        return pd.DataFrame(
            {
                "gene_ids": _decode(grp["genes"][:]),
                "name": _decode(grp["gene_names"][:]),
                "feature_types": GENE_EXPRESSION,
                "genome": grp.name.strip("/"),
            }
        )
    raise ValueError(f"{path}: 10x HDF5 group {grp.name!r} has neither 'features' nor 'genes'")


def _subset_features(path, X, feats: pd.DataFrame, feature_type: str | None):
    if feature_type is None:
        return X, feats
    keep = (feats["feature_types"] == feature_type).to_numpy()
    if not keep.any():
        found = sorted(set(feats["feature_types"]))
        raise ValueError(f"{path}: no features of type {feature_type!r} (found {found})")
    return X[:, np.flatnonzero(keep)], feats.loc[keep].reset_index(drop=True)


def _var_from_features(feats: pd.DataFrame) -> pd.DataFrame:
    var = feats.drop(columns="name").copy()
    var.index = pd.Index(feats["name"].astype(str).to_numpy())
    return var


def read_10x_h5(path: str | os.PathLike, feature_type: str | None = GENE_EXPRESSION) -> ad.AnnData:
    """Read a CellRanger / CellRanger-ARC ``*_feature_bc_matrix.h5`` (v3 layout, or v2 per-genome).

    Keeps features of ``feature_type`` ("Gene Expression", "Peaks", ...; None keeps all). Returns raw
    counts as CSR float32, obs_names = barcodes as in the file, var_names = feature names (made
    unique) with columns gene_ids, feature_types, genome, interval. A missing, corrupt or truncated
    file raises an error naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: 10x HDF5 file does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: cannot open as HDF5 (corrupt or truncated file?): {e}") from e
    try:
        with f:
            if "matrix" in f:
                grp = f["matrix"]
            else:
                groups = [k for k in f.keys() if isinstance(f[k], h5py.Group)]
                if len(groups) != 1:
                    raise ValueError(f"{path}: not a 10x HDF5 matrix (no 'matrix' group; groups {groups})")
                grp = f[groups[0]]
            missing = [k for k in ("barcodes", "data", "indices", "indptr", "shape") if k not in grp]
            if missing:
                raise ValueError(f"{path}: 10x HDF5 matrix lacks {missing}")
            n_feat, n_bc = (int(v) for v in grp["shape"][:])
            data = grp["data"][:]
            indices = grp["indices"][:]
            indptr = grp["indptr"][:]
            barcodes = _decode(grp["barcodes"][:])
            feats = _features_from_group(path, grp)
    except (OSError, KeyError, RuntimeError, UnicodeDecodeError) as e:
        # Flipped bytes in the barcode / feature strings surface as UnicodeDecodeError.
        raise ValueError(f"{path}: cannot read 10x HDF5 content (corrupt or truncated file?): {e}") from e
    if indptr.size != n_bc + 1 or barcodes.size != n_bc or len(feats) != n_feat or indptr[-1] != data.size:
        raise ValueError(
            f"{path}: inconsistent 10x matrix (shape {n_feat}x{n_bc}, {barcodes.size} barcodes, "
            f"{len(feats)} features, indptr {indptr.size}, data {data.size})"
        )
    check_sparse_structure(indptr, indices, n_bc, n_feat, data.size, f"{path} (10x HDF5)")
    validate_counts(data, str(path))
    # Stored as CSC features x barcodes, i.e. CSR barcodes x features.
    X = sp.csr_matrix((data.astype(np.float32), indices, indptr), shape=(n_bc, n_feat))
    X, feats = _subset_features(path, X, feats, feature_type)
    adata = ad.AnnData(X=sp.csr_matrix(X), obs=pd.DataFrame(index=pd.Index(barcodes)), var=_var_from_features(feats))
    adata.var_names_make_unique()
    return adata


def write_10x_h5(
    path: str | os.PathLike,
    X,
    barcodes: Sequence[str],
    features: pd.DataFrame,
    library_id: str = "",
    chemistry: str = "Single Cell Multiome ATAC + Gene Expression v1",
) -> None:
    """Write cells x features counts in the CellRanger-ARC ``filtered_feature_bc_matrix.h5`` layout.

    ``features`` needs columns id, name, feature_type, genome, interval (one row per column of X).
    Written atomically.
    """
    need = ["id", "name", "feature_type", "genome", "interval"]
    missing = [c for c in need if c not in features.columns]
    if missing:
        raise ValueError(f"{path}: features table lacks columns {missing}")
    X = sp.csr_matrix(X)
    if X.shape != (len(barcodes), len(features)):
        raise ValueError(f"{path}: matrix shape {X.shape} does not match {len(barcodes)} barcodes x {len(features)}")
    validate_counts(X, str(path))
    X.sort_indices()

    def s(values) -> np.ndarray:
        return np.array([str(v).encode() for v in values], dtype="S")

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["filetype"] = "matrix"
            f.attrs["version"] = 2
            f.attrs["library_ids"] = s([library_id])
            f.attrs["original_gem_groups"] = np.array([1], dtype=np.int64)
            f.attrs["chemistry_description"] = chemistry
            g = f.create_group("matrix")
            g.create_dataset("barcodes", data=s(barcodes))
            g.create_dataset("data", data=X.data.astype(np.int32), compression="gzip")
            g.create_dataset("indices", data=X.indices.astype(np.int64), compression="gzip")
            g.create_dataset("indptr", data=X.indptr.astype(np.int64))
            g.create_dataset("shape", data=np.array([X.shape[1], X.shape[0]], dtype=np.int32))
            fg = g.create_group("features")
            fg.create_dataset("_all_tag_keys", data=s(["genome", "interval"]))
            for col in need:
                fg.create_dataset(col, data=s(features[col]))


# --------------------------------------------------------------------------------------------------
# 10x mtx and h5ad
# --------------------------------------------------------------------------------------------------
def _first_existing(folder: Path, names: Sequence[str]) -> Path | None:
    for n in names:
        for cand in (folder / n, folder / f"{n}.gz"):
            if cand.is_file():
                return cand
    return None


def _open_text(p: Path):
    return gzip.open(p, "rt") if p.suffix == ".gz" else open(p)


def read_10x_mtx(path: str | os.PathLike, feature_type: str | None = GENE_EXPRESSION) -> ad.AnnData:
    """Read a 10x ``filtered_feature_bc_matrix/`` folder (matrix.mtx, features.tsv or genes.tsv, barcodes.tsv;
    each optionally gzipped). Same output conventions as :func:`read_10x_h5`."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: 10x mtx folder does not exist")
    mtx = _first_existing(folder, ["matrix.mtx"])
    feat_file = _first_existing(folder, ["features.tsv", "genes.tsv"])
    bc_file = _first_existing(folder, ["barcodes.tsv"])
    if mtx is None or feat_file is None or bc_file is None:
        raise ValueError(f"{folder}: needs matrix.mtx, features.tsv (or genes.tsv) and barcodes.tsv")
    try:
        with _open_text(mtx) as fh:
            M = scipy.io.mmread(fh)
        feats = pd.read_csv(feat_file, sep="\t", header=None, dtype=str)
        barcodes = pd.read_csv(bc_file, sep="\t", header=None, dtype=str)[0].to_numpy(dtype=object)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"{folder}: cannot parse 10x mtx files (corrupt or truncated?): {e}") from e
    M = sp.csr_matrix(M.T)  # mtx is features x barcodes
    if M.shape != (barcodes.size, len(feats)):
        raise ValueError(f"{folder}: matrix {M.shape[::-1]} does not match {len(feats)} features x {barcodes.size}")
    validate_counts(M, str(mtx))
    table = pd.DataFrame(
        {
            "gene_ids": feats[0].to_numpy(dtype=object),
            "name": (feats[1] if feats.shape[1] > 1 else feats[0]).to_numpy(dtype=object),
            "feature_types": (feats[2] if feats.shape[1] > 2 else GENE_EXPRESSION),
        }
    )
    M, table = _subset_features(folder, M.astype(np.float32), table, feature_type)
    adata = ad.AnnData(X=sp.csr_matrix(M), obs=pd.DataFrame(index=pd.Index(barcodes)), var=_var_from_features(table))
    adata.var_names_make_unique()
    return adata


def read_h5ad_counts(path: str | os.PathLike, layer: str | None = None) -> ad.AnnData:
    """Read an .h5ad and return raw counts in X (CSR float32): ``layer`` if given, else
    ``layers['counts']`` when present, else X. Other layers are dropped; obs/var are kept."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: h5ad file does not exist")
    try:
        adata = ad.read_h5ad(path)
    except Exception as e:  # anndata raises many types on damaged files; all mean the same here
        raise ValueError(f"{path}: cannot read h5ad (corrupt or truncated file?): {e}") from e
    if layer is not None and layer not in adata.layers:
        raise ValueError(f"{path}: layer {layer!r} not found (layers: {list(adata.layers)})")
    key = layer if layer is not None else ("counts" if "counts" in adata.layers else None)
    X = adata.layers[key] if key is not None else adata.X
    where = f"{path} ({'layer ' + key if key else 'X'})"
    if X is None:
        raise ValueError(f"{where}: no count matrix")
    if X.shape != (adata.n_obs, adata.n_vars):
        raise ValueError(
            f"{where}: matrix shape {X.shape} does not match {adata.n_obs} cells x {adata.n_vars} features"
        )
    check_sparse_matrix(X, where)
    check_unique_var_names(adata.var_names, str(path))
    validate_counts(X, where)
    out = ad.AnnData(
        X=sp.csr_matrix(X, dtype=np.float32), obs=adata.obs.copy(), var=adata.var.copy(), uns=dict(adata.uns)
    )
    out.obs_names = out.obs_names.astype(str)
    return out


# --------------------------------------------------------------------------------------------------
# Per-sample loader
# --------------------------------------------------------------------------------------------------
def _read_any(path: Path, feature_type: str | None, layer: str | None) -> ad.AnnData:
    if path.is_dir():
        return read_10x_mtx(path, feature_type=feature_type)
    suffix = path.suffix.lower()
    if suffix == ".h5":
        return read_10x_h5(path, feature_type=feature_type)
    if suffix == ".h5ad":
        return read_h5ad_counts(path, layer=layer)
    if not path.exists():
        raise FileNotFoundError(f"{path}: input does not exist")
    raise ValueError(f"{path}: unsupported input (expected a 10x .h5, a 10x mtx folder or an .h5ad)")


def label_table_problems(columns: Sequence[str], label_columns: Sequence[str]) -> list[str]:
    """Header problems of a label table: no ``barcode`` column, configured levels it lacks (with close matches)."""
    import difflib

    columns = [str(c) for c in columns]
    problems = []
    if "barcode" not in columns:
        problems.append(f"needs a 'barcode' column (has {columns})")
    missing = [c for c in label_columns if c not in columns]
    if missing:
        others = [c for c in columns if c != "barcode" and c not in label_columns]
        hints = {m: difflib.get_close_matches(m, others, n=1) for m in missing}
        did = "; ".join(f"{m!r}: did you mean {h[0]!r}?" for m, h in hints.items() if h)
        problems.append(
            f"lacks the label level column(s) {missing} of labels.levels {list(label_columns)} "
            f"(has {columns}){'; ' + did if did else ''}"
        )
    return problems


def read_label_table(path: str | os.PathLike, label_columns: Sequence[str], barcodes: Sequence[str]) -> pd.DataFrame:
    """A sample's label CSV (``barcode`` + one column per level) reindexed to ``barcodes``.

    Errors naming the file: no ``barcode`` column, a configured level column missing, duplicate barcodes,
    no barcode of the sample in the table. Partial labels are legitimate: cells absent from the table stay
    unlabelled, and the counts are printed (the job's log).
    """
    table = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    problems = label_table_problems(table.columns, label_columns)
    if problems:
        raise ValueError(f"{path}: label table " + "; ".join(problems))
    dup = table["barcode"][table["barcode"].duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"{path}: duplicate barcodes in label table, e.g. {dup[:5]}")
    found = pd.Index(barcodes).isin(table["barcode"])
    if len(table) and not found.any():
        raise ValueError(
            f"{path}: none of the {len(table)} barcodes of the label table is a cell of this sample "
            f"(label table: {table['barcode'].head(3).tolist()}, sample: {list(barcodes[:3])}); wrong file, or "
            "barcodes written differently (suffix such as '-1', library prefix)?"
        )
    unused = len(table) - int(found.sum())
    print(
        f"labels {path}: {int(found.sum())} of {len(barcodes)} cells labelled"
        + (f"; warning: {unused} barcodes of the label table are not cells of this sample" if unused else "")
    )
    return table.set_index("barcode").reindex(barcodes)


def load_sample(
    path: str | os.PathLike,
    library: str,
    metadata: Mapping[str, object] | None = None,
    feature_type: str | None = GENE_EXPRESSION,
    labels_path: str | os.PathLike | None = None,
    label_columns: Sequence[str] = (),
    fragments_path: str | os.PathLike | None = None,
    layer: str | None = None,
    library_key: str = "library",
) -> ad.AnnData:
    """Load one sample's raw counts with the standard obs columns.

    ``path`` is a 10x .h5, a 10x mtx folder or an .h5ad. obs_names become ``{library}-{barcode}``
    (barcode as in the file, i.e. as in the fragments file) and obs gets: ``barcode``, ``library_key``,
    one constant column per ``metadata`` item (dataset, donor, tissue, condition, technical
    covariates ...), ``fragments_path`` (absolute, "" when absent), and the ``label_columns`` taken
    from ``labels_path`` (a CSV with a ``barcode`` column; cells absent from it, and every cell when
    there is no file, get NaN). String columns are categorical.
    """
    path = Path(path)
    adata = _read_any(path, feature_type, layer)
    barcodes = adata.obs_names.to_numpy(dtype=object)
    adata.obs["barcode"] = barcodes
    adata.obs_names = pd.Index([f"{library}-{bc}" for bc in barcodes])
    if not adata.obs_names.is_unique:
        raise ValueError(f"{path}: duplicate barcodes")
    adata.obs[library_key] = str(library)
    for key, value in (metadata or {}).items():
        if key in ("barcode", library_key):
            continue
        adata.obs[key] = "" if value is None or (isinstance(value, float) and np.isnan(value)) else value
    adata.obs["fragments_path"] = str(Path(fragments_path).resolve()) if fragments_path else ""

    labels = pd.DataFrame(index=pd.Index(barcodes))
    if labels_path:
        labels = read_label_table(labels_path, label_columns, barcodes)
    for col in label_columns:
        values = labels[col] if col in labels.columns else pd.Series(np.nan, index=labels.index, dtype=object)
        adata.obs[col] = pd.Categorical(values.to_numpy())
    for col in adata.obs.columns:
        if adata.obs[col].dtype == object and col != "barcode":
            adata.obs[col] = pd.Categorical(adata.obs[col].astype(str))
    return adata
