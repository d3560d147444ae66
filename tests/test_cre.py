"""Tests for rvi.cre on simulated sparse counts with planted group-specific regions."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from rvi.cre import accessible_counts, cre_feature_list, cre_heatmap, differential_accessibility, select_cres

GROUPS = ["A", "B", "C", "D", "E", "F"]
N_SPECIFIC = 30
N_SHARED_AB = 30


def simulate(seed=0, n_per_group=150, n_background_regions=1200):
    """Counts (1-3 where accessible) with 30 regions specific to each group and 30 shared by A and B."""
    rng = np.random.default_rng(seed)
    group = np.repeat(GROUPS, n_per_group)
    n_cells = group.size
    specific_to = [g for g in GROUPS for _ in range(N_SPECIFIC)] + ["A+B"] * N_SHARED_AB
    specific_to += [""] * n_background_regions
    specific_to = np.array(specific_to, dtype=object)
    n_regions = specific_to.size
    base = rng.beta(1, 15, n_regions)  # background accessibility, some regions fairly open everywhere
    prob = np.tile(base, (len(GROUPS), 1))
    for gi, g in enumerate(GROUPS):
        prob[gi, specific_to == g] = 0.45
        prob[gi, (specific_to != g) & (specific_to != "")] = 0.04
    for g in ("A", "B"):
        prob[GROUPS.index(g), specific_to == "A+B"] = 0.45
    codes = np.repeat(np.arange(len(GROUPS)), n_per_group)
    accessible = rng.random((n_cells, n_regions)) < prob[codes]
    values = rng.integers(1, 4, size=(n_cells, n_regions)) * accessible
    X = sp.csr_matrix(values.astype(np.float32))
    obs = pd.DataFrame({"celltype": pd.Categorical(group, categories=GROUPS)}, index=[f"c{i}" for i in range(n_cells)])
    var = pd.DataFrame(
        {"specific_to": specific_to}, index=[f"chr1:{i * 1000}-{i * 1000 + 500}" for i in range(n_regions)]
    )
    return ad.AnnData(X=X, obs=obs, var=var)


@pytest.fixture(scope="module")
def data():
    return simulate()


def test_accessible_counts_binarises_and_matches_dense(data):
    codes = data.obs["celltype"].cat.codes.to_numpy().astype(np.int64)
    codes[:5] = -1  # unassigned cells are ignored
    k, n = accessible_counts(data.X, codes, len(GROUPS), chunk_size=97)
    dense = data.X.toarray() > 0
    expected = np.stack([dense[codes == g].sum(axis=0) for g in range(len(GROUPS))])
    np.testing.assert_array_equal(k, expected)
    assert n.tolist() == [145, 150, 150, 150, 150, 150]


@pytest.mark.parametrize("test", ["auto", "fisher", "ztest", "binomial"])
def test_precision_of_top_n_per_group(data, test):
    cres = select_cres(data, "celltype", top_n=N_SPECIFIC, min_fdr=0.05, test=test)
    truth = data.var["specific_to"]
    for g in GROUPS:
        top = cres[cres["group"] == g]
        assert len(top) == N_SPECIFIC
        assert top["rank"].tolist() == list(range(1, N_SPECIFIC + 1))
        assert (top["fdr"] <= 0.05).all() and (top["log2fc"] > 0).all()
        precision = (truth.loc[top["region"]] == g).mean()
        assert precision >= 0.8, (g, precision)
    features = cre_feature_list(cres, data.var_names)
    assert len(features) == cres["region"].nunique()
    assert features == [v for v in data.var_names if v in set(features)]


def test_background_configuration_changes_result(data):
    truth = data.var["specific_to"]

    def shared_in_top(cres):
        return int((truth.loc[cres.loc[cres["group"] == "A", "region"]] == "A+B").sum())

    default = select_cres(data, "celltype", top_n=N_SPECIFIC)
    # Against all others, A+B regions lose to A-specific ones.
    assert shared_in_top(default) <= 3
    # Excluding B from A's background makes A+B regions as specific to A as its own regions.
    without_b = select_cres(data, "celltype", backgrounds={"A": ["C", "D", "E", "F"]}, top_n=2 * N_SPECIFIC)
    assert shared_in_top(without_b) >= 20
    # Against B only, A+B regions are not enriched at all, A-specific ones still are.
    only_b = select_cres(data, "celltype", backgrounds={"A": ["B"]}, top_n=N_SPECIFIC)
    assert shared_in_top(only_b) == 0
    top_a = only_b[only_b["group"] == "A"]
    assert (truth.loc[top_a["region"]] == "A").mean() >= 0.8
    # Other groups keep the default background.
    pd.testing.assert_frame_equal(
        only_b[only_b["group"] == "C"].reset_index(drop=True), default[default["group"] == "C"].reset_index(drop=True)
    )
    da = differential_accessibility(data, "celltype", backgrounds={"A": ["B"]}, groups=["A"])
    assert set(da["n_background"]) == {150}


def test_unknown_background_group_raises(data):
    with pytest.raises(ValueError, match=r"Unknown background group\(s\) \['Z'\]"):
        select_cres(data, "celltype", backgrounds={"A": ["B", "Z"]})
    with pytest.raises(ValueError, match=r"Unknown group\(s\) \['Q'\] in backgrounds keys"):
        select_cres(data, "celltype", backgrounds={"Q": ["B"]})
    with pytest.raises(ValueError, match="own background"):
        select_cres(data, "celltype", backgrounds={"A": ["A", "B"]})
    with pytest.raises(KeyError, match="not in adata.obs"):
        select_cres(data, "cluster")


def test_nan_groups_small_groups_and_rest(data):
    sub = data[:400].copy()  # A, B full; C with 100 cells
    obs = sub.obs["celltype"].astype(object)
    obs.iloc[:10] = np.nan
    obs.iloc[300:305] = "Tiny"
    sub.obs["celltype"] = obs.values
    with pytest.warns(UserWarning, match="fewer than 10 cells"):
        da = differential_accessibility(sub, "celltype", backgrounds={"A": "rest"}, only_enriched=False)
    assert set(da["group"]) == {"A", "B", "C"}
    a = da[da["group"] == "A"]
    assert a["n_group"].iloc[0] == 140 and a["n_background"].iloc[0] == 250  # Tiny counts in the background
    assert len(a) == sub.n_vars and a["rank"].min() == 1
    assert ((a["fdr"] >= a["pvalue"]) & (a["fdr"] <= 1)).all()


def test_cre_heatmap_returns_figure(data):
    cres = select_cres(data, "celltype", top_n=10)
    fig = cre_heatmap(data, cres, "celltype", max_regions_per_group=5)
    ax = fig.axes[0]
    assert ax.images[0].get_array().shape == (len(GROUPS), 5 * len(GROUPS))
    with pytest.raises(ValueError, match="No CREs"):
        cre_heatmap(data, cres.iloc[:0], "celltype")


@pytest.mark.filterwarnings("ignore")
def test_simulated_multiome_leaf_cres_need_sibling_backgrounds():
    """On rvi.simulate data, subtype CREs are found against the sibling subtype as background."""
    simulate = pytest.importorskip("rvi.simulate")
    mdata = simulate.simulate_multiome(n_cells=1200, n_regions=1500, seed=1)
    atac = mdata["atac"][~mdata["atac"].obs["is_doublet"].to_numpy()].copy()
    truth = atac.var["specific_to"].astype(str)
    hierarchy = atac.uns["simulation"]["hierarchy"]
    leaves = hierarchy[hierarchy["level"] == hierarchy["level"].max()]
    parent = dict(zip(leaves["child"], leaves["parent"]))
    siblings = {g: [h for h in parent if parent[h] == parent[g] and h != g] for g in parent}
    planted = sorted(set(truth) - {"none"})
    n_per = int((truth == planted[0]).sum())

    def precision(cres):
        return {g: (truth.loc[cres.loc[cres["group"] == g, "region"]] == g).mean() for g in planted}

    with_siblings = precision(select_cres(atac, "cell_type", backgrounds=siblings, top_n=n_per))
    default = precision(select_cres(atac, "cell_type", top_n=n_per))
    assert min(with_siblings.values()) >= 0.8
    # Against all other types, regions shared with the sibling (parent-level programs) compete.
    assert np.mean(list(default.values())) < np.mean(list(with_siblings.values()))


def test_vectorised_fisher_matches_scipy_hypergeom():
    from scipy import stats

    from rvi.cre import _fisher_upper

    rng = np.random.default_rng(4)
    for n_total, n1, frac in [(10_000, 500, 0.01), (1000, 30, 0.3), (200, 100, 0.9), (60, 20, 0.5)]:
        k_all = rng.binomial(n_total, frac, 3000)
        k1 = np.minimum(rng.binomial(n1, k_all / n_total) + rng.integers(0, 4, k_all.size), np.minimum(k_all, n1))
        expected = stats.hypergeom.sf(k1 - 1, n_total, k_all, n1)
        got = _fisher_upper(k1, n1, k_all - k1, n_total - n1)
        np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-12)
