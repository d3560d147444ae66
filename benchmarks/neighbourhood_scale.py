"""Label-free neighbourhood metrics at atlas scale: wall time and peak RSS on a simulated graph.

Simulates ``--cells`` cells (default 400,000) of ``--types`` cell types in ``--libraries`` libraries
spread over ``--datasets`` datasets, Poisson counts on ``--genes`` genes of which ``--markers`` (default
500) are type-specific markers, and a kNN graph with ``--k`` (default 50) neighbours per cell: mostly
cells of the same type, a share of them from other libraries. The graph is built directly (an exact
kNN search of 400,000 cells is not what this measures; the workflow reuses each model's saved graph)
and turned into UMAP connectivities as the workflow does. Then it times
``rvi.metrics.neighbourhood_correlation`` (per-cell table, H1-H14, degree-matched random baseline,
failure modes) with the markers given, and prints one JSON line: stage timings and peak RSS.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/neighbourhood_scale.py            # the issue's size
    .venv/bin/python benchmarks/neighbourhood_scale.py --cells 20000                # a quick slice

Budget (issue 15): under 10 minutes on 2 cores and under 8 GB peak RSS at the default size. ``metrics_cpu_s``
is the CPU time of the metric step (the wall clock on a loaded machine also measures the other jobs).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def simulate(cells: int, genes: int, markers: int, types: int, libraries: int, datasets: int, k: int, seed: int):
    """(AnnData of counts with library/dataset in obs, kNN indices incl. self, distances)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    cell_type = rng.integers(0, types, size=cells)
    library = rng.integers(0, libraries, size=cells)
    dataset = library % datasets
    # Per-type marker means: each type expresses its own block of markers highly, the rest at a low level.
    per_type = max(markers // types, 1)
    means = np.full((types, genes), 0.05, dtype=np.float32)
    for t in range(types):
        means[t, (t * per_type) % markers : (t * per_type) % markers + per_type] = 2.0
    means[:, markers:] = 0.2
    depth = rng.lognormal(0.0, 0.3, size=cells).astype(np.float32)
    # Sample counts in slices so the dense rate matrix never exists for all cells at once.
    blocks = []
    for start in range(0, cells, 20_000):
        stop = min(cells, start + 20_000)
        lam = means[cell_type[start:stop]] * depth[start:stop, None]
        blocks.append(sp.csr_matrix(rng.poisson(lam).astype(np.float32)))
    X = sp.vstack(blocks).tocsr()
    obs = pd.DataFrame(
        {"library": pd.Categorical(library.astype(str)), "dataset": pd.Categorical(dataset.astype(str))},
        index=pd.Index([f"c{i}" for i in range(cells)]),
    )
    var = pd.DataFrame(index=[f"g{i}" for i in range(genes)])
    adata = ad.AnnData(X=X, obs=obs, var=var)

    # Neighbours: 90% drawn from the cell's own type (any library), 10% from anywhere.
    order = np.argsort(cell_type, kind="stable")
    sizes = np.bincount(cell_type, minlength=types)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    same = rng.random((cells, k)) < 0.9
    offsets = (rng.random((cells, k)) * sizes[cell_type][:, None]).astype(np.int64)
    same_type = order[starts[cell_type][:, None] + offsets]
    anywhere = rng.integers(0, cells, size=(cells, k))
    neigh = np.where(same, same_type, anywhere)
    neigh[neigh == np.arange(cells)[:, None]] = (neigh[neigh == np.arange(cells)[:, None]] + 1) % cells
    idx = np.concatenate([np.arange(cells)[:, None], neigh], axis=1)
    dist = np.sort(rng.random((cells, k)).astype(np.float32) + np.where(same, 0.0, 1.0).astype(np.float32), axis=1)
    dist = np.concatenate([np.zeros((cells, 1), dtype=np.float32), dist], axis=1)
    return adata, idx, dist


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=400_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--markers", type=int, default=500)
    parser.add_argument("--types", type=int, default=40)
    parser.add_argument("--libraries", type=int, default=40)
    parser.add_argument("--datasets", type=int, default=4)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--no-random-baseline", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from rvi.metrics import neighbourhood
    from rvi.metrics.scib import umap_connectivities

    timings = {}
    t0 = time.perf_counter()
    adata, idx, dist = simulate(
        args.cells, args.genes, args.markers, args.types, args.libraries, args.datasets, args.k, args.seed
    )
    timings["simulate_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    conn = umap_connectivities(idx, dist)
    del idx, dist
    timings["connectivities_s"] = time.perf_counter() - t0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2

    t0, c0 = time.perf_counter(), time.process_time()
    result = neighbourhood.neighbourhood_correlation(
        adata,
        connectivities=conn,
        library_key="library",
        dataset_key="dataset",
        marker_genes=list(adata.var_names[: args.markers]),
        random_baseline=not args.no_random_baseline,
        seed=args.seed,
    )
    timings["metrics_s"] = time.perf_counter() - t0
    # CPU seconds of this process: on a shared machine the wall clock measures the scheduler as well.
    timings["metrics_cpu_s"] = time.process_time() - c0
    report = {
        "cells": args.cells,
        "k": args.k,
        "markers": args.markers,
        "edges": int(conn.nnz),
        **{key: round(v, 1) for key, v in timings.items()},
        "peak_rss_gb_before_metrics": round(rss_before, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "headline": {key: round(float(v), 3) for key, v in result.headline.items()},
        "random_baseline_H5": None if result.baseline is None else round(float(result.baseline["H5"]), 3),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
