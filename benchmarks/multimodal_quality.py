"""Does the multimodal model earn its ATAC? scib-metrics on SNARE-seq mouse cortex (paired RNA + ATAC).

Embeddings, all of one width for the deep models (``--width``):
  rna_pca        PCA of log-normalised RNA (rvi.metrics.pca_baseline)
  atac_lsi       LSI of the binarised peaks (TF-IDF, truncated SVD, first component dropped)
  scvi           scvi-tools SCVI on RNA, batch = library
  multivi        scvi-tools MULTIVI on RNA + peaks, batch = library
  rvi_rna        rvi AmbientRegularizedSCVI on RNA, library as library/ambient key
  rvi_multimodal rvi RegularizedMultimodalVI, joint latent (ATAC slice at the model's default weight, or
                 --atac-weight); plus rvi_multimodal_unweighted (z itself) and its slices
                 rvi_multimodal_rna / _atac (and _shared with --shared-latent)
  rvi_rna+atac_lsi  both embeddings side by side (each scaled to mean sd 1), when both are run: what
                 the two modalities' separate best give together

Metrics: rvi.metrics.scib_benchmark (scib-metrics, unscaled), label = cell_type, batch = library, on all
4,640 cells; and "kNN label accuracy" (rvi.metrics.knn_label_accuracy, 5-fold, k = 15), a supervised
probe of how much label information an embedding holds. Peaks: the ``--n-peaks`` most frequently
detected (ties broken by position), the same set for every ATAC model. One CSV row per (seed, embedding),
appended as each seed finishes; a plot of the seed means at the end.

    PYTHONPATH=src nice python benchmarks/multimodal_quality.py --seeds 0 1 2 --epochs 60 \\
        --out benchmarks/results/multimodal_quality.csv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "snare_mouse_cortex"
MODELS = ("rna_pca", "atac_lsi", "scvi", "multivi", "rvi_rna", "rvi_multimodal")


def load(path: Path, n_peaks: int):
    import mudata as md
    import scipy.sparse as sp

    md.set_options(pull_on_update=False)
    mdata = md.read_h5mu(path)
    for col in ("library", "cell_type"):
        if col not in mdata.obs:
            raise KeyError(f"{path}: mdata.obs lacks column {col!r}")
    atac = mdata.mod["atac"]
    detected = np.asarray((sp.csr_matrix(atac.layers["counts"]) > 0).sum(axis=0)).ravel()
    order = np.argsort(-detected, kind="stable")[:n_peaks]
    keep = np.sort(order)
    rna = mdata.mod["rna"].copy()
    atac = atac[:, keep].copy()
    for a in (rna, atac):
        a.X = sp.csr_matrix(a.layers["counts"]).astype(np.float32)
        a.obs = mdata.obs[["library", "cell_type"]].copy()
    out = md.MuData({"rna": rna, "atac": atac})
    out.obs = mdata.obs[["library", "cell_type"]].copy()
    print(
        f"SNARE: {out.n_obs} cells, {rna.n_vars} genes, {atac.n_vars} of {mdata.mod['atac'].n_vars} peaks "
        f"(detected in >= {int(detected[order[-1]])} cells)",
        flush=True,
    )
    return out


def atac_lsi(atac, width: int, seed: int) -> np.ndarray:
    import scipy.sparse as sp
    from sklearn.decomposition import TruncatedSVD

    b = sp.csr_matrix(atac.X).astype(np.float64)
    b.data[:] = 1.0
    tf = sp.diags(1.0 / np.maximum(b.sum(axis=1).A1, 1.0)) @ b
    idf = np.log1p(b.shape[0] / np.maximum(b.sum(axis=0).A1, 1.0))
    lsi = TruncatedSVD(width + 1, random_state=seed).fit_transform(tf @ sp.diags(idf))[:, 1:]
    return lsi / np.maximum(lsi.std(axis=0), 1e-8)


def train_embeddings(
    mdata,
    model: str,
    width: int,
    epochs: int,
    seed: int,
    atac_latent: int,
    batch_size: int = 128,
    shared_latent: int = 0,
    atac_weight: float | None = None,
) -> dict[str, np.ndarray]:
    import scvi

    from rvi import AmbientRegularizedSCVI, RegularizedMultimodalVI
    from rvi.metrics import pca_baseline

    scvi.settings.seed = seed
    fit = {"max_epochs": epochs, "batch_size": batch_size, "enable_progress_bar": False}
    if model == "rna_pca":
        return {model: pca_baseline(mdata["rna"], n_comps=width, random_state=seed)}
    if model == "atac_lsi":
        return {model: atac_lsi(mdata["atac"], width, seed)}
    if model == "scvi":
        rna = mdata["rna"].copy()
        scvi.model.SCVI.setup_anndata(rna, batch_key="library")
        m = scvi.model.SCVI(rna, n_latent=width)
        m.train(**fit)
        return {model: m.get_latent_representation()}
    if model == "multivi":
        mm = mdata.copy()
        scvi.model.MULTIVI.setup_mudata(mm, modalities={"rna_layer": "rna", "atac_layer": "atac"}, batch_key="library")
        m = scvi.model.MULTIVI(mm, n_latent=width)
        m.train(**fit)
        return {model: m.get_latent_representation()}
    if model == "rvi_rna":
        rna = mdata["rna"].copy()
        AmbientRegularizedSCVI.setup_anndata(rna, library_key="library")
        m = AmbientRegularizedSCVI(rna, n_hidden=128, n_latent=width)
        m.train(**fit)
        return {model: m.get_latent_representation()}
    if model == "rvi_multimodal":
        mm = mdata.copy()
        RegularizedMultimodalVI.setup_mudata(mm, modalities=["rna", "atac"], library_key="library")
        n_latent = {"rna": width - shared_latent - atac_latent, "atac": atac_latent}
        weights = None if atac_weight is None else {"atac": atac_weight}
        m = RegularizedMultimodalVI(
            mm, n_hidden=128, n_latent=n_latent, n_latent_shared=shared_latent, joint_latent_weights=weights
        )
        m.train(**fit)
        blocks = {f"{model}_{name}": z for name, z in m.get_modality_latents().items()}
        joint = {model: m.get_latent_representation()}
        if m.joint_latent_weights["atac"] != 1.0:
            joint[f"{model}_unweighted"] = m.get_latent_representation(weighted=False)
        return joint | blocks
    raise ValueError(f"unknown model {model!r}; choose from {MODELS}")


def append_rows(frame: pd.DataFrame, out: Path) -> None:
    from rvi.io.atomic import write_csv

    if out.exists():
        frame = pd.concat([pd.read_csv(out), frame], ignore_index=True)
    write_csv(frame, out, index=False)


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rvi.io.atomic import save_figure

    mean = table.groupby("embedding")[["Bio conservation", "Batch correction", "Total"]].agg(["mean", "std"])
    mean = mean.sort_values(("Total", "mean"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.45 * len(mean) + 1.5), sharey=True)
    for ax, col in zip(axes, ("Bio conservation", "Batch correction", "Total")):
        ax.barh(mean.index, mean[(col, "mean")], xerr=mean[(col, "std")].fillna(0), color="#4c72b0")
        ax.set_title(col)
        lo = float(np.nanmin(mean[(col, "mean")]))
        ax.set_xlim(max(0.0, lo - 0.05), None)
    n_seeds = table["seed"].nunique()
    fig.suptitle(f"SNARE-seq mouse cortex, scib-metrics unscaled, batch = library (mean +- sd of {n_seeds} seeds)")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / "snare_mouse_cortex_6libs.h5mu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--width", type=int, default=20, help="latent width of every deep model")
    parser.add_argument("--atac-latent", type=int, default=4, help="rvi multimodal: dims of the ATAC slice")
    parser.add_argument(
        "--shared-latent", type=int, default=0, help="rvi multimodal: dims of the shared product-of-experts block"
    )
    parser.add_argument("--atac-weight", type=float, default=None, help="rvi multimodal: joint_latent_weights['atac']")
    parser.add_argument("--n-peaks", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/multimodal_quality.csv"))
    args = parser.parse_args(argv)

    import torch

    from rvi.metrics import knn_label_accuracy, scib_benchmark

    torch.set_num_threads(args.threads)
    if not 0 < args.atac_latent < args.width - args.shared_latent:
        raise ValueError(
            f"--atac-latent must be in (0, --width - --shared-latent = {args.width - args.shared_latent}), "
            f"got {args.atac_latent}"
        )
    mdata = load(args.data, args.n_peaks)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.exists():
        args.out.unlink()
    settings = (
        f"epochs={args.epochs} batch_size={args.batch_size} width={args.width} "
        f"atac_latent={args.atac_latent} shared_latent={args.shared_latent} n_peaks={args.n_peaks} "
        f"atac_weight={args.atac_weight}"
    )
    for seed in args.seeds:
        embeddings, seconds = {}, {}
        for model in args.models:
            t0 = time.perf_counter()
            got = train_embeddings(
                mdata,
                model,
                args.width,
                args.epochs,
                seed,
                args.atac_latent,
                batch_size=args.batch_size,
                shared_latent=args.shared_latent,
                atac_weight=args.atac_weight,
            )
            for name in got:
                seconds[name] = time.perf_counter() - t0
            embeddings |= got
            print(f"seed {seed}: {model} in {time.perf_counter() - t0:.0f} s", flush=True)
        if {"rvi_rna", "atac_lsi"} <= set(embeddings):
            side = [embeddings[k] / embeddings[k].std(axis=0).mean() for k in ("rvi_rna", "atac_lsi")]
            embeddings["rvi_rna+atac_lsi"] = np.hstack(side)
        labels = mdata["rna"].obs["cell_type"]
        accuracy = {name: knn_label_accuracy(z, labels, seed=seed) for name, z in embeddings.items()}
        res = scib_benchmark(
            mdata["rna"],
            embeddings,
            label_key="cell_type",
            batch_key="library",
            n_jobs=args.threads,
            subsample=None,
            seed=seed,
        )
        res = res.reset_index()
        res.insert(0, "seed", seed)
        res["kNN label accuracy"] = res["embedding"].map(accuracy)
        res["train_seconds"] = res["embedding"].map(seconds)
        res["settings"] = settings
        append_rows(res, args.out)
        cols = ["embedding", "Bio conservation", "Batch correction", "Total", "kNN label accuracy"]
        print(res[cols].to_string(index=False), flush=True)
    table = pd.read_csv(args.out)
    summary = table.groupby("embedding")[["Bio conservation", "Batch correction", "Total", "kNN label accuracy"]].mean()
    print(f"\nmean of seeds {sorted(table['seed'].unique())} ({settings}):")
    print(summary.sort_values("Total", ascending=False).round(4).to_string())
    plot(table, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
