"""Cluster-based annotation: broad Leiden, adaptive sub-clustering, hierarchical majority vote.

The ``annotate`` stage transfers partial cell labels (some libraries are labelled, others not; labels
may exist only at coarse levels for some cells) to every cell through the model's kNN graph:

1. ``broad_leiden`` clusters the graph (weighted Leiden, RB-configuration quality as in scanpy).
2. ``adaptive_subcluster`` re-runs Leiden on the induced subgraph of each large broad cluster and keeps
   the split only when the sub-partition shows community structure (modularity threshold); tiny
   sub-clusters are merged into their most connected sibling so that votes are not made on a handful
   of cells.
3. ``hierarchical_majority_vote`` gives each (sub-)cluster the majority label at the finest hierarchy
   level with a confident majority that is consistent with the majorities at every coarser level,
   falling back up the hierarchy otherwise.

Label levels are ordered coarse -> fine (the column order of the partial label table).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import igraph as ig
import leidenalg
import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = [
    "adaptive_subcluster",
    "annotate",
    "broad_leiden",
    "hierarchical_majority_vote",
    "normalize_hierarchy",
]


# --------------------------------------------------------------------------------------------------
# Graph clustering
# --------------------------------------------------------------------------------------------------


def _connectivities(adata_or_connectivities) -> sp.csr_matrix:
    """Return a symmetric CSR connectivity matrix from an AnnData (obsp['connectivities']) or a matrix."""
    if hasattr(adata_or_connectivities, "obsp"):
        if "connectivities" not in adata_or_connectivities.obsp:
            raise KeyError("AnnData has no obsp['connectivities'] (compute the kNN graph first).")
        conn = adata_or_connectivities.obsp["connectivities"]
    else:
        conn = adata_or_connectivities
    conn = sp.csr_matrix(conn, dtype=np.float64)
    if conn.shape[0] != conn.shape[1]:
        raise ValueError(f"Connectivity matrix must be square, got shape {conn.shape}.")
    # Leiden on an undirected graph needs symmetric weights; kNN connectivities usually are already.
    if (abs(conn - conn.T) > 1e-12).nnz:
        conn = ((conn + conn.T) * 0.5).tocsr()
    conn.setdiag(0)
    conn.eliminate_zeros()
    return conn


def _igraph(conn: sp.csr_matrix) -> ig.Graph:
    """Undirected weighted igraph built from the upper triangle of a symmetric sparse matrix."""
    upper = sp.triu(conn, k=1).tocoo()
    graph = ig.Graph(n=conn.shape[0], edges=np.column_stack([upper.row, upper.col]).tolist(), directed=False)
    graph.es["weight"] = upper.data.tolist()
    return graph


def _leiden(
    graph: ig.Graph, resolution: float, random_state: int, n_iterations: int, flavor: str = "igraph"
) -> np.ndarray:
    """Weighted Leiden with the RB-configuration (modularity with resolution) objective.

    ``flavor="igraph"`` (igraph's C implementation, ~10x faster on 100k-cell graphs) or
    ``"leidenalg"``; both optimise the same objective (as scanpy's two flavours).
    """
    weights = "weight" if graph.ecount() else None
    if flavor == "igraph":
        # igraph draws from a global RNG: swap in a seeded one and restore it afterwards.
        ig.set_random_number_generator(random.Random(random_state))
        try:
            partition = graph.community_leiden(
                objective_function="modularity", weights=weights, resolution=resolution, n_iterations=n_iterations
            )
        finally:
            ig.set_random_number_generator(random)
    elif flavor == "leidenalg":
        partition = leidenalg.find_partition(
            graph,
            leidenalg.RBConfigurationVertexPartition,
            weights=weights,
            resolution_parameter=resolution,
            n_iterations=n_iterations,
            seed=random_state,
        )
    else:
        raise ValueError(f"flavor must be 'igraph' or 'leidenalg', got {flavor!r}.")
    return np.asarray(partition.membership, dtype=np.int64)


def _relabel_by_size(membership: np.ndarray) -> np.ndarray:
    """Renumber clusters 0..k-1 by decreasing size (ties by first occurrence) for stable names."""
    uniq, inverse, counts = np.unique(membership, return_inverse=True, return_counts=True)
    order = np.lexsort((uniq, -counts))
    new_id = np.empty_like(order)
    new_id[order] = np.arange(len(order))
    return new_id[inverse]


def broad_leiden(
    adata_or_connectivities,
    resolution: float = 1.0,
    random_state: int = 0,
    n_iterations: int = 2,
    flavor: str = "igraph",
) -> pd.Categorical:
    """Leiden clustering of the kNN graph.

    Parameters
    ----------
    adata_or_connectivities
        AnnData with ``obsp['connectivities']`` or a square sparse/dense connectivity matrix.
    resolution
        RB-configuration resolution (higher -> more clusters), as ``scanpy.tl.leiden``.
    random_state, n_iterations
        Seed and number of Leiden iterations (negative: iterate until stable).
    flavor
        ``"igraph"`` (default, fast) or ``"leidenalg"``; same objective.

    Returns
    -------
    Categorical of cluster names ``"0", "1", ...`` numbered by decreasing cluster size.
    """
    conn = _connectivities(adata_or_connectivities)
    membership = _relabel_by_size(_leiden(_igraph(conn), resolution, random_state, n_iterations, flavor))
    names = membership.astype(str)
    return pd.Categorical(names, categories=[str(i) for i in range(membership.max() + 1)])


def _merge_small(conn: sp.csr_matrix, membership: np.ndarray, min_size: int) -> np.ndarray:
    """Merge clusters smaller than ``min_size`` into the cluster they share most edge weight with."""
    membership = _relabel_by_size(membership)
    while True:
        k = membership.max() + 1
        sizes = np.bincount(membership, minlength=k)
        if k == 1 or sizes.min() >= min_size:
            return membership
        smallest = int(np.argmin(sizes))
        indicator = sp.csr_matrix(
            (np.ones(len(membership)), (np.arange(len(membership)), membership)), shape=(len(membership), k)
        )
        # Cluster-to-cluster edge weights via indicator products (stays sparse, k is small).
        weights = np.asarray((indicator.T @ conn @ indicator[:, smallest]).todense()).ravel()
        weights[smallest] = -1.0
        target = (
            int(np.argmax(weights))
            if weights.max() > 0
            else int(np.argmax(np.where(np.arange(k) == smallest, -1, sizes)))
        )
        membership = _relabel_by_size(np.where(membership == smallest, target, membership))


def adaptive_subcluster(
    adata_or_connectivities,
    broad: Sequence,
    resolution: float = 1.0,
    min_cells: int = 500,
    min_subcluster_size: int = 50,
    min_modularity: float = 0.3,
    random_state: int = 0,
    n_iterations: int = 2,
    flavor: str = "igraph",
) -> tuple[pd.Categorical, pd.DataFrame]:
    """Sub-cluster each large, heterogeneous broad cluster with Leiden on its induced subgraph.

    A broad cluster is split when it has at least ``min_cells`` cells, the Leiden partition of its
    induced subgraph (at ``resolution``) has more than one sub-cluster after merging sub-clusters
    smaller than ``min_subcluster_size`` into their most connected sibling, and the modularity of that
    sub-partition (standard Newman modularity on the subgraph) is at least ``min_modularity``.
    Otherwise the broad cluster is kept whole.

    ``random_state``, ``n_iterations`` and ``flavor`` are as in :func:`broad_leiden`.

    Returns
    -------
    clusters
        Categorical of final cluster names: ``"<broad>"`` for unsplit clusters, ``"<broad>.<sub>"``
        for sub-clusters.
    summary
        One row per broad cluster: n_cells, n_subclusters, modularity (NaN when not attempted), split.
    """
    conn = _connectivities(adata_or_connectivities)
    broad = np.asarray(broad).astype(str)
    if broad.shape[0] != conn.shape[0]:
        raise ValueError(f"broad has {broad.shape[0]} entries but the graph has {conn.shape[0]} nodes.")
    final = broad.astype(object).copy()
    rows = []
    for name in pd.unique(broad):
        idx = np.flatnonzero(broad == name)
        row = {"broad_cluster": name, "n_cells": idx.size, "n_subclusters": 1, "modularity": np.nan, "split": False}
        if idx.size >= min_cells:
            sub_conn = conn[idx][:, idx].tocsr()
            graph = _igraph(sub_conn)
            membership = _leiden(graph, resolution, random_state, n_iterations, flavor)
            membership = _merge_small(sub_conn, membership, min_subcluster_size)
            n_sub = int(membership.max()) + 1
            modularity = graph.modularity(membership.tolist(), weights="weight") if graph.ecount() else 0.0
            row.update(n_subclusters=n_sub, modularity=modularity)
            if n_sub > 1 and modularity >= min_modularity:
                final[idx] = [f"{name}.{m}" for m in membership]
                row["split"] = True
            else:
                row["n_subclusters"] = 1
        rows.append(row)
    categories = sorted(pd.unique(final), key=_natural_key)
    return pd.Categorical(final, categories=categories), pd.DataFrame(rows).set_index("broad_cluster")


def _natural_key(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in str(name).split("."))


# --------------------------------------------------------------------------------------------------
# Label hierarchy
# --------------------------------------------------------------------------------------------------


def normalize_hierarchy(hierarchy, levels: Sequence[str]) -> dict[str, dict[str, str]]:
    """Validate a label hierarchy and return ``{child_level: {child_label: parent_label}}``.

    Parameters
    ----------
    hierarchy
        Either a table (DataFrame, or a list of dicts) with one column per level, each row a path
        coarse -> fine (finer entries may be missing for labels without children); or a dict
        ``{child_level: {child_label: parent_label}}`` for every level except the coarsest.
    levels
        Level names ordered coarse -> fine.

    Raises
    ------
    ValueError
        If a level is missing, a label has two different parents, or a parent is not a label of the
        next coarser level.
    """
    return _normalize_hierarchy(hierarchy, levels)[0]


def _normalize_hierarchy(hierarchy, levels: Sequence[str]) -> tuple[dict[str, dict[str, str]], dict[str, set]]:
    """Validate ``hierarchy`` (see :func:`normalize_hierarchy`); also return the known labels per level."""
    levels = list(levels)
    if len(levels) == 0:
        raise ValueError("At least one label level is required.")
    if len(set(levels)) != len(levels):
        raise ValueError(f"Label levels must be unique, got {levels}.")
    parents: dict[str, dict[str, str]] = {}
    if isinstance(hierarchy, list):
        hierarchy = pd.DataFrame(hierarchy)
    if isinstance(hierarchy, pd.DataFrame):
        missing = [lvl for lvl in levels if lvl not in hierarchy.columns]
        if missing:
            raise ValueError(f"Hierarchy table lacks level column(s) {missing}; it has {list(hierarchy.columns)}.")
        for parent_level, child_level in zip(levels[:-1], levels[1:]):
            pairs = hierarchy[[child_level, parent_level]].dropna(subset=[child_level])
            if pairs[parent_level].isna().any():
                bad = pairs.loc[pairs[parent_level].isna(), child_level].astype(str).unique()[:5].tolist()
                raise ValueError(
                    f"Hierarchy: label(s) {bad} at level {child_level!r} have no parent at {parent_level!r}."
                )
            pairs = pairs.astype(str).drop_duplicates()
            dup = pairs[child_level].duplicated(keep=False)
            if dup.any():
                conflicts = pairs[dup].groupby(child_level)[parent_level].apply(list).head(5).to_dict()
                raise ValueError(
                    f"Inconsistent hierarchy: label(s) at level {child_level!r} have several parents at "
                    f"{parent_level!r}: {conflicts}."
                )
            parents[child_level] = dict(zip(pairs[child_level], pairs[parent_level]))
        known = {levels[0]: set(hierarchy[levels[0]].dropna().astype(str))}
    elif isinstance(hierarchy, Mapping):
        extra = [k for k in hierarchy if k not in levels[1:]]
        if extra:
            raise ValueError(
                f"Hierarchy dict keys must be child levels {levels[1:]} (coarsest level has no parent); "
                f"unexpected key(s) {extra}."
            )
        for child_level in levels[1:]:
            if child_level not in hierarchy:
                raise ValueError(f"Hierarchy dict lacks a child->parent mapping for level {child_level!r}.")
            mapping = hierarchy[child_level]
            if not isinstance(mapping, Mapping):
                raise ValueError(f"Hierarchy for level {child_level!r} must be a dict child->parent.")
            parents[child_level] = {str(c): str(p) for c, p in mapping.items()}
        known = {levels[0]: set(parents[levels[1]].values()) if len(levels) > 1 else set()}
    else:
        raise TypeError(f"hierarchy must be a DataFrame, list of dicts or dict, got {type(hierarchy).__name__}.")
    for parent_level, child_level in zip(levels[:-1], levels[1:]):
        known[child_level] = set(parents[child_level])
        unknown_parents = sorted(set(parents[child_level].values()) - known[parent_level])
        if unknown_parents:
            raise ValueError(
                f"Inconsistent hierarchy: parent label(s) {unknown_parents[:5]} of level {child_level!r} are not "
                f"labels of level {parent_level!r} (known: {sorted(known[parent_level])[:10]})."
            )
    return parents, known


def _ancestor(label: str, from_level: int, to_level: int, levels: Sequence[str], parents) -> str:
    for i in range(from_level, to_level, -1):
        label = parents[levels[i]][label]
    return label


def _complete_labels(partial: pd.DataFrame, levels: Sequence[str], parents, known) -> pd.DataFrame:
    """Check partial labels against the hierarchy and fill missing coarser labels from finer ones."""
    labels = partial[list(levels)].astype(object).where(partial[list(levels)].notna(), None)
    labels = labels.apply(lambda col: col.map(lambda v: None if v is None else str(v)))
    for level in levels:
        # A single-level dict hierarchy declares no labels: any label is then acceptable.
        if len(levels) == 1 and not known[level]:
            continue
        unknown = sorted(set(labels[level].dropna().unique()) - known[level])
        if unknown:
            raise ValueError(f"Label(s) {unknown[:5]} in column {level!r} are not in the hierarchy for that level.")
    for i in range(len(levels) - 1, 0, -1):
        child, parent = levels[i], levels[i - 1]
        implied = labels[child].map(lambda v, m=parents[child]: None if v is None else m[v])
        given = labels[parent]
        clash = given.notna() & implied.notna() & (given != implied)
        if clash.any():
            examples = pd.DataFrame({parent: given[clash], child: labels[child][clash]}).drop_duplicates().head(5)
            raise ValueError(
                f"Partial labels inconsistent with the hierarchy for {int(clash.sum())} cell(s): "
                f"{examples.to_dict('records')} (parent of {child!r} label differs from the {parent!r} label)."
            )
        labels[parent] = given.where(given.notna(), implied)
    return labels


def hierarchical_majority_vote(
    clusters: Sequence,
    partial_labels: pd.DataFrame,
    hierarchy,
    min_fraction: float = 0.5,
    min_labelled: int = 1,
    balanced: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Label each cluster by majority vote at the finest confident level of a label hierarchy.

    Parameters
    ----------
    clusters
        Cluster name per cell (same order as ``partial_labels``).
    partial_labels
        One column per hierarchy level, ordered coarse -> fine; NaN where a cell is unlabelled.
        Missing coarser labels are inferred from finer ones through the hierarchy.
    hierarchy
        See :func:`normalize_hierarchy`.
    min_fraction
        A level is confident for a cluster when its top label holds at least this fraction of the
        cluster's cells labelled at that level (and strictly more than the runner-up).
    min_labelled
        Minimum number of labelled cells at a level for a vote at that level.
    balanced
        Weight each labelled cell by 1 / (number of cells carrying its label at that level), so a
        cluster votes for the label it is most *enriched* in rather than the most frequent one. A
        subtype that is rare in the labelled libraries but common elsewhere (composition differs
        between datasets) otherwise loses every cluster to its abundant sibling. ``fraction`` and
        ``min_fraction`` then refer to the weighted shares; ``n_labelled`` stays a cell count.

    Returns
    -------
    labels
        Per cell (index of ``partial_labels``): ``cluster``, one column per level with the cluster's
        label (NaN for levels finer than the one used), and ``annotation_level`` (level used, NaN when
        no level is confident).
    purity
        Per cluster: n_cells, n_labelled, majority_label, fraction, level (the level used; for
        clusters without a confident level these describe the coarsest level), plus
        ``majority_<level>``, ``fraction_<level>``, ``n_labelled_<level>`` for every level.

    Notes
    -----
    A label at level *i* is accepted only if it is confident at level *i* and each of its ancestors is
    the confident majority at the corresponding coarser level; the finest such level wins. This keeps
    outputs consistent with the hierarchy and prevents a few finely labelled cells from overriding a
    cluster whose cells are mostly labelled (coarsely) as something else.
    """
    if not isinstance(partial_labels, pd.DataFrame):
        raise TypeError("partial_labels must be a DataFrame with one column per hierarchy level.")
    if not 0 < min_fraction <= 1:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}.")
    levels = list(partial_labels.columns)
    clusters = pd.Series(np.asarray(clusters).astype(str), index=partial_labels.index, name="cluster")
    if len(clusters) != len(partial_labels):
        raise ValueError("clusters and partial_labels have different lengths.")
    parents, known = _normalize_hierarchy(hierarchy, levels)
    labels = _complete_labels(partial_labels, levels, parents, known)

    cluster_names = sorted(clusters.unique(), key=_natural_key)
    stats: dict[str, pd.DataFrame] = {}
    for level in levels:
        df = pd.DataFrame({"cluster": clusters.values, "label": labels[level].values}).dropna()
        counts = df.groupby(["cluster", "label"]).size().rename("cells").reset_index()
        n_lab = counts.groupby("cluster")["cells"].sum()
        counts["n"] = counts["cells"].astype(float)
        if balanced and len(counts):
            # Label weight N / (K * N_label): every label carries the same total weight, the mean is 1.
            totals = counts.groupby("label")["cells"].sum()
            weight = totals.sum() / (len(totals) * totals)
            counts["n"] = counts["cells"] * counts["label"].map(weight).astype(float)
        counts = counts.sort_values(["cluster", "n", "label"], ascending=[True, False, True])
        weighted = counts.groupby("cluster")["n"].sum()
        top = counts.groupby("cluster").head(2).copy()
        top["pos"] = top.groupby("cluster").cumcount()
        first = top[top.pos == 0].set_index("cluster")
        second = top[top.pos == 1].set_index("cluster")["n"]
        out = pd.DataFrame(index=pd.Index(cluster_names, name="cluster"))
        out["n_labelled"] = n_lab.reindex(out.index).fillna(0).astype(int)
        out["majority"] = first["label"].reindex(out.index)
        out["fraction"] = (first["n"].reindex(out.index) / weighted.reindex(out.index).replace(0, np.nan)).astype(float)
        runner_up = second.reindex(out.index).fillna(0)
        out["confident"] = (
            (out["n_labelled"] >= max(min_labelled, 1))
            & (out["fraction"] >= min_fraction)
            & (first["n"].reindex(out.index).fillna(0) > runner_up)
        )
        stats[level] = out

    n_cells = clusters.value_counts()
    purity_rows = []
    assigned: dict[str, dict[str, str | None]] = {}
    for c in cluster_names:
        chosen = None
        for i in range(len(levels) - 1, -1, -1):
            st = stats[levels[i]].loc[c]
            if not st["confident"]:
                continue
            ok = all(
                stats[levels[j]].loc[c, "confident"]
                and stats[levels[j]].loc[c, "majority"] == _ancestor(st["majority"], i, j, levels, parents)
                for j in range(i)
            )
            if ok:
                chosen = i
                break
        per_level: dict[str, str | None] = dict.fromkeys(levels)
        if chosen is not None:
            label = stats[levels[chosen]].loc[c, "majority"]
            for j in range(chosen + 1):
                per_level[levels[j]] = _ancestor(label, chosen, j, levels, parents)
        assigned[c] = per_level
        ref = levels[chosen] if chosen is not None else levels[0]
        row = {
            "cluster": c,
            "n_cells": int(n_cells[c]),
            "n_labelled": int(stats[ref].loc[c, "n_labelled"]),
            "majority_label": per_level[ref] if chosen is not None else stats[ref].loc[c, "majority"],
            "fraction": float(stats[ref].loc[c, "fraction"]),
            "level": ref if chosen is not None else np.nan,
        }
        for level in levels:
            row[f"majority_{level}"] = stats[level].loc[c, "majority"]
            row[f"fraction_{level}"] = float(stats[level].loc[c, "fraction"])
            row[f"n_labelled_{level}"] = int(stats[level].loc[c, "n_labelled"])
        purity_rows.append(row)

    result = pd.DataFrame(index=partial_labels.index)
    result["cluster"] = clusters.values
    for level in levels:
        result[level] = clusters.map({c: assigned[c][level] for c in cluster_names}).astype(object).values
    level_used = {
        c: next((lvl for lvl in reversed(levels) if assigned[c][lvl] is not None), np.nan) for c in cluster_names
    }
    result["annotation_level"] = clusters.map(level_used).values
    purity = pd.DataFrame(purity_rows).set_index("cluster")
    return result, purity


# --------------------------------------------------------------------------------------------------
# Stage entry point
# --------------------------------------------------------------------------------------------------


def annotate(
    adata,
    label_columns: Sequence[str],
    hierarchy,
    resolution: float = 1.0,
    subcluster: bool = True,
    sub_resolution: float = 1.0,
    min_cells_subcluster: int = 500,
    min_subcluster_size: int = 50,
    min_modularity: float = 0.3,
    min_fraction: float = 0.5,
    min_labelled: int = 1,
    balanced_vote: bool = False,
    random_state: int = 0,
    n_iterations: int = 2,
    flavor: str = "igraph",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Broad Leiden + adaptive sub-clustering + hierarchical majority vote on ``adata.obsp['connectivities']``.

    Parameters
    ----------
    adata
        AnnData with ``obsp['connectivities']`` and the partial label columns in ``obs``.
    label_columns
        ``obs`` columns with partial labels, ordered coarse -> fine (NaN where unlabelled).
    hierarchy
        Label hierarchy, see :func:`normalize_hierarchy`.
    resolution
        Broad Leiden resolution.
    subcluster, sub_resolution, min_cells_subcluster, min_subcluster_size, min_modularity
        Adaptive sub-clustering controls, see :func:`adaptive_subcluster`.
    min_fraction, min_labelled
        Majority vote controls, see :func:`hierarchical_majority_vote`.
    balanced_vote
        Class-balanced vote (``balanced`` of :func:`hierarchical_majority_vote`).
    random_state, n_iterations, flavor
        Leiden controls, see :func:`broad_leiden`.

    Returns
    -------
    annotation
        Per cell: ``broad_cluster``, ``cluster``, one column per level, ``annotation_level``.
    purity
        Per final cluster (see :func:`hierarchical_majority_vote`) plus ``broad_cluster``.
    """
    missing = [c for c in label_columns if c not in adata.obs.columns]
    if missing:
        raise KeyError(f"Label column(s) {missing} not in adata.obs (columns: {list(adata.obs.columns)[:20]}).")
    conn = _connectivities(adata)
    broad = broad_leiden(
        conn, resolution=resolution, random_state=random_state, n_iterations=n_iterations, flavor=flavor
    )
    if subcluster:
        clusters, _ = adaptive_subcluster(
            conn,
            broad,
            resolution=sub_resolution,
            min_cells=min_cells_subcluster,
            min_subcluster_size=min_subcluster_size,
            min_modularity=min_modularity,
            random_state=random_state,
            n_iterations=n_iterations,
            flavor=flavor,
        )
    else:
        clusters = broad
    labels, purity = hierarchical_majority_vote(
        np.asarray(clusters),
        adata.obs[list(label_columns)],
        hierarchy,
        min_fraction=min_fraction,
        min_labelled=min_labelled,
        balanced=balanced_vote,
    )
    labels.insert(0, "broad_cluster", np.asarray(broad))
    broad_of = labels.groupby("cluster", observed=True)["broad_cluster"].first()
    purity.insert(0, "broad_cluster", broad_of.reindex(purity.index).values)
    return labels, purity
