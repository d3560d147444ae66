"""The integrated study file: one ``.h5ad`` (and ``.h5mu`` with ATAC) with counts, latents, UMAP,
clusters, labels and QC, ready for scanpy, muon or cellxgene."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from rvi.io.atomic import atomic_path


def _read_table(path: str, what: str) -> pd.DataFrame:
    table = pd.read_parquet(path) if str(path).endswith(".parquet") else pd.read_csv(path, index_col=0)
    table.index = table.index.astype(str)
    if table.index.has_duplicates:
        dup = table.index[table.index.duplicated()][:3].tolist()
        raise ValueError(f"{what} table {path!r} has duplicated cell names, e.g. {dup}.")
    return table


def h5ad_safe_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns as .h5ad can store them: True/False with gaps -> nullable boolean, other text with gaps
    -> str with "" for missing (h5py cannot write NaN inside a string column; e.g. cell_qc's fail_reasons,
    empty for every passing cell)."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype != object:
            continue
        present = out[col].dropna()
        if len(present) and present.map(lambda v: isinstance(v, bool | np.bool_)).all():
            out[col] = out[col].astype("boolean")
        else:
            out[col] = out[col].where(out[col].notna(), "").astype(str)
    return out


def _aligned(table: pd.DataFrame, names: pd.Index, path: str, what: str) -> pd.DataFrame:
    """``table`` in the order of ``names``; every cell must be there (the tables come from one run)."""
    missing = names.difference(table.index)
    if len(missing):
        raise ValueError(
            f"{what} table {path!r} lacks {len(missing)} of the {len(names)} integrated cells "
            f"(e.g. {missing[:3].tolist()}): it is from another run; rerun the stage that writes it."
        )
    return table.loc[names]


def _embedding_obs(adata, tables: Mapping[str, tuple[str, str]]) -> None:
    """Add latent / UMAP matrices to ``adata.obsm`` from parquet tables (key -> (path, what))."""
    for key, (path, what) in tables.items():
        adata.obsm[key] = _aligned(_read_table(path, what), adata.obs_names, path, what).to_numpy(dtype=np.float32)


def integrated_rna(rna: str, cells: str, genes: str, latent: str, umap: str, leiden: str, annotation: str, study: str):
    """QC-passed cells of the RNA model with raw counts, log-normalised X and every per-cell result."""
    import anndata as ad
    import scanpy as sc

    qc = _read_table(cells, "cell QC")
    kept = qc.index[qc["pass_qc"].astype(bool).to_numpy()]
    adata = ad.read_h5ad(rna)
    adata.obs_names = adata.obs_names.astype(str)
    missing = kept.difference(adata.obs_names)
    if len(missing):
        raise ValueError(
            f"{len(missing)} QC-passed cells of {cells!r} are not in {rna!r} (e.g. {missing[:3].tolist()})."
        )
    adata = adata[kept].copy()
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    qc_cols = [c for c in qc.columns if c not in adata.obs.columns]
    adata.obs = adata.obs.join(h5ad_safe_columns(qc.loc[kept, qc_cols]))
    clusters = _aligned(_read_table(leiden, "Leiden"), adata.obs_names, leiden, "Leiden")
    adata.obs["leiden"] = pd.Categorical(clusters["leiden"].astype(str))
    labels = _aligned(_read_table(annotation, "annotation"), adata.obs_names, annotation, "annotation")
    for col in labels.columns:
        values = labels[col].astype("string").fillna("unassigned").astype(str)
        if col in adata.obs.columns and (adata.obs[col].astype(str).to_numpy() == values.to_numpy()).all():
            continue  # a covariate the annotation table repeats (library, dataset)
        adata.obs[f"rvi_{col}"] = pd.Categorical(values)  # rvi_ + level: transferred labels for every cell
    _embedding_obs(adata, {"X_rvi": (latent, "RNA latent"), "X_umap": (umap, "RNA UMAP")})
    model_genes = set(pd.read_csv(genes)["gene"].astype(str))
    adata.var["rvi_model_gene"] = adata.var_names.astype(str).isin(model_genes)
    adata.uns["rvi"] = {"study": study, "X": "log1p(counts per 10,000)", "counts_layer": "counts"}
    return adata


def integrated_output(
    rna: str,
    cells: str,
    genes: str,
    latent: str,
    umap: str,
    leiden: str,
    annotation: str,
    h5ad: str,
    study: str,
    atac: str | None = None,
    mm_latent: str | None = None,
    mm_modality_latents: str | None = None,
    mm_umap: str | None = None,
    mm_leiden: str | None = None,
    h5mu: str | None = None,
    threads: int = 1,
) -> None:
    """Write ``integrated.h5ad`` (and ``integrated.h5mu`` when the study has ATAC), atomically."""
    rna_adata = integrated_rna(rna, cells, genes, latent, umap, leiden, annotation, study)
    with atomic_path(h5ad) as tmp:
        rna_adata.write_h5ad(tmp, compression="gzip")
    print(f"integrated: {rna_adata.n_obs} cells x {rna_adata.n_vars} genes -> {h5ad}")
    if h5mu is None:
        return
    import anndata as ad
    import mudata as md

    atac_adata = ad.read_h5ad(atac)
    atac_adata.obs_names = atac_adata.obs_names.astype(str)
    mm_names = _read_table(mm_latent, "multimodal latent").index
    names = rna_adata.obs_names.intersection(mm_names, sort=False)
    missing = names.difference(atac_adata.obs_names)
    if len(missing):
        raise ValueError(
            f"{len(missing)} cells of the multimodal model are not in {atac!r} (e.g. {missing[:3].tolist()})."
        )
    atac_adata = atac_adata[names].copy()
    md.set_options(pull_on_update=False)  # the joint obs is set explicitly below
    mdata = md.MuData({"rna": rna_adata[names].copy(), "atac": atac_adata})
    mdata.obs = rna_adata.obs.loc[names].copy()
    clusters = _aligned(_read_table(mm_leiden, "multimodal Leiden"), names, mm_leiden, "multimodal Leiden")
    mdata.obs["leiden_multimodal"] = pd.Categorical(clusters["leiden"].astype(str))
    for key in ("X_rvi", "X_umap"):
        mdata.obsm[f"{key}_rna"] = rna_adata[names].obsm[key]
    _embedding_obs(
        mdata,
        {"X_rvi": (mm_latent, "multimodal latent"), "X_umap": (mm_umap, "multimodal UMAP")},
    )
    slices = _aligned(_read_table(mm_modality_latents, "modality latents"), names, mm_modality_latents, "slices")
    for modality in ("atac", "rna"):
        cols = [c for c in slices.columns if str(c).startswith(f"{modality}_")]
        if cols:
            mdata.obsm[f"X_rvi_{modality}_slice"] = slices[cols].to_numpy(dtype=np.float32)
    mdata.uns["rvi"] = {"study": study, "X_rvi": "joint latent of the multimodal model"}
    with atomic_path(h5mu) as tmp:
        mdata.write_h5mu(tmp, compression="gzip")
    print(f"integrated: {mdata.n_obs} cells, RNA + ATAC -> {h5mu}")
