"""Score every embedding of a study side by side: label-free neighbourhood metrics (H1-H14, composites,
per-cell failure modes) on all cells, scib-metrics on a label x library stratified subsample of the
labelled cells, and one composite table (``docs/metrics_spec.md``)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rvi.evaluation.embeddings import validate_matrix
from rvi.metrics.neighbourhood import COMPOSITE_KEYS, neighbourhood_benchmark
from rvi.metrics.scib import AGGREGATE_COLUMNS

HEADLINE_COLUMNS = tuple(f"H{i}" for i in range(1, 15))
#: Metric families of the summary: column of the composite table -> (family name, higher is better).
FAMILIES = {
    "bio": ("label-free bio conservation (H1)", True),
    "batch": ("label-free batch correction", True),
    "total": ("label-free total", True),
    "scib_bio": ("scib bio conservation", True),
    "scib_batch": ("scib batch correction", True),
    "scib_total": ("scib total", True),
}
RANDOM_ROW = "random_knn"


@dataclass
class Evaluation:
    """Tables of one study's evaluation; ``notes`` are the messages a reader must see (skipped parts)."""

    neighbourhood: pd.DataFrame
    composite: pd.DataFrame
    scib: pd.DataFrame | None
    per_cell: dict[str, pd.DataFrame]
    marker_genes: list[str]
    notes: list[str] = field(default_factory=list)
    scib_label: str | None = None


def scib_label_level(obs: pd.DataFrame, levels: Sequence[str], library_key: str) -> str | None:
    """Finest label level with at least two labels over at least two libraries among its labelled cells."""
    for level in reversed(list(levels)):
        if level not in obs:
            continue
        lab = obs.loc[obs[level].notna(), [level, library_key]]
        if lab[level].nunique() >= 2 and lab[library_key].nunique() >= 2:
            return level
    return None


def score_embeddings(
    adata,
    embeddings: Mapping[str, np.ndarray],
    *,
    library_key: str,
    dataset_key: str | None = None,
    technical_covariate_keys: Sequence[str] | None = None,
    label_levels: Sequence[str] = (),
    scib_label: str | None = None,
    scib_cells: int | None = 50_000,
    run_scib: bool = True,
    n_neighbors: int = 15,
    marker_genes: Sequence[str] | None = None,
    seed: int = 0,
    threads: int = 1,
) -> Evaluation:
    """All metrics of all embeddings (rows aligned with ``adata``: raw counts in X, covariates in obs).

    Label-free metrics always run. scib-metrics needs a label column: ``scib_label``, or else the finest
    of ``label_levels`` labelled over two libraries; without one it is skipped with a note. Labels are
    partial (NaN = unlabelled): scib runs on the labelled cells only.
    """
    if not embeddings:
        raise ValueError("no embeddings to evaluate")
    for name, emb in embeddings.items():
        validate_matrix(emb, name, adata.n_obs)
    notes: list[str] = []
    levels = [lv for lv in label_levels if lv in adata.obs and adata.obs[lv].notna().any()]
    if not levels:
        notes.append(
            "no labels in this study: label-free neighbourhood metrics only (markers from Leiden clusters), "
            "scib-metrics skipped"
        )
    tech = [k for k in (technical_covariate_keys or []) if k]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table, results = neighbourhood_benchmark(
            adata,
            embeddings,
            library_key=library_key,
            dataset_key=dataset_key,
            technical_covariate_keys=tech or None,
            label_keys=levels or None,
            marker_genes=marker_genes,
            n_neighbors=n_neighbors,
            seed=seed,
            n_jobs=threads,
        )
    for w in caught:
        if issubclass(w.category, UserWarning):
            notes.append(str(w.message))
            warnings.warn(w.message, stacklevel=2)
    table = table[[*HEADLINE_COLUMNS, *COMPOSITE_KEYS]]
    if dataset_key is None:
        notes.append("no dataset key: H7-H10, H12 and the dataset integration composite are NaN")
    if not tech:
        notes.append("no technical covariate keys: H14 is NaN")

    scib = None
    label = scib_label or (scib_label_level(adata.obs, levels, library_key) if levels else None)
    if run_scib and levels:
        if label is None:
            notes.append("scib-metrics skipped: no label level has two labels over two libraries")
        else:
            scib = _run_scib(adata, embeddings, label, library_key, scib_cells, seed, threads, notes)
    elif not run_scib:
        notes.append("scib-metrics disabled in the config (evaluate.scib.enabled: false)")

    per_cell = {}
    for name, r in results.items():
        frame = r.per_cell.join(r.failure_modes)
        frame.index = frame.index.astype(str)
        per_cell[name] = frame
    return Evaluation(
        neighbourhood=table,
        composite=composite_table(table, scib),
        scib=scib,
        per_cell=per_cell,
        marker_genes=list(table.attrs.get("marker_genes", [])),
        notes=notes,
        scib_label=label if scib is not None else None,
    )


def _run_scib(adata, embeddings, label, library_key, scib_cells, seed, threads, notes) -> pd.DataFrame | None:
    from rvi.metrics.scib import scib_benchmark

    labelled = adata.obs[label].notna().to_numpy()
    sub = adata[labelled]
    try:
        scib = scib_benchmark(
            sub,
            {name: np.asarray(emb)[labelled] for name, emb in embeddings.items()},
            label_key=label,
            batch_key=library_key,
            library_key=library_key,
            subsample=scib_cells,
            n_jobs=threads,
            seed=seed,
        )
    except ValueError as exc:  # too few labelled cells / labels / batches: keep the label-free numbers
        notes.append(f"scib-metrics skipped on {int(labelled.sum())} cells labelled at {label!r}: {exc}")
        return None
    scib.insert(0, "label_level", label)
    n_sub = int(scib["n_cells"].iloc[0])
    notes.append(
        f"scib-metrics on {n_sub} of {int(labelled.sum())} cells labelled at {label!r} "
        f"(stratified by {label} x {library_key}; batch = {library_key})"
    )
    return scib


def composite_table(neighbourhood: pd.DataFrame, scib: pd.DataFrame | None) -> pd.DataFrame:
    """One row per embedding: the label-free composites and the scib aggregates (NaN without scib)."""
    rows = neighbourhood.drop(index=[RANDOM_ROW], errors="ignore")
    out = rows[list(COMPOSITE_KEYS)].copy()
    for col, name in zip(AGGREGATE_COLUMNS, ("scib_bio", "scib_batch", "scib_total")):
        out[name] = scib[col].reindex(out.index) if scib is not None else np.nan
    out.index.name = "embedding"
    return out


def best_per_family(composite: pd.DataFrame) -> pd.DataFrame:
    """The best embedding of each metric family with a value (ties: first in table order)."""
    rows = []
    for col, (family, higher) in FAMILIES.items():
        values = composite[col].astype(float) if col in composite else pd.Series(dtype=float)
        values = values.dropna()
        if values.empty:
            continue
        best = values.idxmax() if higher else values.idxmin()
        rows.append({"family": family, "metric": col, "best": best, "value": float(values[best])})
    return pd.DataFrame(rows, columns=["family", "metric", "best", "value"])
