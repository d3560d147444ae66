"""Training helpers of the model stages: labels for stratification, validation split, gene filter,
Lightning / scvi-tools training arguments (DDP, checkpoints, epoch log), history and plots."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from rvi.distributed import DistributedWorkerDone, is_worker, mark_training_done, world_size
from rvi.io.atomic import atomic_dir, save_figure


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
        # Ranks started by rvi.distributed.ddp_ranks: Lightning must join them (LOCAL_RANK, MASTER_PORT)
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
        # A DDP worker rank (rvi.distributed): rank 0 alone computes and writes the outputs.
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


def _save_model(model, path: str) -> None:
    with atomic_dir(path) as tmp:
        model.save(str(tmp), overwrite=True, save_anndata=False)


def _set_torch(threads: int, seed: int) -> None:
    import scvi
    import torch

    torch.set_num_threads(max(int(threads), 1))
    scvi.settings.seed = seed
    scvi.settings.dl_num_workers = 0
