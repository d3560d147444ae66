"""Tests for rvi.annotation on synthetic kNN-like graphs with planted communities."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from rvi.annotation import (
    adaptive_subcluster,
    annotate,
    broad_leiden,
    hierarchical_majority_vote,
    normalize_hierarchy,
)

HIERARCHY = pd.DataFrame(
    {
        "level1": ["T", "T", "B", "B", "Myeloid", "Myeloid"],
        "level2": ["CD4 T", "CD8 T", "B naive", "B memory", "Mono", "DC"],
    }
)
FINE = HIERARCHY["level2"].tolist()
PARENT = dict(zip(HIERARCHY["level2"], HIERARCHY["level1"]))


def community_graph(sizes, rng, k_in=10, p_out=0.05, groups=None, k_group=0):
    """Random graph with dense communities; optional extra edges between communities of one group."""
    membership = np.repeat(np.arange(len(sizes)), sizes)
    n = membership.size
    rows, cols = [], []
    for c in range(len(sizes)):
        idx = np.flatnonzero(membership == c)
        for i in idx:
            nb = rng.choice(idx, size=k_in, replace=False)
            rows += [i] * k_in
            cols += nb.tolist()
            if rng.random() < p_out:
                rows.append(i)
                cols.append(int(rng.integers(n)))
            if groups is not None and k_group:
                same = np.flatnonzero((groups[membership] == groups[c]) & (membership != c))
                if same.size:
                    nb = rng.choice(same, size=k_group, replace=False)
                    rows += [i] * k_group
                    cols += nb.tolist()
    conn = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    conn = conn.maximum(conn.T)
    conn.setdiag(0)
    conn.eliminate_zeros()
    return conn.tocsr(), membership


def make_dataset(seed=0, n_per=120):
    """Six clean fine communities plus one T community whose fine labels are a 50/50 mix."""
    rng = np.random.default_rng(seed)
    conn, membership = community_graph([n_per] * 7, rng)
    truth_fine = np.array(FINE + ["mixed T"], dtype=object)[membership]
    fine = truth_fine.copy()
    mixed = membership == 6
    fine[mixed] = rng.choice(["CD4 T", "CD8 T"], size=mixed.sum())
    coarse = np.array([PARENT[f] for f in fine], dtype=object)
    labelled = rng.random(membership.size) < 0.5
    obs = pd.DataFrame(
        {
            "level1": np.where(labelled, coarse, None),
            "level2": np.where(labelled, fine, None),
        },
        index=[f"cell{i}" for i in range(membership.size)],
    )
    adata = ad.AnnData(X=sp.csr_matrix((membership.size, 2)), obs=obs)
    adata.obsp["connectivities"] = conn
    return adata, membership, truth_fine, labelled


def test_annotate_recovers_fine_labels_and_falls_back_on_ambiguous():
    adata, membership, truth_fine, labelled = make_dataset()
    labels, purity = annotate(
        adata, ["level1", "level2"], HIERARCHY, resolution=1.0, min_cells_subcluster=10_000, min_fraction=0.7
    )

    clean = ~labelled & (membership < 6)
    accuracy = (labels["level2"].values[clean] == truth_fine[clean]).mean()
    assert accuracy >= 0.9

    # The mixed community is ambiguous at level2 and must fall back to its parent.
    mixed_cells = membership == 6
    assert (labels["level1"].values[mixed_cells] == "T").mean() >= 0.9
    assert (labels["annotation_level"].values[mixed_cells] == "level1").mean() >= 0.9
    assert pd.isna(labels["level2"].values[mixed_cells]).mean() >= 0.9

    # Labels are consistent with the hierarchy wherever the fine level is set.
    fine_set = labels["level2"].notna()
    assert (labels.loc[fine_set, "level2"].map(PARENT) == labels.loc[fine_set, "level1"]).all()

    expected = {"broad_cluster", "n_cells", "n_labelled", "majority_label", "fraction", "level"}
    assert expected <= set(purity.columns)
    assert purity["n_cells"].sum() == adata.n_obs
    assert ((purity["fraction"] >= 0) & (purity["fraction"] <= 1)).all()


def test_majority_vote_prefers_coarse_majority_over_few_fine_labels():
    # 10 cells labelled fine as CD4 T but 90 labelled only coarsely as B: the cluster is B.
    partial = pd.DataFrame({"level1": ["T"] * 10 + ["B"] * 90, "level2": ["CD4 T"] * 10 + [None] * 90})
    labels, purity = hierarchical_majority_vote(["0"] * 100, partial, HIERARCHY)
    assert (labels["level1"] == "B").all()
    assert labels["level2"].isna().all()
    assert purity.loc["0", "level"] == "level1"
    assert purity.loc["0", "majority_label"] == "B"
    assert purity.loc["0", "fraction"] == pytest.approx(0.9)


def test_majority_vote_fills_coarse_from_fine_and_handles_unlabelled_clusters():
    partial = pd.DataFrame({"level1": [None] * 6, "level2": ["DC", "DC", "Mono", None, None, None]})
    hierarchy = {"level2": PARENT}
    labels, purity = hierarchical_majority_vote(["a", "a", "a", "b", "b", "b"], partial, hierarchy)
    assert labels.loc[:2, "level2"].tolist() == ["DC"] * 3
    assert labels.loc[:2, "level1"].tolist() == ["Myeloid"] * 3
    assert labels.loc[3:, ["level1", "level2"]].isna().all().all()
    assert pd.isna(purity.loc["b", "level"])
    assert purity.loc["a", "n_labelled"] == 3


def test_tie_is_not_a_majority():
    partial = pd.DataFrame({"level1": ["T"] * 4, "level2": ["CD4 T", "CD4 T", "CD8 T", "CD8 T"]})
    labels, _ = hierarchical_majority_vote(["0"] * 4, partial, HIERARCHY, min_fraction=0.5)
    assert labels["annotation_level"].eq("level1").all()
    assert labels["level2"].isna().all()


def test_inconsistent_hierarchy_raises():
    bad = pd.DataFrame({"level1": ["T", "B"], "level2": ["CD4 T", "CD4 T"]})
    with pytest.raises(ValueError, match="several parents"):
        normalize_hierarchy(bad, ["level1", "level2"])
    with pytest.raises(ValueError, match="not labels of level"):
        normalize_hierarchy({"level2": {"CD4 T": "T"}, "level3": {"Treg": "CD8 T"}}, ["level1", "level2", "level3"])
    with pytest.raises(ValueError, match="lacks level column"):
        normalize_hierarchy(HIERARCHY, ["level1", "level3"])
    with pytest.raises(ValueError, match="lacks a child->parent"):
        normalize_hierarchy({}, ["level1", "level2"])


def test_partial_labels_inconsistent_with_hierarchy_raise():
    partial = pd.DataFrame({"level1": ["B", "T"], "level2": ["CD4 T", "CD4 T"]})
    with pytest.raises(ValueError, match="inconsistent with the hierarchy"):
        hierarchical_majority_vote(["0", "0"], partial, HIERARCHY)
    unknown = pd.DataFrame({"level1": ["T"], "level2": ["Treg"]})
    with pytest.raises(ValueError, match="not in the hierarchy"):
        hierarchical_majority_vote(["0"], unknown, HIERARCHY)


def test_broad_leiden_and_adaptive_subcluster():
    rng = np.random.default_rng(1)
    # Two groups of two communities; extra within-group edges make the groups the broad structure.
    groups = np.array([0, 0, 1, 1])
    conn, membership = community_graph([150, 150, 150, 150], rng, groups=groups, k_group=1, p_out=0.0)
    broad = broad_leiden(conn, resolution=0.1)
    assert len(broad.categories) == 2
    assert pd.crosstab(np.asarray(broad), groups[membership]).max(axis=1).sum() == membership.size

    clusters, summary = adaptive_subcluster(conn, broad, resolution=1.0, min_cells=200, min_subcluster_size=20)
    assert summary["split"].all()
    ct = pd.crosstab(np.asarray(clusters), membership)
    assert len(ct) == 4 and (ct.max(axis=1) / ct.sum(axis=1) >= 0.95).all()
    assert all("." in c for c in clusters.categories)

    # Below min_cells nothing is split.
    clusters_small, summary_small = adaptive_subcluster(conn, broad, min_cells=1000)
    assert not summary_small["split"].any()
    assert list(np.asarray(clusters_small)) == list(np.asarray(broad))


def test_subcluster_keeps_homogeneous_cluster_whole():
    rng = np.random.default_rng(2)
    n = 400
    rows = np.repeat(np.arange(n), 30)
    cols = rng.integers(n, size=rows.size)
    conn = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
    conn = conn.maximum(conn.T).tocsr()
    clusters, summary = adaptive_subcluster(conn, ["0"] * n, min_cells=100, min_modularity=0.3)
    assert not summary.loc["0", "split"]
    assert set(np.asarray(clusters)) == {"0"}


def test_leiden_flavors_agree_and_are_seeded():
    rng = np.random.default_rng(3)
    conn, membership = community_graph([80, 80, 80], rng, p_out=0.02)
    fast = broad_leiden(conn, random_state=1)
    again = broad_leiden(conn, random_state=1)
    reference = broad_leiden(conn, random_state=1, flavor="leidenalg")
    assert list(fast) == list(again)
    assert pd.crosstab(np.asarray(fast), np.asarray(reference)).gt(0).sum(axis=1).eq(1).all()
    assert pd.crosstab(np.asarray(fast), membership).gt(0).sum(axis=1).eq(1).all()
    with pytest.raises(ValueError, match="flavor"):
        broad_leiden(conn, flavor="louvain")


def test_balanced_vote_gives_a_rare_reference_subtype_its_cluster():
    # The labelled library has few CD8 T (10 of 100 labelled T cells). Cluster "1" is mostly unlabelled
    # CD8 T from another library, with 4 labelled CD8 and 6 labelled CD4 (CD4 spill-over). The plain
    # majority says CD4; relative to the reference composition the cluster is enriched for CD8.
    fine = ["CD4 T"] * 84 + ["CD8 T"] * 6 + ["CD4 T"] * 6 + ["CD8 T"] * 4 + [None] * 50
    clusters = ["0"] * 90 + ["1"] * 60
    partial = pd.DataFrame({"level1": ["T"] * 150, "level2": fine})
    plain, _ = hierarchical_majority_vote(clusters, partial, HIERARCHY)
    balanced, purity = hierarchical_majority_vote(clusters, partial, HIERARCHY, balanced=True)
    assert (plain.loc[90:, "level2"] == "CD4 T").all()
    assert (balanced.loc[90:, "level2"] == "CD8 T").all()
    assert (balanced.loc[:89, "level2"] == "CD4 T").all()  # cluster 0 stays CD4 (84 vs 6 of 10)
    # Weights: CD4 90 cells -> 100 / (2 * 90); CD8 10 cells -> 100 / (2 * 10).
    w4, w8 = 100 / 180, 100 / 20
    assert purity.loc["1", "fraction_level2"] == pytest.approx(4 * w8 / (4 * w8 + 6 * w4))
    assert purity.loc["1", "n_labelled_level2"] == 10
