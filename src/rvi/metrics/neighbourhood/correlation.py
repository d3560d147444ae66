"""Neighbourhood marker correlation of one embedding (:func:`neighbourhood_correlation`) and of several side by
side with one shared marker set (:func:`neighbourhood_benchmark`)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..scib import _get_counts
from .cell_stats import _per_cell_table, _target_sizes, marker_profiles
from .failure import failure_modes
from .graph import (
    _drop_diagonal,
    knn_connectivities,
    mask_names,
    neighbour_masks,
    random_knn_graph,
    validate_dataset_key,
)
from .headline import headline_metrics, integration_failure_rate
from .markers import select_marker_genes


@dataclass
class NeighbourhoodResult:
    """Per-cell table, headline metrics (H1-H12, H14 and composites) and the random-graph baseline."""

    per_cell: pd.DataFrame
    headline: pd.Series
    baseline: pd.Series | None = None
    baseline_per_cell: pd.DataFrame | None = None
    marker_genes: list[str] = field(default_factory=list)
    masks: list[str] = field(default_factory=list)
    failure_modes: pd.DataFrame | None = None
    missing_markers: list[str] = field(default_factory=list)


def _marker_set(
    adata, marker_genes, label_keys, layer, dataset_key, gene_symbols_key, seed
) -> tuple[list[str], list[str]]:
    """The marker genes to score (``marker_genes`` without repeats, else :func:`select_marker_genes`'s) and
    those absent from var_names, which are left out with a warning attributed to the caller's caller."""
    if marker_genes is None:
        marker_genes = select_marker_genes(
            adata,
            label_keys=label_keys,
            layer=layer,
            dataset_key=dataset_key,
            gene_symbols_key=gene_symbols_key,
            seed=seed,
        )
    markers = list(dict.fromkeys(marker_genes))
    present = set(adata.var_names)
    absent = [g for g in markers if g not in present]
    if absent:
        warnings.warn(
            f"{len(absent)} of {len(markers)} marker genes are not in var_names and are skipped: {absent[:10]}",
            stacklevel=3,
        )
    return [g for g in markers if g in present], absent


def neighbourhood_correlation(
    adata,
    embedding: np.ndarray | None = None,
    connectivities=None,
    *,
    library_key: str,
    dataset_key: str | None = None,
    technical_covariate_keys: Sequence[str] | None = None,
    label_keys: Sequence[str] | None = None,
    layer: str | None = None,
    marker_genes: Sequence[str] | None = None,
    n_neighbors: int = 15,
    log1p: bool = False,
    random_baseline: bool = True,
    gene_symbols_key: str | None = None,
    seed: int = 0,
    n_jobs: int = 1,
) -> NeighbourhoodResult:
    """Neighbourhood marker-gene correlation of one model's latent kNN graph.

    Give either ``embedding`` (a kNN connectivity graph with ``n_neighbors`` is built) or a precomputed
    ``connectivities`` matrix. Counts come from ``adata.X`` or ``layer``. ``marker_genes`` (var names)
    skips marker selection, e.g. to share one marker set across models (see :func:`neighbourhood_benchmark`).
    With only ``library_key`` all dataset and technical outputs are NaN.
    """
    if (embedding is None) == (connectivities is None):
        raise ValueError("give exactly one of embedding or connectivities")
    obs = adata.obs
    if library_key not in obs:
        raise KeyError(f"library key {library_key!r} not in adata.obs (columns: {list(obs.columns)})")
    if obs[library_key].isna().any():
        # The library is the finest technical unit every mask is built from: no sensible exclusion exists.
        raise ValueError(f"library key {library_key!r} has {int(obs[library_key].isna().sum())} cells without a value")
    library = obs[library_key].astype(str).to_numpy()
    dataset = validate_dataset_key(obs, library_key, dataset_key).to_numpy() if dataset_key else None
    tech_keys = list(technical_covariate_keys or [])
    for key in tech_keys:
        if key not in obs:
            raise KeyError(f"technical covariate {key!r} not in adata.obs")
        if obs[key].isna().any():
            warnings.warn(
                f"technical covariate {key!r}: {int(obs[key].isna().sum())} cells without a value are excluded "
                "from its within/between statistics",
                stacklevel=2,
            )
    technical = {k: obs[k].to_numpy() for k in tech_keys}

    if connectivities is None:
        C = knn_connectivities(np.asarray(embedding), n_neighbors=n_neighbors, n_jobs=n_jobs, seed=seed)
    else:
        C = _drop_diagonal(connectivities)
    if C.shape != (adata.n_obs, adata.n_obs):
        raise ValueError(f"connectivities shape {C.shape} does not match {adata.n_obs} cells")

    marker_genes, absent = _marker_set(adata, marker_genes, label_keys, layer, dataset_key, gene_symbols_key, seed)
    marker_idx = pd.Index(adata.var_names).get_indexer(marker_genes)
    if len(marker_genes) < 3:
        raise ValueError(f"need at least 3 marker genes present in the data, found {len(marker_genes)}")
    P = marker_profiles(_get_counts(adata, layer), marker_idx, log1p=log1p)
    targets = _target_sizes(library, dataset)

    def evaluate(graph: sp.csr_matrix) -> tuple[pd.DataFrame, pd.Series]:
        masks = neighbour_masks(graph, library, dataset, technical or None)
        pc = _per_cell_table(graph, P, masks, targets)
        if dataset is None:
            # Without datasets there is no cross-dataset level: report NaN rather than empty-mask zeros.
            for col in [c for c in pc.columns if c.endswith("_cross_dataset")]:
                pc[col] = np.nan
        pc.index = adata.obs_names
        return pc, headline_metrics(pc, has_dataset=dataset is not None, has_technical=bool(tech_keys))

    per_cell, headline = evaluate(C)
    baseline = baseline_pc = None
    if random_baseline:
        baseline_pc, baseline = evaluate(random_knn_graph(C, seed=seed))
    return NeighbourhoodResult(
        failure_modes=failure_modes(per_cell),
        per_cell=per_cell,
        headline=headline,
        baseline=baseline,
        baseline_per_cell=baseline_pc,
        marker_genes=marker_genes,
        masks=mask_names(tech_keys),
        missing_markers=absent,
    )


def neighbourhood_benchmark(
    adata,
    embeddings: Mapping[str, np.ndarray],
    *,
    library_key: str,
    dataset_key: str | None = None,
    technical_covariate_keys: Sequence[str] | None = None,
    label_keys: Sequence[str] | None = None,
    layer: str | None = None,
    n_neighbors: int = 15,
    random_baseline: bool = True,
    gene_symbols_key: str | None = None,
    marker_genes: Sequence[str] | None = None,
    connectivities: Mapping[str, sp.spmatrix] | None = None,
    seed: int = 0,
    n_jobs: int = 1,
) -> tuple[pd.DataFrame, dict[str, NeighbourhoodResult]]:
    """Run :func:`neighbourhood_correlation` for several embeddings with one shared marker set.

    Returns a table (one row per model: H1-H14 and composites; the random-graph baseline, degree-matched
    to the first model's graph, as row ``"random_knn"`` when requested) and the per-model results, whose
    ``failure_modes`` use the other models to detect under-integration. ``marker_genes`` replaces the
    marker selection (genes absent from var are reported and skipped); ``connectivities`` gives a
    precomputed graph for some of the embeddings (by name), e.g. the one a training stage saved.
    """
    markers, absent = _marker_set(adata, marker_genes, label_keys, layer, dataset_key, gene_symbols_key, seed)
    graphs = dict(connectivities or {})
    results = {}
    for i, (name, emb) in enumerate(embeddings.items()):
        results[name] = neighbourhood_correlation(
            adata,
            None if name in graphs else emb,
            connectivities=graphs.get(name),
            library_key=library_key,
            dataset_key=dataset_key,
            technical_covariate_keys=technical_covariate_keys,
            layer=layer,
            marker_genes=markers,
            n_neighbors=n_neighbors,
            random_baseline=random_baseline and i == 0,
            seed=seed,
            n_jobs=n_jobs,
        )
    for name, r in results.items():
        others = [o.per_cell for m, o in results.items() if m != name]
        r.failure_modes = failure_modes(r.per_cell, others)
    table = pd.DataFrame({name: r.headline for name, r in results.items()}).T
    h13 = integration_failure_rate({m: r.per_cell["corr_cross_dataset"].to_numpy() for m, r in results.items()})
    table.insert(table.columns.get_loc("H14"), "H13", h13)
    first = next(iter(results.values()))
    if first.baseline is not None:
        base = first.baseline.copy()
        base["H13"] = np.nan
        table.loc["random_knn"] = base[table.columns]
    table.index.name = "model"
    table.attrs["missing_markers"] = absent
    table.attrs["marker_genes"] = markers
    return table, results
