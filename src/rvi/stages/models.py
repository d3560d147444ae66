"""Model stages: train_rna (AmbientRegularizedSCVI) and train_multimodal (RegularizedMultimodalVI).

Both read the QC-passed cells from ``cell_qc.csv`` (the cell_qc stage); the helpers they share are in
:mod:`~rvi.stages.training` (split, gene filter, training), :mod:`~rvi.stages.embedding` (kNN, UMAP,
Leiden) and :mod:`~rvi.stages.integration` (metrics).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from rvi.distributed import world_size
from rvi.io.atomic import save_figure, write_csv, write_parquet
from rvi.stages._util import pyplot
from rvi.stages.cell_qc import read_cell_qc
from rvi.stages.checkpoint import checkpoint_dir
from rvi.stages.checkpoint import drop as drop_checkpoint
from rvi.stages.embedding import write_embedding_outputs
from rvi.stages.integration import integration_metrics
from rvi.stages.training import (
    _build_and_train,
    _save_model,
    _set_torch,
    _setup_kwargs,
    finest_label,
    plot_training_curves,
    select_genes,
    validation_split,
)

# --------------------------------------------------------------------------------------------------
# train_rna
# --------------------------------------------------------------------------------------------------


def train_rna(
    rna: str,
    cell_qc: str,
    model: str,
    latent: str,
    umap: str,
    leiden: str,
    knn: str,
    metrics: str,
    cells: str,
    genes: str,
    history: str,
    curves_png: str,
    umap_png: str,
    cfg: Mapping,
    threads: int = 1,
) -> None:
    """QC-passed cells, gene filter, stratified split, AmbientRegularizedSCVI, latent/kNN/UMAP/Leiden, metrics."""
    import anndata as ad

    from rvi import AmbientRegularizedSCVI

    spec, cov, levels = _stage_config(cfg, "train_rna", threads)
    adata = ad.read_h5ad(rna)
    qc_table = read_cell_qc(cell_qc, cov).reindex(adata.obs_names)
    if qc_table["pass_qc"].isna().any():
        raise ValueError(f"{cell_qc} lacks cells of {rna}: rerun the cell_qc stage")
    adata = adata[qc_table["pass_qc"].astype(bool).to_numpy()].copy()
    print(f"cell QC ({cell_qc}): {adata.n_obs} of {len(qc_table)} cells pass")
    adata = select_genes(adata, spec["features"], threads)

    label = finest_label(adata.obs, levels)
    train_idx, val_idx = validation_split(adata.obs, label, cov["library_key"], spec["training"])
    split = pd.Series("train", index=adata.obs_names)
    split.iloc[val_idx] = "validation"
    qc_table["split"] = split.reindex(qc_table.index).fillna("excluded")

    AmbientRegularizedSCVI.setup_anndata(adata, **_setup_kwargs(cov))
    vae, hist, resume = _fit(AmbientRegularizedSCVI, adata, spec, train_idx, val_idx, model)
    z = vae.get_latent_representation()
    color_keys = [cov["library_key"], cov["dataset_key"], *levels[-1:]]
    write_embedding_outputs(z, adata, spec["embedding"], latent, umap, leiden, knn, umap_png, color_keys, threads)
    write_csv(integration_metrics(adata, z, spec["metrics"], cov, levels, threads), metrics)
    write_csv(pd.DataFrame({"gene": adata.var_names}), genes, index=False)
    qc_table.index.name = "obs_name"
    write_csv(qc_table, cells)
    _finish(vae, hist, history, curves_png, model, resume)


# --------------------------------------------------------------------------------------------------
# train_multimodal
# --------------------------------------------------------------------------------------------------


def build_multiome(
    rna: str, atac: str, cres: str, cell_qc: str, genes: str, covariates: Mapping, covariate_columns: Sequence[str]
):
    """MuData of QC-passed cells (``cell_qc.csv``): RNA on the RNA model's genes, ATAC on the selected CREs."""
    import anndata as ad
    import mudata as md

    from rvi.models import align_modalities

    qc_table = read_cell_qc(cell_qc, covariates)
    keep = qc_table.index[qc_table["pass_qc"]]
    gene_list = pd.read_csv(genes)["gene"].astype(str)
    rna_ad = ad.read_h5ad(rna)
    rna_ad = rna_ad[rna_ad.obs_names.isin(keep), rna_ad.var_names.isin(gene_list)].copy()
    regions = pd.read_csv(cres)["region"].astype(str).unique()
    atac_ad = ad.read_h5ad(atac)
    atac_ad = atac_ad[atac_ad.obs_names.isin(rna_ad.obs_names), atac_ad.var_names.isin(regions)].copy()
    obs = rna_ad.obs.copy()
    rna_ad.obs = pd.DataFrame(index=rna_ad.obs_names)
    atac_ad.obs = pd.DataFrame(index=atac_ad.obs_names)
    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"rna": rna_ad, "atac": atac_ad})
        mdata.obs = obs.reindex(mdata.obs_names)
        # Cells without ATAC become all-zero ATAC rows, which the model masks out of the ATAC terms.
        mdata = align_modalities(mdata, ["rna", "atac"])
    missing = [c for c in covariate_columns if c not in mdata.obs]
    if missing:
        raise KeyError(f"covariate column(s) {missing} not in the RNA obs")
    return mdata


def train_multimodal(
    rna: str,
    atac: str,
    cres: str,
    cell_qc: str,
    genes: str,
    annotation: str,
    model: str,
    latent: str,
    modality_latents: str,
    umap: str,
    leiden: str,
    knn: str,
    metrics: str,
    attribution: str,
    history: str,
    curves_png: str,
    umap_png: str,
    attribution_png: str,
    cfg: Mapping,
    threads: int = 1,
) -> None:
    """RegularizedMultimodalVI on RNA + selected CREs: joint/per-modality latents, UMAP, attribution."""
    import anndata as ad

    from rvi import RegularizedMultimodalVI

    spec, cov, levels = _stage_config(cfg, "train_multimodal", threads)
    setup = _setup_kwargs(cov)
    mdata = build_multiome(rna, atac, cres, cell_qc, genes, cov, _covariate_columns(setup))
    print(f"multiome: {mdata.n_obs} cells; rna {mdata['rna'].n_vars} genes, atac {mdata['atac'].n_vars} CREs")
    labels = pd.read_csv(annotation, index_col=0).reindex(mdata.obs_names)
    strat = finest_label(labels, levels) if levels else labels["cluster"].astype(str)
    train_idx, val_idx = validation_split(mdata.obs, strat, cov["library_key"], spec["training"])

    RegularizedMultimodalVI.setup_mudata(mdata, modalities={"rna": "rna", "atac": "atac"}, **setup)
    vae, hist, resume = _fit(RegularizedMultimodalVI, mdata, spec, train_idx, val_idx, model)
    z = vae.get_latent_representation()
    view = ad.AnnData(obs=mdata.obs.copy())
    view.obs[[f"annotation_{lv}" for lv in levels]] = labels[levels].to_numpy() if levels else None
    color_keys = [cov["library_key"], cov["dataset_key"], *(f"annotation_{lv}" for lv in levels[-1:])]
    write_embedding_outputs(z, view, spec["embedding"], latent, umap, leiden, knn, umap_png, color_keys, threads)
    parts = vae.get_modality_latents()
    frame = pd.concat(
        [
            pd.DataFrame(v, index=mdata.obs_names, columns=[f"{k}_z{i}" for i in range(v.shape[1])])
            for k, v in sorted(parts.items())
        ],
        axis=1,
    )
    write_parquet(frame, modality_latents)
    # Metrics on the partial labels (ground truth of the labelled libraries), like train_rna.
    rna_view = ad.AnnData(X=mdata["rna"].X, obs=mdata.obs.copy())
    write_csv(integration_metrics(rna_view, z, spec["metrics"], cov, levels, threads), metrics)
    attr = vae.get_modality_attribution(batch_size=spec["attribution_batch_size"])
    attr.index = attr.index.astype(str)
    attr.columns = attr.columns.astype(str)
    write_parquet(attr, attribution)
    coords = pd.read_parquet(umap)
    view.obsm["X_umap"] = coords.reindex(view.obs_names).to_numpy()
    plt = pyplot()
    fig = vae.plot_attribution_scatter(view, basis="X_umap", attribution=attr)
    save_figure(fig, attribution_png)
    plt.close(fig)
    _finish(vae, hist, history, curves_png, model, resume)


def _stage_config(cfg: Mapping, stage: str, threads: int) -> tuple[Mapping, Mapping, list[str]]:
    """(the stage's section, covariates, label levels) of a training stage, with torch set up for it."""
    spec = cfg[stage]
    _set_torch(threads, spec["training"]["seed"])
    return spec, cfg["covariates"], list(cfg["labels"]["levels"])


def _fit(model_cls, data, spec: Mapping, train_idx, val_idx, model: str):
    """Build and train the stage's model, resuming from the checkpoint next to ``model`` when there is one."""
    training = spec["training"]
    resume = checkpoint_dir(model, training, world_size(training))
    vae, hist = _build_and_train(model_cls, data, spec["model"], training, train_idx, val_idx, resume)
    return vae, hist, resume


def _finish(vae, hist: pd.DataFrame, history: str, curves_png: str, model: str, resume) -> None:
    """The training history and its curves, the saved model; the resume checkpoint is no longer needed."""
    write_csv(hist, history)
    plot_training_curves(hist, curves_png, type(vae).__name__)
    _save_model(vae, model)
    drop_checkpoint(resume)


def _covariate_columns(setup: Mapping) -> list[str]:
    cols = []
    for key, value in setup.items():
        if key == "encoder_covariate_keys" and value is False:
            continue
        cols += [value] if isinstance(value, str) else list(value)
    return list(dict.fromkeys(cols))
