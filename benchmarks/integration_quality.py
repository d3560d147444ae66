"""Integration quality vs width: scVI against rvi.AmbientRegularizedSCVI on the labelled real multi-batch sets.

Datasets (``--datasets``), RNA only, batch = the finest technical unit:

* ``snare``: SNARE-seq mouse cortex (``snare_mouse_cortex_6libs.h5mu``, mod['rna'], 1,677 genes, batch =
  ``library`` (6), label = ``cell_type`` (14)); a stratified subsample of ``--snare-cells`` cells
  (label x library, default 1000) keeps the run within budget.
* ``bmmc``: the bone-marrow Multiome starter (500 cells, mod['rna'], 600 genes, batch = donor ``batch`` (2),
  label = ``cell_type`` (21)), all cells.

Models (``--models``): scVI at its usual settings (``batch_key``, ZINB, one layer, dropout 0.1) at
128h/30z, 512h/128z and 1024h/256z, and rvi at the same three widths with the recommended setup:
``library_key`` + ``nn_conditioning_covariate_keys`` = the batch column and the module options in
``RVI_RECOMMENDED`` (override with ``--rvi-kwargs '{json}'``). Every model trains for ``--epochs`` epochs
(default 30 for SNARE, 60 for the bone marrow; no early stopping) with batch size 128 and the same KL
warm-up (rvi's default for that number of epochs), on ``--threads`` CPU threads.

Every latent space is scored with scib-metrics (unscaled; Total = 0.6 Bio + 0.4 Batch) on all cells of
the (subsampled) set, right after training: one row per (dataset, model, seed) is appended to the CSV
(``--out``) as soon as it exists, so a partial run keeps its rows and a rerun skips rows already there.
At the end the mean over seeds is printed (with the drop of each family from 128h/30z to 1024h/256z) and
a plot of Total vs width per dataset is written next to the CSV.

Run (2 shared cores, ~40 min for everything):
``nice .venv/bin/python benchmarks/integration_quality.py --seeds 3``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATASETS = {
    # name: (file under the shared data folder, batch column, label column, default epochs)
    "snare": ("snare_mouse_cortex/snare_mouse_cortex_6libs.h5mu", "library", "cell_type", 30),
    "bmmc": ("bmmc_multiome_starter/bmmc_multiome_starter_500.h5mu", "batch", "cell_type", 60),
}
WIDTHS = {"128h30z": (128, 30), "512h128z": (512, 128), "1024h256z": (1024, 256)}
MODELS = [f"{family}_{w}" for family in ("scvi", "rvi") for w in WIDTHS]
#: The rvi module options the harness uses (the recommended setup; see README "Models / covariates").
RVI_RECOMMENDED: dict = {"latent_prior": "ard"}
RESULT_COLUMNS = ["dataset", "model", "family", "width", "n_hidden", "n_latent", "seed", "epochs", "n_cells"]


def shared_data_dir() -> Path:
    env = os.environ.get("RVI_SHARED_DATA")
    return Path(env) if env else (REPO / ".." / "shared" / "data").resolve()


def load_rna(path: Path, batch_key: str = "batch", label_key: str = "cell_type"):
    """RNA AnnData with raw counts in layers['counts'] and categorical obs ``batch`` / ``cell_type``."""
    import mudata as md

    mdata = md.read_h5mu(path)
    rna = mdata.mod["rna"].copy()
    for key in (batch_key, label_key):
        if key in rna.obs:
            continue
        # Fall back to the global table, where modality columns may carry an "rna:" prefix.
        for col in (key, f"rna:{key}"):
            if col in mdata.obs:
                rna.obs[key] = mdata.obs.loc[rna.obs_names, col].to_numpy()
                break
        else:
            raise KeyError(f"{path}: {key!r} found neither in mod['rna'].obs nor in the global obs")
    if "counts" not in rna.layers:
        rna.layers["counts"] = rna.X.copy()
    rna.obs["batch"] = rna.obs[batch_key].astype(str).astype("category")
    rna.obs["cell_type"] = rna.obs[label_key].astype(str).astype("category")
    return rna


def train_scvi(adata, n_hidden: int, n_latent: int, seed: int, args) -> np.ndarray:
    import scvi

    scvi.settings.seed = seed
    ad = adata.copy()
    scvi.model.SCVI.setup_anndata(ad, layer="counts", batch_key="batch")
    model = scvi.model.SCVI(ad, n_hidden=n_hidden, n_latent=n_latent)
    model.train(
        max_epochs=args.epochs_now,
        batch_size=args.batch_size,
        early_stopping=False,
        plan_kwargs={"n_epochs_kl_warmup": args.kl_warmup},
        accelerator="cpu",
        enable_progress_bar=False,
    )
    return model.get_latent_representation()


def train_rvi(adata, n_hidden: int, n_latent: int, seed: int, args) -> np.ndarray:
    import scvi

    from rvi import AmbientRegularizedSCVI

    scvi.settings.seed = seed
    ad = adata.copy()
    AmbientRegularizedSCVI.setup_anndata(
        ad,
        layer="counts",
        library_key="batch",
        nn_conditioning_covariate_keys=["batch"] if args.rvi_setup == "library+nn" else None,
        feature_scaling_covariate_keys=["batch"] if args.rvi_setup == "library+scaling" else None,
    )
    model = AmbientRegularizedSCVI(ad, n_hidden=n_hidden, n_latent=n_latent, **args.rvi_kwargs)
    model.train(
        max_epochs=args.epochs_now,
        batch_size=args.batch_size,
        early_stopping=False,
        plan_kwargs={"n_epochs_kl_warmup": args.kl_warmup},
        accelerator="cpu",
        enable_progress_bar=False,
    )
    return model.get_latent_representation()


def load_dataset(name: str, args):
    from rvi.metrics.scib import stratified_subsample

    rel, batch_key, label_key, _ = DATASETS[name]
    path = shared_data_dir() / rel
    if not path.exists():
        raise FileNotFoundError(f"{name}: data not found at {path} (set RVI_SHARED_DATA)")
    adata = load_rna(path, batch_key, label_key)
    if name == "snare" and args.snare_cells and args.snare_cells < adata.n_obs:
        keep = stratified_subsample(adata.obs, "cell_type", "batch", n=args.snare_cells, seed=0)
        adata = adata[keep].copy()
    return adata


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    metrics = ["Total", "Bio conservation", "Batch correction", "train_seconds"]
    grouped = results.groupby(["dataset", "family", "width"], sort=False)
    out = grouped[metrics].mean()
    out["Total sd"] = grouped["Total"].std(ddof=1)
    out["n_seeds"] = grouped.size()
    return out.reset_index()


def width_drops(summary: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and family: Total at 128h30z, 512h128z, 1024h256z and the drop 128h30z -> 1024h256z."""
    wide = summary.pivot_table(index=["dataset", "family"], columns="width", values="Total")
    wide = wide[[w for w in WIDTHS if w in wide.columns]]
    if {"128h30z", "1024h256z"} <= set(wide.columns):
        wide["drop_128_to_1024"] = wide["128h30z"] - wide["1024h256z"]
    return wide


def plot(summary: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rvi.io.atomic import atomic_path

    datasets = list(dict.fromkeys(summary["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    order = {w: i for i, w in enumerate(WIDTHS)}
    for ax, ds in zip(axes[0], datasets):
        for family, sub in summary[summary["dataset"] == ds].groupby("family"):
            sub = sub.sort_values("width", key=lambda s: s.map(order))
            x = sub["width"].map(order).to_numpy()
            ax.errorbar(x, sub["Total"], yerr=sub["Total sd"].fillna(0), marker="o", capsize=3, label=family)
        ax.set_xticks(range(len(WIDTHS)), list(WIDTHS))
        ax.set_xlabel("n_hidden / n_latent")
        ax.set_ylabel("scib Total (unscaled)")
        ax.set_title(ds)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0..n-1), results are averaged")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for every dataset (default per dataset)")
    parser.add_argument("--snare-cells", type=int, default=1000, help="stratified SNARE subsample (0 = all)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: 2 ran ~5x slower when shared)")
    parser.add_argument("--rvi-setup", default="library+nn", choices=["library", "library+nn", "library+scaling"])
    parser.add_argument("--rvi-kwargs", type=json.loads, default=None, help="JSON module options for rvi")
    parser.add_argument("--tag", default="", help="suffix of the model names in the CSV (pilot variants)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "integration_quality.csv")
    args = parser.parse_args(argv)
    args.rvi_kwargs = dict(RVI_RECOMMENDED if args.rvi_kwargs is None else args.rvi_kwargs)

    import torch

    from rvi.io.atomic import write_csv
    from rvi.metrics import pca_baseline, scib_benchmark
    from rvi.train import default_kl_warmup_epochs

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import scib_metrics

    scib_metrics.settings.verbosity = logging.WARNING
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    results = pd.read_csv(args.out) if args.out.exists() else pd.DataFrame()
    done = set()
    if len(results):
        done = set(zip(results["dataset"], results["model"], results["seed"].astype(int)))
    print(f"rvi setup {args.rvi_setup}, options {args.rvi_kwargs}; {len(done)} rows already in {args.out}")
    trainers = {"scvi": train_scvi, "rvi": train_rvi}
    data = {}
    for ds in args.datasets:
        adata = load_dataset(ds, args)
        epochs = args.epochs or DATASETS[ds][3]
        pre = pca_baseline(adata, n_comps=50, layer="counts", drop_pc1_threshold=np.inf)
        data[ds] = (adata, epochs, pre)
        print(
            f"{ds}: {adata.n_obs} cells x {adata.n_vars} genes, {adata.obs['batch'].nunique()} batches, "
            f"{adata.obs['cell_type'].nunique()} cell types; {epochs} epochs, "
            f"warm-up {default_kl_warmup_epochs(epochs)}",
            flush=True,
        )
    # Seeds outermost, so that a partial run holds every dataset x model for the first seeds.
    for seed in range(args.seeds):
        for ds in args.datasets:
            adata, args.epochs_now, pre = data[ds]
            args.kl_warmup = default_kl_warmup_epochs(args.epochs_now)
            for model in args.models:
                name = model + args.tag
                if (ds, name, seed) in done:
                    continue
                family, width = model.split("_")
                n_hidden, n_latent = WIDTHS[width]
                t0 = time.time()
                emb = trainers[family](adata, n_hidden, n_latent, seed, args)
                elapsed = time.time() - t0
                scores = scib_benchmark(
                    adata, {name: emb}, label_key="cell_type", batch_key="batch", pre_integrated=pre, subsample=None
                )
                values = [ds, name, family + args.tag, width, n_hidden, n_latent, seed, args.epochs_now]
                row = dict(zip(RESULT_COLUMNS, values))
                row.update(n_cells=adata.n_obs, train_seconds=elapsed, scib_seconds=time.time() - t0 - elapsed)
                if family == "rvi":
                    row["rvi_setup"], row["rvi_kwargs"] = args.rvi_setup, json.dumps(args.rvi_kwargs, sort_keys=True)
                row.update(scores.iloc[0].drop("n_cells").to_dict())
                results = pd.concat([results, pd.DataFrame([row])], ignore_index=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                write_csv(results, args.out, index=False)
                print(
                    f"  {ds} {name} seed {seed}: Total {row['Total']:.3f} (bio {row['Bio conservation']:.3f}, "
                    f"batch {row['Batch correction']:.3f}) train {elapsed:.0f} s",
                    flush=True,
                )

    if not len(results):
        return 0
    summary = summarise(results)
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 160):
        print(summary.to_string(index=False))
        print(width_drops(summary).to_string())
    plot(summary, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
