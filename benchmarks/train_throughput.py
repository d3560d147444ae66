"""Training throughput: rvi.AmbientRegularizedSCVI vs scvi-tools SCVI, side by side on identical data.

Each variant runs in its own subprocess (so peak RSS is its own), on the same simulated counts
(rvi.simulate.simulate_rna, lognormal library sizes, NB noise) and the same architecture
(n_hidden, n_latent, 1 layer, batch size, NB likelihood, train_size=1.0, no validation). Epoch 1 is
warm-up; the mean of the following epochs is reported. Variants alternate over --repeats rounds.

    .venv/bin/python benchmarks/train_throughput.py --cells 20000 --genes 2000 --n-hidden 1024 --n-latent 256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _simulate(cells: int, genes: int, seed: int):
    from rvi.simulate import simulate_rna

    adata = simulate_rna(n_cells=cells, n_genes=genes, seed=seed, mean_library_size=4000, doublet_rate=0.0)
    del adata.uns["simulation"]
    return adata


def _run_variant(args) -> dict:
    import lightning.pytorch as pl
    import scvi
    import torch

    torch.set_num_threads(args.threads)
    scvi.settings.seed = 0
    adata = _simulate(args.cells, args.genes, args.seed)
    times: list[float] = []

    class EpochTimer(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            self._t = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self._t)

    common = {"n_hidden": args.n_hidden, "n_latent": args.n_latent, "n_layers": 1}
    if args.variant == "scvi":
        scvi.model.SCVI.setup_anndata(adata, batch_key="library")
        model = scvi.model.SCVI(adata, gene_likelihood="nb", **common)
    else:
        from rvi import AmbientRegularizedSCVI

        AmbientRegularizedSCVI.setup_anndata(adata, library_key="library", dataset_key="dataset")
        model = AmbientRegularizedSCVI(adata, **common)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    model.train(
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        train_size=1.0,
        enable_progress_bar=False,
        callbacks=[EpochTimer()],
        accelerator=args.accelerator,
        devices=1,
        load_sparse_tensor=args.load_sparse_tensor,
    )
    timed = times[1:] if len(times) > 1 else times
    epoch_s = float(np.mean(timed))
    return {
        "variant": args.variant,
        "epoch_s": epoch_s,
        "cells_per_s": args.cells / epoch_s,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else float("nan"),
        "epochs_timed": len(timed),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=20000)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--n-hidden", type=int, default=1024)
    p.add_argument("--n-latent", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=3, help="epoch 1 is warm-up")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--load-sparse-tensor", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/out/train_throughput.json")
    p.add_argument("--variant", choices=["scvi", "rvi"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.variant:
        print(json.dumps(_run_variant(args)))
        return
    results = []
    child_args = [a for a in (argv if argv is not None else sys.argv[1:])]
    for _ in range(args.repeats):
        for variant in ("scvi", "rvi"):
            cmd = [sys.executable, __file__, *child_args, "--variant", variant]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {variant}: {results[-1]['epoch_s']:.2f} s/epoch", file=sys.stderr)
    by = {v: [r for r in results if r["variant"] == v] for v in ("scvi", "rvi")}
    summary = {
        v: {k: float(np.mean([r[k] for r in rs])) for k in ("epoch_s", "cells_per_s", "peak_rss_gb")}
        for v, rs in by.items()
    }
    ratio = summary["rvi"]["cells_per_s"] / summary["scvi"]["cells_per_s"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"args": vars(args), "runs": results, "summary": summary, "ratio": ratio}, indent=2)
    )
    shape = f"{args.cells} cells x {args.genes} genes, n_hidden={args.n_hidden}, n_latent={args.n_latent}"
    shape += f", batch {args.batch_size}"
    print(f"\n{shape}, {args.threads} threads, mean of epochs 2..{args.epochs} over {args.repeats} round(s)")
    print(f"{'model':<26}{'s/epoch':>10}{'cells/s':>12}{'peak RSS GB':>14}")
    for v, name in (("scvi", "scvi-tools SCVI (nb)"), ("rvi", "AmbientRegularizedSCVI")):
        s = summary[v]
        print(f"{name:<26}{s['epoch_s']:>10.2f}{s['cells_per_s']:>12.0f}{s['peak_rss_gb']:>14.2f}")
    print(f"ratio rvi / scvi (cells/s): {ratio:.2f}x")


if __name__ == "__main__":
    main()
