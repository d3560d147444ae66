"""Annotation and CRE selection stages on the RNA model's graph and the ATAC matrix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from rvi.io.atomic import save_figure, write_csv
from rvi.stages._util import read_obs
from rvi.stages.models import load_knn


def annotate(rna: str, cells: str, knn: str, annotation: str, purity: str, cfg: Mapping, threads: int = 1) -> None:
    """Broad Leiden + adaptive sub-clustering + hierarchical majority vote on the RNA model's kNN graph."""
    import anndata as ad

    from rvi import annotation as ann

    spec, levels = cfg["annotate"], list(cfg["labels"]["levels"])
    names, conn, _ = load_knn(knn)
    obs = read_obs(rna).reindex(names)
    graph = ad.AnnData(obs=obs[[c for c in levels if c in obs]].copy(), obsp={"connectivities": conn})
    if levels:
        hierarchy = label_hierarchy(cfg, obs[levels])
        labels, table = ann.annotate(
            graph,
            levels,
            hierarchy,
            resolution=spec["resolution"],
            subcluster=spec["subcluster"],
            sub_resolution=spec["sub_resolution"],
            min_cells_subcluster=spec["min_cells_subcluster"],
            min_subcluster_size=spec["min_subcluster_size"],
            min_modularity=spec["min_modularity"],
            min_fraction=spec["min_fraction"],
            min_labelled=spec["min_labelled"],
            balanced_vote=spec["vote"] == "balanced",
            random_state=spec["seed"],
        )
        for level in levels:
            labels[f"partial_{level}"] = obs[level].astype(object).to_numpy()
    else:  # no labels at all: clusters only (select_cres then contrasts clusters)
        broad = np.asarray(ann.broad_leiden(conn, resolution=spec["resolution"], random_state=spec["seed"]))
        labels = pd.DataFrame({"broad_cluster": broad, "cluster": broad}, index=names)
        table = labels.groupby("cluster").size().rename("n_cells").to_frame()
    labels.index = names
    labels.index.name = "obs_name"
    for col in ("library", "dataset"):
        if col in obs:
            labels[col] = obs[col].astype(str).to_numpy()
    table.index.name = "cluster"
    done = labels[levels[-1]].notna().mean() if levels else 1.0
    print(f"annotation: {labels['cluster'].nunique()} clusters; {done:.1%} of cells labelled at the finest level")
    write_csv(labels, annotation)
    write_csv(table, purity)


def annotation_groups(table: pd.DataFrame, levels: Sequence[str], level: str | None) -> tuple[pd.Series, str]:
    """The group of each cell for CRE contrasts: the annotation at ``level`` (default finest), else clusters."""
    if not levels:
        return table["cluster"].astype(str), "cluster"
    level = level or levels[-1]
    groups = table[level].astype(object)
    # Cells annotated only at a coarser level keep that label so they are not silently dropped.
    for coarser in reversed(levels[: levels.index(level)]):
        groups = groups.where(groups.notna(), table[coarser].astype(object))
    return groups, level


# --------------------------------------------------------------------------------------------------
# select_cres
# --------------------------------------------------------------------------------------------------


def select_cres(atac: str, annotation: str, cres: str, heatmap: str, cfg: Mapping, threads: int = 1) -> None:
    """Differential accessibility per annotation group vs its background; top N per group."""
    import anndata as ad

    from rvi import cre

    spec, levels = cfg["select_cres"], list(cfg["labels"]["levels"])
    labels = pd.read_csv(annotation, index_col=0)
    groups, level = annotation_groups(labels, levels, spec["level"])
    adata = ad.read_h5ad(atac)
    common = adata.obs_names.intersection(groups.dropna().index)
    adata = adata[common].copy()
    adata.obs["cre_group"] = groups.reindex(common).astype(str).to_numpy()
    table = cre.select_cres(
        adata,
        groupby="cre_group",
        backgrounds=spec["background"] or None,
        top_n=spec["top_n"],
        min_fdr=spec["min_fdr"],
        min_log2fc=spec["min_log2fc"],
        min_frac=spec["min_frac"],
        test=spec["test"],
        min_cells=spec["min_cells"],
    )
    if table.empty:
        raise ValueError(f"no CRE passes select_cres thresholds at level {level!r} (min_fdr={spec['min_fdr']})")
    print(f"CREs at {level}: {table['region'].nunique()} regions for {table['group'].nunique()} groups")
    write_csv(table, cres, index=False)
    save_figure(cre.cre_heatmap(adata, table, groupby="cre_group"), heatmap)


def label_hierarchy(cfg: Mapping, labels_frame=None):
    """The label hierarchy table of the config (CSV), or inferred from fully labelled cells.

    Returns a DataFrame with one column per level (one row per coarse -> fine path), the table form
    accepted by :func:`rvi.annotation.normalize_hierarchy`.
    """
    levels = list(cfg["labels"]["levels"])
    path = cfg["labels"]["hierarchy"]
    if path:
        table = pd.read_csv(path, sep=None, engine="python", dtype=str)
        missing = [lvl for lvl in levels if lvl not in table.columns]
        if missing:
            raise ValueError(f"labels.hierarchy table {path!r} lacks level column(s) {missing}")
        return table[levels].drop_duplicates().reset_index(drop=True)
    if labels_frame is None:
        raise ValueError("labels.hierarchy is null: pass the partial labels to infer it from")
    # Each labelled path seen in the data is one row; cells labelled only coarsely add the coarse
    # prefix so that labels without finer children stay valid.
    rows = labels_frame[levels].astype("object").dropna(subset=levels[:1]).drop_duplicates()
    return rows.reset_index(drop=True)
