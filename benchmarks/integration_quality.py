"""Integration quality of scVI vs rvi.AmbientRegularizedSCVI on the real bone-marrow Multiome subset.

Trains both models (n_hidden=512, n_latent=64, NB likelihood for scVI) for the same number of epochs
and seeds and scores every latent space with scib-metrics (unscaled; Total = 0.6 Bio + 0.4 Batch),
next to the PCA baseline. Setups (``--setups``):

* scVI ``batch`` (the reference: ``batch_key="batch"``, decoder conditioned on batch) and ``none``.
* rvi ``library``: ``library_key="batch"`` alone (batch-free decoder, per-library ambient, dispersion
  and library-size priors).
* rvi ``library+scaling``: also ``feature_scaling_covariate_keys=["batch"]`` (a per-library gene factor
  with its tight prior; the decoder stays batch-free).
* rvi ``library+nn``: ``library_key="batch"`` and ``nn_conditioning_covariate_keys=["batch"]`` (decoder
  conditioned on batch; feature scaling keyed by batch follows by default).

Both models use the same KL warm-up (rvi's default for the chosen max_epochs) so neither is compared
with an unfinished warm-up. Prints the per-model mean over seeds and writes every number (per seed and
aggregated) to ``benchmarks/out/integration_quality.csv``.

Run: ``.venv/bin/python benchmarks/integration_quality.py --seeds 3 --max-epochs 200``
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = "bmmc_multiome_starter/bmmc_multiome_starter_500.h5mu"
SETUPS = {"scvi": ("batch", "none"), "rvi": ("library", "library+scaling", "library+nn")}


def shared_data_dir() -> Path:
    env = os.environ.get("RVI_SHARED_DATA")
    return Path(env) if env else (REPO / ".." / "shared" / "data").resolve()


def load_rna(path: Path):
    """RNA AnnData with raw counts in layers['counts'] and obs 'batch' / 'cell_type'."""
    import mudata as md

    mdata = md.read_h5mu(path)
    rna = mdata.mod["rna"].copy()
    for key in ("batch", "cell_type"):
        if key in rna.obs:
            continue
        # Fall back to the global table, where modality columns may carry an "rna:" prefix.
        for col in (key, f"rna:{key}"):
            if col in mdata.obs:
                rna.obs[key] = mdata.obs.loc[rna.obs_names, col].to_numpy()
                break
        else:
            raise KeyError(f"{key!r} found neither in mod['rna'].obs nor in the global obs")
    if "counts" not in rna.layers:
        rna.layers["counts"] = rna.X.copy()
    rna.obs["batch"] = rna.obs["batch"].astype(str).astype("category")
    rna.obs["cell_type"] = rna.obs["cell_type"].astype(str).astype("category")
    return rna


def train_scvi(adata, setup: str, seed: int, args) -> np.ndarray:
    import scvi

    scvi.settings.seed = seed
    ad = adata.copy()
    scvi.model.SCVI.setup_anndata(ad, layer="counts", batch_key="batch" if setup == "batch" else None)
    model = scvi.model.SCVI(ad, n_hidden=512, n_latent=64, gene_likelihood="nb")
    model.train(
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        early_stopping=False,
        plan_kwargs={"n_epochs_kl_warmup": args.kl_warmup},
        accelerator=args.accelerator,
        enable_progress_bar=False,
    )
    return model.get_latent_representation()


def train_rvi(adata, setup: str, seed: int, args) -> np.ndarray:
    import scvi

    from rvi import AmbientRegularizedSCVI

    scvi.settings.seed = seed
    ad = adata.copy()
    AmbientRegularizedSCVI.setup_anndata(
        ad,
        layer="counts",
        library_key="batch",
        nn_conditioning_covariate_keys=["batch"] if setup == "library+nn" else None,
        feature_scaling_covariate_keys=["batch"] if setup == "library+scaling" else None,
    )
    model = AmbientRegularizedSCVI(ad, n_hidden=512, n_latent=64)
    model.train(
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        early_stopping=False,
        plan_kwargs={"n_epochs_kl_warmup": args.kl_warmup},
        accelerator=args.accelerator,
        enable_progress_bar=False,
    )
    return model.get_latent_representation()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help=f"h5mu file (default: <shared data>/{DEFAULT_DATA})")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0..n-1), results are averaged")
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--models", nargs="+", default=["scvi", "rvi"], choices=["scvi", "rvi"])
    parser.add_argument("--setups", nargs="+", default=None, help="subset of setups (default: all)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "integration_quality.csv")
    args = parser.parse_args(argv)

    from rvi.metrics import batch_mixing_score, pca_baseline, scib_benchmark
    from rvi.train import default_kl_warmup_epochs

    args.kl_warmup = default_kl_warmup_epochs(args.max_epochs)
    path = args.data or shared_data_dir() / DEFAULT_DATA
    if not path.exists():
        print(f"data not found: {path} (set RVI_SHARED_DATA or --data)", file=sys.stderr)
        return 2

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    # kBET logs one INFO line per single-batch label; scib-metrics resets its logger level on import,
    # so set it through its settings object (after importing it) to keep the table readable.
    import scib_metrics

    scib_metrics.settings.verbosity = logging.WARNING
    adata = load_rna(path)
    print(
        f"{path.name}: {adata.n_obs} cells x {adata.n_vars} genes, {adata.obs['batch'].nunique()} batches, "
        f"{adata.obs['cell_type'].nunique()} cell types; {args.seeds} seeds x {args.max_epochs} epochs"
    )

    trainers = {"scvi": train_scvi, "rvi": train_rvi}
    embeddings = {"pca": pca_baseline(adata, layer="counts")}
    runs = [("pca", "-", np.nan, 0.0)]
    for seed in range(args.seeds):
        for name in args.models:
            for setup in SETUPS[name]:
                if args.setups and setup not in args.setups:
                    continue
                t0 = time.time()
                try:
                    emb = trainers[name](adata, setup, seed, args)
                except ImportError as err:
                    print(f"skipping {name} ({setup}): {err}", file=sys.stderr)
                    continue
                elapsed = time.time() - t0
                key = f"{name}|{setup}|{seed}"
                embeddings[key] = emb
                runs.append((name, setup, seed, elapsed))
                print(f"  trained {key} in {elapsed:.0f} s", flush=True)

    scores = scib_benchmark(adata, embeddings, label_key="cell_type", batch_key="batch", layer="counts", subsample=None)
    batch = adata.obs["batch"].to_numpy()
    scores["batch_mixing"] = [batch_mixing_score(embeddings[k], batch) for k in scores.index]
    meta = pd.DataFrame(runs, columns=["model", "setup", "seed", "train_seconds"], index=list(embeddings))
    per_run = meta.join(scores)
    per_run["level"] = "run"

    metric_cols = [c for c in scores.columns if c != "n_cells"]
    grouped = per_run.groupby(["model", "setup"], sort=False)
    mean = grouped[metric_cols + ["train_seconds"]].mean()
    sd = grouped[["Total", "Bio conservation", "Batch correction"]].std(ddof=1).add_suffix(" sd")
    summary = mean.join(sd).reset_index()
    summary["seed"] = np.nan
    summary["n_seeds"] = grouped.size().to_numpy()
    summary["level"] = "mean_over_seeds"

    args.out.parent.mkdir(parents=True, exist_ok=True)
    full = pd.concat([per_run.reset_index(names="embedding"), summary], ignore_index=True)
    full.to_csv(args.out, index=False)

    show = summary.set_index(["model", "setup"])[
        ["Total", "Total sd", "Bio conservation", "Batch correction", "batch_mixing", "n_seeds"]
    ]
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 160):
        print(show.sort_values("Total", ascending=False).to_string())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
