"""Simulator ground truth: determinism, schema, and that the truth really shapes the counts."""

import re

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from rvi.io import write_h5ad
from rvi.simulate import simulate_multiome, simulate_rna


@pytest.fixture(scope="module")
def rna():
    return simulate_rna(n_cells=1200, n_genes=300, seed=3)


@pytest.fixture(scope="module")
def mdata():
    return simulate_multiome(n_cells=1500, n_genes=300, n_regions=1200, missing_atac_fraction=0.1, seed=5)


def _pseudobulk(X, mask):
    x = np.asarray(X[mask].sum(axis=0)).ravel()
    return x / x.sum()


def test_deterministic_with_seed():
    a = simulate_rna(n_cells=300, n_genes=100, seed=11)
    b = simulate_rna(n_cells=300, n_genes=100, seed=11)
    c = simulate_rna(n_cells=300, n_genes=100, seed=12)
    assert (a.X != b.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert (a.X != c.X).nnz > 0


def test_schema(rna):
    assert sp.isspmatrix_csr(rna.X) or isinstance(rna.X, sp.csr_array)
    assert np.array_equal(rna.X.data, np.round(rna.X.data)) and rna.X.data.min() >= 0
    for col in ("library", "dataset", "cell_type", "cell_type_l1", "cell_type_l2", "cell_type_l3"):
        assert isinstance(rna.obs[col].dtype, pd.CategoricalDtype), col
    assert rna.obs["is_doublet"].dtype == bool
    assert all(re.fullmatch(r"lib\d+-[ACGT]{16}-1", n) for n in rna.obs_names)
    assert (rna.obs_names == rna.obs["library"].astype(str) + "-" + rna.obs["barcode"]).all()
    assert rna.var_names[0].startswith("MT-") and rna.var["is_mt"].sum() > 0
    assert rna.obs["cell_type"].nunique() == 8


def test_ambient_and_profiles_are_distributions(rna):
    truth = rna.uns["simulation"]
    amb = truth["ambient_profiles"]
    assert list(amb.index) == list(rna.obs["library"].cat.categories)
    assert list(amb.columns) == list(rna.var_names)
    np.testing.assert_allclose(amb.sum(axis=1), 1.0, rtol=1e-10)
    np.testing.assert_allclose(truth["cell_type_profiles"].sum(axis=1), 1.0, rtol=1e-10)
    lo, hi = truth["params"]["ambient_fraction"]
    assert rna.obs["ambient_fraction"].between(lo, hi).all()
    # Each library's ambient reflects its own cells: closest to its own composition-weighted mixture.
    mix = truth["composition"].to_numpy() @ truth["cell_type_profiles"].to_numpy()
    corr = np.corrcoef(np.log(amb.to_numpy()), np.log(mix))[: len(amb), len(amb) :]
    assert (np.diag(corr) > 0.8).all()


def test_libraries_nested_in_datasets(rna):
    per_lib = rna.obs.groupby("library", observed=True)["dataset"].nunique()
    assert (per_lib == 1).all()
    assert (rna.obs.groupby("dataset", observed=True)["library"].nunique() == 2).all()
    scaling = rna.uns["simulation"]["gene_scaling"]
    assert list(scaling.index) == list(rna.obs["dataset"].cat.categories)
    np.testing.assert_allclose(np.log(scaling).mean(axis=1), 0.0, atol=1e-10)


def test_hierarchy_matches_obs(rna):
    parent = dict(zip(*rna.uns["simulation"]["hierarchy"][["child", "parent"]].T.to_numpy()))
    obs = rna.obs.astype(str)
    assert (obs["cell_type"] == obs["cell_type_l3"]).all()
    assert (obs["cell_type"].map(parent) == obs["cell_type_l2"]).all()
    assert (obs["cell_type_l2"].map(parent) == obs["cell_type_l1"]).all()
    levels = rna.uns["simulation"]["hierarchy"]["level"].value_counts().sort_index()
    assert list(levels.index) == [1, 2, 3] and levels[3] == 8


def test_dataset_scaling_visible_in_counts():
    a = simulate_rna(n_cells=3000, n_genes=300, doublet_rate=0.0, seed=2)
    y = a.uns["simulation"]["gene_scaling"]
    ds = a.obs["dataset"].astype(str).to_numpy()
    # Within one subtype composition does not interfere: dataset ratio follows the true scaling ratio.
    ct = a.obs["cell_type"].astype(str).to_numpy()
    top = pd.Series(ct).value_counts().index[0]
    r1 = _pseudobulk(a.X, (ds == "ds1") & (ct == top))
    r2 = _pseudobulk(a.X, (ds == "ds2") & (ct == top))
    ok = (r1 > 1e-3) & (r2 > 1e-3)
    obs_ratio = np.log(r1[ok] / r2[ok])
    true_ratio = np.log(y.loc["ds1"].to_numpy() / y.loc["ds2"].to_numpy())[ok]
    assert np.corrcoef(obs_ratio, true_ratio)[0, 1] > 0.6


def test_doublets_are_sums_of_two_types():
    a = simulate_rna(n_cells=1500, n_genes=300, doublet_rate=0.1, ambient_fraction=(0.0, 0.0), seed=4)
    obs = a.obs
    assert abs(obs["is_doublet"].mean() - 0.1) < 0.01
    dbl = obs["is_doublet"].to_numpy()
    assert (obs.loc[dbl, "doublet_partner_type"].astype(str) != obs.loc[dbl, "cell_type"].astype(str)).all()
    assert (obs.loc[~dbl, "doublet_partner_type"] == "none").all()
    # Two cells' worth of RNA.
    ratio = obs.loc[dbl, "true_library_size"].median() / obs.loc[~dbl, "true_library_size"].median()
    assert 1.6 < ratio < 2.6
    P = a.uns["simulation"]["cell_type_profiles"]
    X = a.X.toarray()
    llr = np.empty(a.n_obs)
    for i in range(a.n_obs):
        main = P.loc[obs["cell_type"].iat[i]].to_numpy()
        other = P.loc[obs["doublet_partner_type"].iat[i]].to_numpy() if dbl[i] else P.mean().to_numpy()
        pure = X[i] @ np.log(main)
        best = max(X[i] @ np.log(w * main + (1 - w) * other) for w in np.linspace(0.5, 0.98, 13))
        llr[i] = best - pure
    # Mixing in the partner's profile explains doublets far better; singlets gain little from mixing.
    assert np.median(llr[dbl]) > 10 * max(np.median(llr[~dbl]), 1.0)
    assert (llr[dbl] > 5).mean() > 0.85


def test_uns_truth_survives_h5ad(rna, tmp_path):
    import anndata as ad

    path = tmp_path / "sim.h5ad"
    write_h5ad(rna, path)
    back = ad.read_h5ad(path)
    for key in ("ambient_profiles", "gene_scaling", "cell_type_profiles", "hierarchy"):
        pd.testing.assert_frame_equal(back.uns["simulation"][key], rna.uns["simulation"][key], check_dtype=False)
    np.testing.assert_array_equal(back.uns["simulation"]["dispersion"], rna.uns["simulation"]["dispersion"])
    assert list(back.obs["library"].cat.categories) == list(back.uns["simulation"]["ambient_profiles"].index)


def test_multiome_schema(mdata):
    rna, atac = mdata["rna"], mdata["atac"]
    assert list(rna.obs_names) == list(atac.obs_names) == list(mdata.obs_names)
    pd.testing.assert_frame_equal(rna.obs, atac.obs)
    pd.testing.assert_frame_equal(mdata.obs, rna.obs)
    assert all(re.fullmatch(r"chr\d+:\d+-\d+", r) for r in atac.var_names)
    assert (atac.var["start"] % 1000 == 250).all() and (
        (atac.var["end"] - 1) // 1000 == atac.var["start"] // 1000
    ).all()
    data = atac.X.data
    assert np.array_equal(data, np.round(data)) and (data <= 2).mean() > 0.8
    empty = np.asarray(atac.X.sum(axis=1)).ravel() == 0
    assert (empty == ~mdata.obs["has_atac"].to_numpy()).all()
    assert abs((~mdata.obs["has_atac"]).mean() - 0.1) < 0.01


def _pair_distance(adata, a, b, min_cells=30):
    ct = adata.obs["cell_type"].astype(str).to_numpy()
    keep = ~adata.obs["is_doublet"].to_numpy() & adata.obs["has_atac"].to_numpy()
    ma, mb = keep & (ct == a), keep & (ct == b)
    assert ma.sum() >= min_cells and mb.sum() >= min_cells
    pa, pb = _pseudobulk(adata.X, ma), _pseudobulk(adata.X, mb)
    return np.abs(np.log1p(pa * 1e4) - np.log1p(pb * 1e4)).max()


def test_modality_specific_pairs(mdata):
    truth = mdata.uns["simulation"]
    (a1, b1), (a2, b2) = truth["atac_only_pairs"].iloc[0], truth["rna_only_pairs"].iloc[0]
    P = mdata["rna"].uns["simulation"]["cell_type_profiles"]
    Q = mdata["atac"].uns["simulation"]["accessibility_profiles"]
    # Exactly identical in the silent modality, different in the other.
    np.testing.assert_array_equal(P.loc[a1], P.loc[b1])
    np.testing.assert_array_equal(Q.loc[a2], Q.loc[b2])
    assert np.abs(Q.loc[a1] - Q.loc[b1]).max() > 0 and np.abs(P.loc[a2] - P.loc[b2]).max() > 0
    rna_spec = set(mdata["rna"].var["specific_to"])
    atac_spec = set(mdata["atac"].var["specific_to"])
    assert {a1, b1}.isdisjoint(rna_spec) and {a1, b1} <= atac_spec
    assert {a2, b2}.isdisjoint(atac_spec) and {a2, b2} <= rna_spec
    # Observed counts agree: the ATAC-only pair is much closer in RNA than the RNA-only pair, and vice versa.
    rna, atac = mdata["rna"], mdata["atac"]
    assert _pair_distance(rna, a1, b1) < 0.5 * _pair_distance(rna, a2, b2)
    assert _pair_distance(atac, a2, b2) < 0.5 * _pair_distance(atac, a1, b1)


def test_specific_regions_enriched_in_their_type(mdata):
    atac = mdata["atac"]
    ct = atac.obs["cell_type"].astype(str).to_numpy()
    totals = np.asarray(atac.X.sum(axis=1)).ravel()
    keep = (totals > 0) & ~atac.obs["is_doublet"].to_numpy()
    for leaf in sorted(set(atac.var["specific_to"]) - {"none"}):
        cols = np.flatnonzero(atac.var["specific_to"].to_numpy() == leaf)
        share = np.asarray(atac.X[:, cols].sum(axis=1)).ravel() / np.maximum(totals, 1)
        assert share[keep & (ct == leaf)].mean() > 3 * share[keep & (ct != leaf)].mean(), leaf


def test_multiome_deterministic_with_seed_and_its_rna_is_simulate_rna():
    """Same seed, same MuData; with no ATAC-only pair its RNA is simulate_rna's for the same arguments (both
    pass their parameters to one RNA simulator: a default or argument that drifts apart shows here)."""
    kw = dict(n_cells=300, n_genes=100, n_regions=200, missing_atac_fraction=0.1, seed=3)
    a, b = simulate_multiome(**kw), simulate_multiome(**kw)
    for mod in ("rna", "atac"):
        assert (a[mod].X != b[mod].X).nnz == 0
        pd.testing.assert_frame_equal(a[mod].obs, b[mod].obs)
    assert (simulate_multiome(**(kw | {"seed": 4}))["atac"].X != a["atac"].X).nnz > 0
    rna = simulate_rna(n_cells=300, n_genes=100, seed=3)
    paired = simulate_multiome(**(kw | {"n_atac_only_pairs": 0}))["rna"]
    assert (paired.X != rna.X).nnz == 0
    pd.testing.assert_frame_equal(paired.obs[list(rna.obs.columns)], rna.obs)
    pd.testing.assert_frame_equal(paired.var[list(rna.var.columns)], rna.var)


def test_bad_parameters():
    with pytest.raises(ValueError, match="ambient_fraction"):
        simulate_rna(n_cells=200, ambient_fraction=(0.3, 0.1))
    with pytest.raises(ValueError, match="sibling pairs"):
        simulate_multiome(n_cells=200, n_cell_types=4, n_atac_only_pairs=2, n_rna_only_pairs=1)
