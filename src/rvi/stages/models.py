"""Model stages (train_rna, train_multimodal) and the helpers they share: cell QC, gene filter,
stratified validation split, training arguments, kNN / UMAP / Leiden, metrics and plots."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from rvi.io.atomic import atomic_dir, atomic_path, save_figure, write_csv, write_parquet
from rvi.stages._util import pyplot
from rvi.stages.checkpoint import checkpoint_dir
from rvi.stages.checkpoint import drop as drop_checkpoint
from rvi.stages.distributed import DistributedWorkerDone, is_worker, mark_training_done, world_size


def cell_qc_table(
    obs: pd.DataFrame,
    cell_qc: Mapping,
    dataset_key: str | None,
    scrublet_table: pd.DataFrame | None = None,
    atac_table: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per-cell QC metrics and decision with per-dataset thresholds (``pass_qc``, ``fail_reasons``)."""
    from rvi import qc

    table = obs[["total_counts", "n_genes", "mt_frac"]].copy()
    if dataset_key:
        table[dataset_key] = obs[dataset_key].astype(str)
    table["doublet_score"] = np.nan
    table["predicted_doublet"] = False
    if scrublet_table is not None:
        table["doublet_score"] = scrublet_table["doublet_score"].reindex(obs.index).to_numpy(dtype=float)
        pred = scrublet_table["predicted_doublet"].reindex(obs.index)
        table["predicted_doublet"] = pred.astype("boolean").fillna(False).to_numpy(dtype=bool)
    table["atac_fragments"] = np.nan
    if atac_table is not None:
        table["atac_fragments"] = atac_table["n_fragment"].reindex(obs.index).to_numpy(dtype=float)
    rules = {"default": dict(cell_qc["default"]), **{k: dict(v) for k, v in cell_qc["per_dataset"].items()}}
    drop_predicted = {k: bool(v.pop("remove_predicted_doublets", False)) for k, v in rules.items()}
    checks = qc.cell_qc_table(table, rules, dataset_key=dataset_key or "")
    fails = checks.drop(columns="keep")
    datasets = table[dataset_key] if dataset_key else pd.Series("", index=table.index)
    remove = datasets.map(lambda d: drop_predicted.get(d, drop_predicted["default"])).astype(bool)
    fails["fail_predicted_doublet"] = remove.to_numpy() & table["predicted_doublet"].to_numpy()
    table["pass_qc"] = ~fails.any(axis=1).to_numpy()
    names = [c.removeprefix("fail_") for c in fails.columns]
    flags = fails.to_numpy()
    table["fail_reasons"] = [",".join(n for n, f in zip(names, row) if f) for row in flags]
    return table


def finest_label(obs: pd.DataFrame, levels: Sequence[str]) -> pd.Series:
    """Finest non-missing label per cell (NaN when unlabelled)."""
    out = pd.Series(np.nan, index=obs.index, dtype=object)
    for level in levels:
        if level in obs:
            values = obs[level].astype(object)
            out = values.where(values.notna(), out)
    return out


def stratified_split(
    obs: pd.DataFrame, label: pd.Series, library_key: str, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation positions, stratified by label x library (unlabelled cells form one label).

    Each stratum sends ``round(fraction * n)`` cells to validation (none from singletons), so every
    library and cell type is represented in both sets in proportion.
    """
    rng = np.random.default_rng(seed)
    strata = label.fillna("<unlabelled>").astype(str) + "\x1f" + obs[library_key].astype(str)
    codes = pd.factorize(strata)[0]
    val = []
    for s in range(codes.max() + 1):
        members = np.flatnonzero(codes == s)
        n_val = int(round(fraction * len(members))) if len(members) > 1 else 0
        val.append(rng.choice(members, size=n_val, replace=False))
    val_idx = np.sort(np.concatenate(val)).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(len(obs)), val_idx).astype(np.int64)
    return train_idx, val_idx


def validation_split(
    obs: pd.DataFrame, label: pd.Series, library_key: str, training: Mapping
) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation positions: stratified by label x library (:func:`stratified_split`), or uniformly at
    random with ``training.stratify: false`` (``round(validation_fraction * n)`` cells, seeded)."""
    fraction, seed = training["validation_fraction"], training["seed"]
    if training.get("stratify", True):
        return stratified_split(obs, label, library_key, fraction, seed)
    rng = np.random.default_rng(seed)
    val_idx = np.sort(rng.choice(len(obs), size=int(round(fraction * len(obs))), replace=False)).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(len(obs)), val_idx).astype(np.int64)
    return train_idx, val_idx


def select_genes(adata, features: Mapping, threads: int = 1):
    """Highly variable genes: seurat_v3 on raw counts if scikit-misc is present, else cell_ranger on
    log-normalised counts (``flavor`` in the config forces one)."""
    import scanpy as sc

    sc.pp.filter_genes(adata, min_cells=max(int(features["min_cells"]), 1))
    n_top = features["n_top_genes"]
    if n_top is None or n_top >= adata.n_vars:
        return adata
    flavor = features["flavor"]
    if flavor == "auto":
        try:
            import skmisc  # noqa: F401

            flavor = "seurat_v3"
        except ImportError:
            flavor = "cell_ranger"
    batch_key = features["batch_key"]
    if flavor == "seurat_v3":
        sc.pp.highly_variable_genes(adata, n_top_genes=n_top, flavor="seurat_v3", batch_key=batch_key)
    else:
        norm = adata.copy()
        sc.pp.normalize_total(norm, target_sum=1e4)
        sc.pp.log1p(norm)
        sc.pp.highly_variable_genes(norm, n_top_genes=n_top, flavor="cell_ranger", batch_key=batch_key)
        adata.var["highly_variable"] = norm.var["highly_variable"].to_numpy()
    print(f"gene filter: {flavor}, {int(adata.var['highly_variable'].sum())} of {adata.n_vars} genes")
    return adata[:, adata.var["highly_variable"].to_numpy()].copy()


def _setup_kwargs(covariates: Mapping) -> dict:
    return {k: v for k, v in covariates.items() if v is not None}


def _train_kwargs(training: Mapping, train_idx: np.ndarray, val_idx: np.ndarray) -> dict:
    kwargs = {
        "max_epochs": training["max_epochs"],
        "batch_size": training["batch_size"],
        "early_stopping": training["early_stopping"],
        "accelerator": training["accelerator"],
        "devices": training["devices"],
        "strategy": training["strategy"],
        "data_path": training.get("data_path", "auto"),
        "reduced_precision": training.get("reduced_precision", False),
        "plan_kwargs": dict(training["plan_kwargs"]),
        "datasplitter_kwargs": {"external_indexing": [train_idx, val_idx, np.array([], dtype=np.int64)]},
        # Validation every epoch so the training curves always have both splits; one log line per
        # epoch instead of a carriage-return progress bar keeps cluster logs readable.
        "check_val_every_n_epoch": 1,
        "enable_progress_bar": False,
        "callbacks": [_epoch_logger()],
    }
    if training["early_stopping"]:
        kwargs["early_stopping_patience"] = training["early_stopping_patience"]
        kwargs["early_stopping_monitor"] = "elbo_validation"
    if training["early_stopping_min_delta_per_feature"] is not None:
        kwargs["early_stopping_min_delta_per_feature"] = training["early_stopping_min_delta_per_feature"]
    if world_size(training) > 1 and "LOCAL_RANK" in os.environ:
        # Ranks started by rvi.stages.distributed.ddp_ranks: Lightning must join them (LOCAL_RANK, MASTER_PORT)
        # rather than detect the scheduler's environment (SLURM_NTASKS, LSF) and expect srun/jsrun ranks.
        from lightning.fabric.plugins.environments import LightningEnvironment

        kwargs["plugins"] = [LightningEnvironment()]
    return kwargs


def _build_and_train(model_cls, data, model_cfg: Mapping, training: Mapping, train_idx, val_idx, resume=None):
    """Instantiate a registered rvi model from the stage's ``model`` section and train it.

    ``resume``: the stage's resume folder (:mod:`rvi.stages.checkpoint`), or None to train without one.
    """
    from rvi.stages import checkpoint

    if training["early_stopping"] and len(val_idx) == 0:
        raise ValueError(
            f"training.validation_fraction = {training['validation_fraction']} gives 0 validation cells of "
            f"{len(train_idx)} (every label x library stratum rounds to 0) but training.early_stopping is true: "
            "raise validation_fraction or set early_stopping: false"
        )
    vae = model_cls(
        data,
        n_hidden=model_cfg["n_hidden"],
        n_latent=model_cfg["n_latent"],
        n_layers=model_cfg["n_layers"],
        dropout_rate=model_cfg["dropout_rate"],
        **model_cfg["module_kwargs"],
    )
    print(vae)
    kwargs = _train_kwargs(training, train_idx, val_idx)
    saver = None
    if resume is not None:
        key = checkpoint.fingerprint(model_cfg, training, data.obs_names, data.var_names, train_idx, val_idx)
        saver = checkpoint.epoch_checkpoint(resume, key)
        kwargs["callbacks"] = [*kwargs["callbacks"], saver]
        kwargs["ckpt_path"] = checkpoint.resume_path(resume, key)
    if world_size(training) > 1:
        # Under DDP scvi-tools saves its history logger to disk (default: ./lightning_logs in the working
        # directory, i.e. the repository): keep it in a temporary folder instead.
        # Inside the job's DDP folder (removed on every exit path, also when this rank is killed).
        with tempfile.TemporaryDirectory(prefix="rvi-ddp-log-", dir=os.environ.get("RVI_DDP_TMP")) as log_dir:
            vae.train(**kwargs, log_save_dir=log_dir)
    else:
        vae.train(**kwargs)
    mark_training_done()
    if is_worker():
        # A DDP worker rank (rvi.stages.distributed): rank 0 alone computes and writes the outputs.
        raise DistributedWorkerDone()
    hist = checkpoint.full_history(history_frame(vae.history_), saver)
    chosen = getattr(vae, "data_path_", None)
    if chosen:
        print(f"data path: {chosen['data_path']} ({chosen['reason']})")
    print(f"trained {len(hist)} epochs")
    return vae, hist


def _epoch_logger():
    from lightning.pytorch.callbacks import Callback

    class EpochLogger(Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("elbo", "reconstruction"))}
            shown = " ".join(f"{k}={v:.2f}" for k, v in sorted(m.items()))
            print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} {shown}", flush=True)

    return EpochLogger()


def history_frame(history: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """``model.history_`` (one DataFrame per logged key) -> one table indexed by epoch."""
    cols = {}
    for key, frame in history.items():
        if isinstance(frame, pd.DataFrame) and frame.shape[1] >= 1:
            cols[key] = pd.to_numeric(frame.iloc[:, 0], errors="coerce")
    table = pd.DataFrame(cols)
    table.index.name = "epoch"
    return table


def plot_training_curves(history: pd.DataFrame, path: str, title: str) -> None:
    from rvi.plots import training_curves

    save_figure(training_curves(history, title), path)


def plot_umaps(coords: pd.DataFrame, obs: pd.DataFrame, keys: Sequence[str], path: str) -> None:
    from rvi.plots import umap_panels

    save_figure(umap_panels(coords, obs, keys), path)


def knn_umap_leiden(latent: np.ndarray, obs_names: pd.Index, embedding: Mapping, threads: int = 1):
    """kNN graph, UMAP and Leiden of a latent space; returns (conn, dist, umap frame, leiden frame)."""
    import anndata as ad
    import scanpy as sc

    from rvi.annotation import broad_leiden

    tmp = ad.AnnData(obs=pd.DataFrame(index=obs_names), obsm={"X_latent": np.asarray(latent, dtype=np.float32)})
    sc.pp.neighbors(tmp, use_rep="X_latent", n_neighbors=embedding["n_neighbors"], random_state=embedding["seed"])
    sc.tl.umap(tmp, min_dist=embedding["umap_min_dist"], random_state=embedding["seed"])
    conn, dist = tmp.obsp["connectivities"].tocsr(), tmp.obsp["distances"].tocsr()
    umap = pd.DataFrame(tmp.obsm["X_umap"], index=obs_names, columns=["UMAP1", "UMAP2"])
    leiden = pd.DataFrame(
        {
            "leiden": np.asarray(
                broad_leiden(conn, resolution=embedding["leiden_resolution"], random_state=embedding["seed"])
            )
        },
        index=obs_names,
    )
    return conn, dist, umap, leiden


def save_knn(path: str, obs_names: pd.Index, connectivities, distances, n_neighbors: int) -> None:
    """kNN graph as one .npz: CSR parts of connectivities and distances plus the cell names."""
    arrays = {"obs_names": np.asarray(obs_names, dtype=str), "n_neighbors": np.array(n_neighbors)}
    for name, m in (("connectivities", connectivities), ("distances", distances)):
        arrays |= {f"{name}_data": m.data, f"{name}_indices": m.indices, f"{name}_indptr": m.indptr}
        arrays[f"{name}_shape"] = np.array(m.shape)
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)


def load_knn(path: str) -> tuple[pd.Index, object, object]:
    """Inverse of :func:`save_knn`: (obs_names, connectivities, distances)."""
    import scipy.sparse as sp

    z = np.load(path, allow_pickle=False)
    mats = [
        sp.csr_matrix((z[f"{n}_data"], z[f"{n}_indices"], z[f"{n}_indptr"]), shape=tuple(z[f"{n}_shape"]))
        for n in ("connectivities", "distances")
    ]
    return pd.Index(z["obs_names"].astype(str)), mats[0], mats[1]


def integration_metrics(adata, latent: np.ndarray, cfg_metrics: Mapping, covariates: Mapping, levels, threads: int = 1):
    """Integration metrics of a latent (row ``rvi``) beside the RNA PCA baseline (row ``pca``).

    Batch terms use every cell, with the library and the dataset each as batch: ``batch_mixing_<key>``
    (:func:`rvi.metrics.batch_mixing_score`) and ``ilisi_<key>`` (scib-metrics iLISI, scaled to [0, 1]).
    The scib table (Bio / Batch / Total, batch = library) needs labels, so it runs on the labelled cells
    only; when those span a single library or dataset its batch terms say nothing about mixing across
    them, and a warning says so (the all-cell columns still do).
    """
    import warnings

    from rvi.metrics import pca_baseline, scib_benchmark

    lib_key, ds_key = covariates["library_key"], covariates["dataset_key"]
    batch_keys = [k for k in dict.fromkeys([lib_key, ds_key]) if k]
    pca = pca_baseline(adata) if cfg_metrics["enabled"] else None
    embeddings = {"rvi": latent} if pca is None else {"rvi": latent, "pca": pca}
    table = pd.DataFrame(
        {name: all_cell_batch_terms(emb, adata.obs, batch_keys, threads) for name, emb in embeddings.items()}
    ).T
    table["n_cells_batch_terms"] = adata.n_obs
    if not cfg_metrics["enabled"]:
        return table
    level = cfg_metrics["label_level"] or _metrics_level(adata.obs, levels, lib_key)
    if level is None:
        print("metrics: no label level with >= 2 labels over >= 2 libraries: batch terms on all cells only")
        return table
    labelled = adata.obs[level].notna().to_numpy()
    sub = adata[labelled]
    single = [k for k in batch_keys if sub.obs[k].nunique() < 2]
    if single:
        message = (
            f"metrics: the {int(labelled.sum())} cells labelled at {level!r} span a single "
            + " and a single ".join(f"{k} ({sub.obs[k].astype(str).iat[0]!r})" for k in single)
            + ": the scib batch terms on them do not measure mixing across "
            + ", ".join(single)
            + "; read batch_mixing_* / ilisi_* (all cells)"
        )
        warnings.warn(message, stacklevel=2)
        print(message)
    try:
        scib = scib_benchmark(
            sub,
            {"rvi": latent[labelled], "pca": pca[labelled]},
            label_key=level,
            batch_key=lib_key,
            n_jobs=threads,
            subsample=cfg_metrics["max_cells"],
        )
    except ValueError as exc:  # too few cells / labels for scib: keep the label-free numbers
        print(f"metrics: scib skipped ({exc})")
        return table
    scib["label_level"] = level
    scib["labelled_single_batch"] = ",".join(single)
    return scib.rename(columns={"n_cells": "n_cells_scib"}).join(table, how="left")


def all_cell_batch_terms(latent: np.ndarray, obs: pd.DataFrame, batch_keys: Sequence[str], threads: int = 1) -> dict:
    """Label-free batch terms of one embedding over every cell: entropy mixing and iLISI per batch key."""
    from scib_metrics import ilisi_knn

    from rvi.metrics import batch_mixing_score
    from rvi.metrics.scib import SCIB_NEIGHBOURS, _neighbors_results_class, exact_knn

    latent = np.asarray(latent, dtype=np.float32)
    out = {}
    k = min(max(SCIB_NEIGHBOURS), len(latent) - 1)
    neighbours = None
    for key in batch_keys:
        batch = obs[key].astype(str).to_numpy()
        out[f"batch_mixing_{key}"] = batch_mixing_score(latent, batch, n_jobs=threads)
        if len(np.unique(batch)) < 2 or k < 2:
            out[f"ilisi_{key}"] = np.nan
            continue
        if neighbours is None:
            idx, dist = exact_knn(latent, k + 1, n_jobs=threads)
            neighbours = _neighbors_results_class()(indices=idx, distances=dist)
        out[f"ilisi_{key}"] = float(ilisi_knn(neighbours, batch))
    return out


def _metrics_level(obs: pd.DataFrame, levels: Sequence[str], lib_key: str) -> str | None:
    for level in reversed(list(levels)):
        if level not in obs:
            continue
        lab = obs.loc[obs[level].notna(), [level, lib_key]]
        if lab[level].nunique() >= 2 and lab[lib_key].nunique() >= 2:
            return level
    return None


def _save_model(model, path: str) -> None:
    with atomic_dir(path) as tmp:
        model.save(str(tmp), overwrite=True, save_anndata=False)


def _set_torch(threads: int, seed: int) -> None:
    import scvi
    import torch

    torch.set_num_threads(max(int(threads), 1))
    scvi.settings.seed = seed
    scvi.settings.dl_num_workers = 0


# --------------------------------------------------------------------------------------------------
# train_rna
# --------------------------------------------------------------------------------------------------


def train_rna(
    rna: str,
    scrublet: str,
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
    atac_qc: str | None = None,
    threads: int = 1,
) -> None:
    """Cell QC, gene filter, stratified split, AmbientRegularizedSCVI, latent/kNN/UMAP/Leiden, metrics."""
    import anndata as ad

    from rvi import AmbientRegularizedSCVI

    spec, cov, levels = cfg["train_rna"], cfg["covariates"], cfg["labels"]["levels"]
    training = spec["training"]
    _set_torch(threads, training["seed"])
    adata = ad.read_h5ad(rna)
    scr = pd.read_csv(scrublet, index_col=0)
    atac_table = pd.read_csv(atac_qc, index_col=0) if atac_qc else None
    qc_table = cell_qc_table(adata.obs, spec["cell_qc"], cov["dataset_key"], scr, atac_table)
    adata = adata[qc_table["pass_qc"].to_numpy()].copy()
    print(f"cell QC: {adata.n_obs} of {len(qc_table)} cells pass")
    if adata.n_obs < 10:
        raise ValueError(f"only {adata.n_obs} cells pass train_rna.cell_qc: relax the thresholds")
    adata = select_genes(adata, spec["features"], threads)

    label = finest_label(adata.obs, levels)
    train_idx, val_idx = validation_split(adata.obs, label, cov["library_key"], training)
    split = pd.Series("train", index=adata.obs_names)
    split.iloc[val_idx] = "validation"
    qc_table["split"] = split.reindex(qc_table.index).fillna("excluded")

    AmbientRegularizedSCVI.setup_anndata(adata, **_setup_kwargs(cov))
    resume = checkpoint_dir(model, training, world_size(training))
    vae, hist = _build_and_train(AmbientRegularizedSCVI, adata, spec["model"], training, train_idx, val_idx, resume)

    z = vae.get_latent_representation()
    cols = [f"z{i}" for i in range(z.shape[1])]
    _write_embedding_outputs(
        z,
        cols,
        adata,
        spec["embedding"],
        latent,
        umap,
        leiden,
        knn,
        umap_png,
        [cov["library_key"], cov["dataset_key"], *levels[-1:]],
        threads,
    )
    table = integration_metrics(adata, z, spec["metrics"], cov, levels, threads)
    write_csv(table, metrics)
    write_csv(hist, history)
    plot_training_curves(hist, curves_png, "AmbientRegularizedSCVI")
    write_csv(pd.DataFrame({"gene": adata.var_names}), genes, index=False)
    qc_table.index.name = "obs_name"
    write_csv(qc_table, cells)
    _save_model(vae, model)
    drop_checkpoint(resume)


def _write_embedding_outputs(z, cols, adata, embedding, latent, umap, leiden, knn, umap_png, color_keys, threads):
    names = adata.obs_names
    write_parquet(pd.DataFrame(z, index=names, columns=cols), latent)
    conn, dist, coords, clusters = knn_umap_leiden(z, names, embedding, threads)
    save_knn(knn, names, conn, dist, embedding["n_neighbors"])
    obs = adata.obs.copy()
    obs["leiden"] = clusters["leiden"]
    write_parquet(coords, umap)
    clusters.index.name = "obs_name"
    write_csv(clusters, leiden)
    plot_umaps(coords, obs, [k for k in [*color_keys, "leiden"] if k], umap_png)


# --------------------------------------------------------------------------------------------------
# train_multimodal
# --------------------------------------------------------------------------------------------------


def build_multiome(rna: str, atac: str, cres: str, cells: str, genes: str, covariate_columns: Sequence[str]):
    """MuData of QC-passed cells: RNA on the RNA model's genes, ATAC on the union of selected CREs."""
    import anndata as ad
    import mudata as md

    from rvi.models import align_modalities

    qc_table = pd.read_csv(cells, index_col=0)
    keep = qc_table.index[qc_table["pass_qc"].astype(bool)]
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
    cells: str,
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

    spec, cov, levels = cfg["train_multimodal"], cfg["covariates"], cfg["labels"]["levels"]
    training = spec["training"]
    _set_torch(threads, training["seed"])
    setup = _setup_kwargs(cov)
    mdata = build_multiome(rna, atac, cres, cells, genes, _covariate_columns(setup))
    print(f"multiome: {mdata.n_obs} cells; rna {mdata['rna'].n_vars} genes, atac {mdata['atac'].n_vars} CREs")
    labels = pd.read_csv(annotation, index_col=0).reindex(mdata.obs_names)
    strat = finest_label(labels, levels) if levels else labels["cluster"].astype(str)
    train_idx, val_idx = validation_split(mdata.obs, strat, cov["library_key"], training)

    RegularizedMultimodalVI.setup_mudata(mdata, modalities={"rna": "rna", "atac": "atac"}, **setup)
    resume = checkpoint_dir(model, training, world_size(training))
    vae, hist = _build_and_train(RegularizedMultimodalVI, mdata, spec["model"], training, train_idx, val_idx, resume)

    z = vae.get_latent_representation()
    view = ad.AnnData(obs=mdata.obs.copy())
    view.obs[[f"annotation_{lv}" for lv in levels]] = labels[levels].to_numpy() if levels else None
    _write_embedding_outputs(
        z,
        [f"z{i}" for i in range(z.shape[1])],
        view,
        spec["embedding"],
        latent,
        umap,
        leiden,
        knn,
        umap_png,
        [cov["library_key"], cov["dataset_key"], *(f"annotation_{lv}" for lv in levels[-1:])],
        threads,
    )
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
    write_csv(hist, history)
    plot_training_curves(hist, curves_png, "RegularizedMultimodalVI")
    _save_model(vae, model)
    drop_checkpoint(resume)


def _covariate_columns(setup: Mapping) -> list[str]:
    cols = []
    for key, value in setup.items():
        if key == "encoder_covariate_keys" and value is False:
            continue
        cols += [value] if isinstance(value, str) else list(value)
    return list(dict.fromkeys(cols))
