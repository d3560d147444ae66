"""Modality attribution: exact forward-mode JVPs vs central finite differences, same model, same cells.

Builds an untrained RegularizedMultimodalVI of the requested shape on simulated counts (attribution
cost does not depend on the weights), then computes the per-cell Jacobian summaries both ways and
reports wall time, peak RSS / GPU memory, and the relative error of finite differences against the
exact result. Defaults are the issue's shape (10,000 cells, total latent 192, 20,000 + 50,000
features); on a CPU use --cells to run a slice (the cost is linear in cells).

    .venv/bin/python benchmarks/attribution.py --cells 10000 --accelerator gpu
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch


def _mudata(cells: int, genes: int, regions: int, seed: int = 0):
    import anndata as ad
    import mudata as md
    import pandas as pd
    import scipy.sparse as sp

    md.set_options(pull_on_update=False)
    rng = np.random.default_rng(seed)
    names = [f"c{i}" for i in range(cells)]
    obs = pd.DataFrame({"library": rng.choice(["l1", "l2", "l3"], cells)}, index=names)
    # ~1,300 RNA and ~4,000 ATAC non-zeros per cell, as in 10x Multiome data
    rna = sp.random(cells, genes, density=1300 / genes, format="csr", random_state=rng, dtype=np.float32)
    rna.data = rng.poisson(2.0, rna.nnz).astype(np.float32) + 1
    atac = sp.random(cells, regions, density=4000 / regions, format="csr", random_state=rng, dtype=np.float32)
    atac.data[:] = 1
    mods = {
        "rna": ad.AnnData(rna, obs=obs.copy(), var=pd.DataFrame(index=[f"g{j}" for j in range(genes)])),
        "atac": ad.AnnData(atac, obs=obs.copy(), var=pd.DataFrame(index=[f"r{j}" for j in range(regions)])),
    }
    mdata = md.MuData(mods)
    mdata.obs = obs
    return mdata


def finite_difference_summaries(module, tensors, step: float = 1e-3) -> dict[str, torch.Tensor]:
    """The same per-cell summaries as rvi's JVP attribution, from central differences (2 decodes per dim)."""
    inf = module.inference(**module._get_inference_input(tensors), sample=False)
    z = inf["z"]
    cat, cont = tensors.get("rvi_categoricals"), tensors.get("rvi_continuous")
    out = {}
    for m in module.modality_names:
        mean_abs, sq = torch.empty_like(z), torch.empty_like(z)
        for k in range(z.shape[1]):
            e = torch.zeros_like(z)
            e[:, k] = step
            col = (module.decode_rate(z + e, cat, cont, m)[0] - module.decode_rate(z - e, cat, cont, m)[0]) / (2 * step)
            mean_abs[:, k], sq[:, k] = col.abs().mean(-1), (col**2).sum(-1)
        out[f"{m}_mean_abs"], out[f"{m}_sq"] = mean_abs, sq
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=10000)
    p.add_argument("--genes", type=int, default=20000)
    p.add_argument("--regions", type=int, default=50000)
    p.add_argument("--latent-rna", type=int, default=128)
    p.add_argument("--latent-atac", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dims-per-pass", type=int, default=8)
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--out", default="benchmarks/out/attribution.json")
    args = p.parse_args(argv)

    from rvi import RegularizedMultimodalVI
    from rvi.models._attribution import attribution_batch

    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    mdata = _mudata(args.cells, args.genes, args.regions)
    RegularizedMultimodalVI.setup_mudata(mdata, modalities=["rna", "atac"], library_key="library")
    model = RegularizedMultimodalVI(
        mdata, n_hidden={"rna": 512, "atac": 256}, n_latent={"rna": args.latent_rna, "atac": args.latent_atac}
    )
    model.module.to(device).eval()
    model.is_trained_ = True
    results, exact, approx = {}, [], []
    for method in ("jvp", "finite_difference"):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for tensors in model._batches(None, None, args.batch_size):
            with torch.no_grad():
                if method == "jvp":
                    res = attribution_batch(model.module, tensors, args.dims_per_pass)
                    exact.append({k: v.cpu() for k, v in res.items() if k != "z"})
                else:
                    res = finite_difference_summaries(model.module, tensors)
                    approx.append({k: v.cpu() for k, v in res.items()})
        if device.type == "cuda":
            torch.cuda.synchronize()
        results[method] = {
            "seconds": time.perf_counter() - t0,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
            "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1024**3 if device.type == "cuda" else None,
        }
    rel = {}
    for key in exact[0]:
        e = torch.cat([b[key] for b in exact])
        a = torch.cat([b[key] for b in approx])
        rel[key] = float((a - e).abs().max() / e.abs().max())
    summary = {
        "shape": vars(args),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "results": results,
        "speedup_jvp_over_fd": results["finite_difference"]["seconds"] / results["jvp"]["seconds"],
        "fd_max_relative_error": rel,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
