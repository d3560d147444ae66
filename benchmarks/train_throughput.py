"""Training throughput of the data paths: rvi resident / streamed / scvi-tools loader vs scvi-tools SCVI.

Every variant runs in its own subprocess (its own peak RSS and peak GPU memory) on identical simulated
counts (``make_counts``: lognormal library sizes, heavy-tailed feature abundances, multinomial counts, so
realistic sparsity), the same architecture (n_hidden, n_latent, 1 layer, NB, train_size=1.0, no
validation) and batch size. Epoch 1 is warm-up; the mean of the following epochs is one measurement.
Variants alternate within each of ``--repeats`` rounds; the summary is the median over rounds.

RNA variants: scvi (SCVI, default loader), scvi_sparse (SCVI, load_sparse_tensor=True), rvi_scvi
(AmbientRegularizedSCVI on scvi-tools' loader), rvi_resident, rvi_streamed, and on request rvi_resident_rp
(resident with ``reduced_precision=True``). Multimodal variants
(``--multimodal``): mm_rvi_resident (RegularizedMultimodalVI) and multivi (scvi-tools MULTIVI).

    # CPU, the issue's shape
    python benchmarks/train_throughput.py --cells 20000 --genes 2000 --n-hidden 1024 --n-latent 256 --repeats 3
    # GPU: every figure of the issue in one go (see benchmarks/gpu_check.sh)
    python benchmarks/train_throughput.py --preset gpu
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RNA_VARIANTS = ("scvi", "scvi_sparse", "rvi_scvi", "rvi_resident", "rvi_streamed")
# not in the default set: rvi resident with train(reduced_precision=True) (bf16 autocast, TF32 on CUDA)
EXTRA_VARIANTS = ("rvi_resident_rp",)
MM_VARIANTS = ("multivi", "mm_rvi_resident")


def make_counts(n_cells: int, n_features: int, nnz_per_cell: float, seed: int):
    """CSR float32 counts: per-feature abundances ~ Gamma(0.3), per-cell library ~ lognormal(sd 0.5); each
    cell's counts are a multinomial draw of its library over the abundances. The mean library is tuned so
    that a cell has about ``nnz_per_cell`` distinct non-zero features."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    p = rng.gamma(0.3, size=n_features)
    p /= p.sum()

    def expected_nnz(lib: float) -> float:
        return float((1.0 - np.exp(-lib * p)).sum())

    lo, hi = 1.0, 1e7
    target = min(nnz_per_cell, 0.95 * n_features)
    for _ in range(60):
        mid = np.sqrt(lo * hi)
        lo, hi = (mid, hi) if expected_nnz(mid) < target else (lo, mid)
    mean_lib = np.sqrt(lo * hi)
    libs = np.maximum(1, rng.lognormal(np.log(mean_lib) - 0.125, 0.5, size=n_cells).astype(np.int64))
    cdf = np.cumsum(p)
    parts, step = [], 4096
    for s in range(0, n_cells, step):
        lib = libs[s : s + step]
        draws = np.minimum(np.searchsorted(cdf, rng.random(int(lib.sum()))), n_features - 1)
        rows = np.repeat(np.arange(len(lib)), lib)
        m = sp.csr_matrix((np.ones(len(draws), np.float32), (rows, draws)), shape=(len(lib), n_features))
        m.sum_duplicates()
        parts.append(m)
    return sp.vstack(parts, format="csr")


def cached_counts(n_cells: int, n_features: int, nnz_per_cell: float, seed: int, cache_dir: str | None):
    """make_counts, saved once per shape under ``cache_dir`` so that every variant's subprocess (and a rerun)
    loads the identical matrix instead of drawing it again (tens of seconds at 60,000 x 20,000)."""
    import scipy.sparse as sp

    if not cache_dir:
        return make_counts(n_cells, n_features, nnz_per_cell, seed)
    path = Path(cache_dir) / f"counts_{n_cells}x{n_features}_nnz{nnz_per_cell:g}_seed{seed}.npz"
    if path.exists():
        return sp.load_npz(path).tocsr()
    X = make_counts(n_cells, n_features, nnz_per_cell, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    sp.save_npz(tmp, X, compressed=False)
    os.replace(tmp, path)
    return X


def _obs(n_cells: int, seed: int):
    import pandas as pd

    rng = np.random.default_rng(seed + 1)
    lib = rng.integers(0, 4, size=n_cells)
    return pd.DataFrame(
        {"library": pd.Categorical([f"lib{i}" for i in lib]), "dataset": pd.Categorical([f"ds{i // 2}" for i in lib])},
        index=[f"c{i}" for i in range(n_cells)],
    )


def _rna(args):
    import anndata as ad
    import scipy.sparse as sp

    if args.tile and args.tile < args.cells:
        # Atlas-size runs: one block of distinct cells repeated (drawing 1e9 counts one by one takes minutes).
        base = cached_counts(args.tile, args.genes, args.nnz_per_cell, args.seed, args.cache_dir)
        X = sp.vstack([base] * -(-args.cells // args.tile), format="csr")[: args.cells]
    else:
        X = cached_counts(args.cells, args.genes, args.nnz_per_cell, args.seed, args.cache_dir)
    return ad.AnnData(X, obs=_obs(args.cells, args.seed))


def _mudata(args):
    import anndata as ad
    from mudata import MuData

    obs = _obs(args.mm_cells, args.seed)
    rna = cached_counts(args.mm_cells, args.mm_genes, args.mm_gene_nnz, args.seed, args.cache_dir)
    atac = cached_counts(args.mm_cells, args.mm_peaks, args.mm_peak_nnz, args.seed + 7, args.cache_dir)
    rna, atac = ad.AnnData(rna, obs=obs.copy()), ad.AnnData(atac, obs=obs.copy())
    mdata = MuData({"rna": rna, "atac": atac})
    mdata.obs = obs.copy()
    return mdata


def _run_variant(args) -> dict:
    import lightning.pytorch as pl
    import scvi
    import torch

    torch.set_num_threads(args.threads)
    scvi.settings.seed = 0
    times: list[float] = []
    cpu_times: list[float] = []
    cuda = torch.cuda.is_available() and args.accelerator in ("auto", "gpu", "cuda")

    class EpochTimer(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            if cuda:
                torch.cuda.synchronize()
            self._t, self._c = time.perf_counter(), time.process_time()

        def on_train_epoch_end(self, trainer, module):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self._t)
            cpu_times.append(time.process_time() - self._c)

    v = args.variant
    extra, n_cells = {}, args.cells
    if v == "multivi":
        extra["early_stopping"] = False  # MULTIVI's train() turns it on by default; no validation set here
    if v in MM_VARIANTS:
        data, n_cells = _mudata(args), args.mm_cells
        if v == "multivi":
            scvi.model.MULTIVI.setup_mudata(
                data, batch_key="library", modalities={"rna_layer": "rna", "atac_layer": "atac"}
            )
            model = scvi.model.MULTIVI(
                data, n_genes=args.mm_genes, n_regions=args.mm_peaks, n_hidden=args.mm_hidden, n_latent=args.mm_latent
            )
        else:
            from rvi import RegularizedMultimodalVI

            RegularizedMultimodalVI.setup_mudata(data, library_key="library", dataset_key="dataset")
            model = RegularizedMultimodalVI(
                data,
                n_hidden={"rna": args.mm_hidden, "atac": args.mm_hidden // 2},
                n_latent={"rna": args.mm_latent, "atac": args.mm_latent // 2},
            )
            extra["data_path"] = "resident"
    else:
        data = _rna(args)
        common = {"n_hidden": args.n_hidden, "n_latent": args.n_latent, "n_layers": 1}
        if v.startswith("scvi"):
            scvi.model.SCVI.setup_anndata(data, batch_key="library")
            model = scvi.model.SCVI(data, gene_likelihood="nb", **common)
            extra["load_sparse_tensor"] = v == "scvi_sparse"
        else:
            from rvi import AmbientRegularizedSCVI

            AmbientRegularizedSCVI.setup_anndata(data, library_key="library", dataset_key="dataset")
            model = AmbientRegularizedSCVI(data, **common)
            paths = {"rvi_scvi": "scvi", "rvi_resident": "resident", "rvi_streamed": "streamed"}
            extra["data_path"] = paths.get(v, "resident")
            if v == "rvi_resident_rp":
                extra["reduced_precision"] = True
    nnz = [int(data.X.nnz)] if v not in MM_VARIANTS else [int(data.mod[m].X.nnz) for m in ("rna", "atac")]
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model.train(
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        train_size=1.0,
        enable_progress_bar=False,
        callbacks=[EpochTimer()],
        accelerator=args.accelerator,
        devices=1,
        **extra,
    )
    timed = times[1:] if len(times) > 1 else times
    epoch_s = float(np.mean(timed))
    out = {
        "variant": v,
        "epoch_s": epoch_s,
        "cells_per_s": n_cells / epoch_s,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1024**3 if cuda else float("nan"),
        "epochs_timed": len(timed),
        # CPU seconds of the process per timed epoch: on a shared machine with --threads 1 this is the work
        # done, independent of how much of a core the scheduler gave the run.
        "cpu_s_per_epoch": float(np.mean(cpu_times[1:] if len(cpu_times) > 1 else cpu_times)),
        "nnz_per_cell": [n / n_cells for n in nnz],
    }
    if hasattr(model, "data_path_"):
        out["data_path"] = model.data_path_
        est = model.trainer.datamodule.memory_estimate
        out["memory_estimate"] = est.as_dict() if est is not None else None
    return out


def _child(argv_base: list[str], variant: str, timeout: float) -> dict:
    cmd = [sys.executable, __file__, *argv_base, "--variant", variant]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, timeout=timeout)
        if proc.returncode != 0:
            err.seek(0)
            tail = err.read()[-3000:]
            return {"variant": variant, "error": f"exit {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


PRESETS = {
    # The GPU figures: 60k x 20k h1024 z256 b1024 (all RNA variants), bone-marrow multimodal shape.
    "gpu": {
        "cells": 60000,
        "genes": 20000,
        "nnz_per_cell": 1350,
        "epochs": 2,
        "repeats": 1,
        "accelerator": "gpu",
        "multimodal": True,
        "mm_cells": 35000,
        "mm_genes": 13000,
        "mm_gene_nnz": 1200,
        "mm_peaks": 116000,
        "mm_peak_nnz": 4400,
    },
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), help="override the shape flags with a named preset")
    p.add_argument("--cells", type=int, default=20000)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--nnz-per-cell", type=float, default=900.0)
    p.add_argument("--n-hidden", type=int, default=1024)
    p.add_argument("--n-latent", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=3, help="epoch 1 is warm-up")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--variants", default=",".join(RNA_VARIANTS), help="comma-separated RNA variants to run")
    p.add_argument("--multimodal", action="store_true", help="also run RegularizedMultimodalVI vs MULTIVI")
    p.add_argument("--mm-cells", type=int, default=5000)
    p.add_argument("--mm-genes", type=int, default=2000)
    p.add_argument("--mm-gene-nnz", type=float, default=900.0)
    p.add_argument("--mm-peaks", type=int, default=10000)
    p.add_argument("--mm-peak-nnz", type=float, default=1500.0)
    p.add_argument("--mm-hidden", type=int, default=512)
    p.add_argument("--mm-latent", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tile", type=int, default=0, help="simulate this many distinct cells and repeat them")
    p.add_argument("--extrapolate-cells", type=int, default=416000, help="print 100-epoch time at this size")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per variant run")
    p.add_argument("--out", default="benchmarks/out/train_throughput.json")
    p.add_argument("--cache-dir", default="", help="keep simulated matrices here and reuse them (all variants)")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.preset:
        for k, val in PRESETS[args.preset].items():
            setattr(args, k, val)

    if args.variant:
        print(json.dumps(_run_variant(args)))
        return
    base = [a for a in (argv if argv is not None else sys.argv[1:]) if a]
    if args.preset:
        base = [
            "--" + k.replace("_", "-") + ("" if v is True else f"={v}")
            for k, v in vars(args).items()
            if k not in ("variant", "preset", "out", "variants") and v not in (None, False)
        ]
    variants = [v for v in args.variants.split(",") if v]
    if args.multimodal:
        variants += list(MM_VARIANTS)
    if args.cache_dir:
        # Draw the matrices once, untimed, before the variants' subprocesses load them.
        if any(v not in MM_VARIANTS for v in variants):
            cached_counts(args.tile or args.cells, args.genes, args.nnz_per_cell, args.seed, args.cache_dir)
        if args.multimodal:
            cached_counts(args.mm_cells, args.mm_genes, args.mm_gene_nnz, args.seed, args.cache_dir)
            cached_counts(args.mm_cells, args.mm_peaks, args.mm_peak_nnz, args.seed + 7, args.cache_dir)
    results = []
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for r in range(args.repeats):
        order = variants if r % 2 == 0 else variants[::-1]  # alternate so contention hits every variant
        for variant in order:
            res = _child(base, variant, args.timeout)
            res["round"] = r
            results.append(res)
            msg = res.get("error", "")[-300:] or f"{res['epoch_s']:.2f} s/epoch, {res['cells_per_s']:.0f} cells/s"
            print(f"  round {r + 1} {variant}: {msg}", file=sys.stderr, flush=True)
            tmp = out_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({"args": vars(args), "runs": results}, indent=2))
            os.replace(tmp, out_path)  # complete JSON after every run
    summary = {}
    for v in variants:
        ok = [r for r in results if r["variant"] == v and "error" not in r]
        if ok:
            summary[v] = {
                k: float(np.median([r[k] for r in ok]))
                for k in ("epoch_s", "cells_per_s", "peak_rss_gb", "peak_gpu_gb")
            }
    ratios = {}
    for v in ("rvi_resident", "rvi_resident_rp", "rvi_streamed", "rvi_scvi"):
        for ref in ("scvi", "scvi_sparse"):
            if v in summary and ref in summary:
                ratios[f"{v}/{ref}"] = summary[v]["cells_per_s"] / summary[ref]["cells_per_s"]
    if "mm_rvi_resident" in summary and "multivi" in summary:
        ratios["mm_rvi_resident/multivi"] = (
            summary["mm_rvi_resident"]["cells_per_s"] / summary["multivi"]["cells_per_s"]
        )
    # Per-round ratios (same round = same contention), their median is the robust figure on a loaded machine.
    paired = {}
    for key in ratios:
        a, b = key.split("/")
        vals = []
        for r in range(args.repeats):
            ra = [x for x in results if x["variant"] == a and x["round"] == r and "error" not in x]
            rb = [x for x in results if x["variant"] == b and x["round"] == r and "error" not in x]
            if ra and rb:
                vals.append(ra[0]["cells_per_s"] / rb[0]["cells_per_s"])
        paired[key] = float(np.median(vals)) if vals else float("nan")
    est = next((r.get("memory_estimate") for r in results if r.get("memory_estimate")), None)
    tmp = out_path.with_suffix(".json.tmp")
    tmp.write_text(
        json.dumps(
            {
                "args": vars(args),
                "runs": results,
                "summary": summary,
                "ratios": ratios,
                "paired_ratio_medians": paired,
                "memory_estimate": est,
            },
            indent=2,
        )
    )
    os.replace(tmp, out_path)
    shape = f"{args.cells} cells x {args.genes} genes (~{args.nnz_per_cell:.0f} nnz/cell), n_hidden={args.n_hidden}, "
    shape += (
        f"n_latent={args.n_latent}, batch {args.batch_size}, {args.threads} threads, accelerator={args.accelerator}"
    )
    print(f"\n{shape}; median over {args.repeats} round(s) of the mean of epochs 2..{args.epochs}")
    if args.multimodal:
        print(
            f"multimodal: {args.mm_cells} cells, {args.mm_genes} genes (~{args.mm_gene_nnz:.0f} nnz/cell) + "
            f"{args.mm_peaks} peaks (~{args.mm_peak_nnz:.0f}), n_hidden {args.mm_hidden}, n_latent {args.mm_latent}"
        )
    print(f"{'variant':<18}{'s/epoch':>10}{'cells/s':>12}{'peak RSS GB':>13}{'peak GPU GB':>13}")
    for v, s in summary.items():
        print(
            f"{v:<18}{s['epoch_s']:>10.2f}{s['cells_per_s']:>12.0f}{s['peak_rss_gb']:>13.2f}{s['peak_gpu_gb']:>13.2f}"
        )
    for k, val in ratios.items():
        print(f"ratio {k}: {val:.2f}x (median of per-round ratios {paired[k]:.2f}x)")
    if "rvi_resident" in summary:
        minutes = 100 * args.extrapolate_cells / summary["rvi_resident"]["cells_per_s"] / 60
        print(f"extrapolated rvi_resident, {args.extrapolate_cells} cells x 100 epochs: {minutes:.1f} min")
    if est:
        print("memory model (bytes): " + ", ".join(f"{k}={v:.3g}" for k, v in est.items()))


if __name__ == "__main__":
    main()
