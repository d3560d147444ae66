"""Behavioural tests for rvi.metrics on tiny synthetic data (a few hundred cells)."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from rvi.metrics import (
    batch_mixing_score,
    integration_failure_rate,
    knn_label_accuracy,
    load_marker_table,
    neighbour_masks,
    neighbourhood_benchmark,
    neighbourhood_correlation,
    pca_baseline,
    scib_benchmark,
    stratified_subsample,
)
from rvi.metrics.neighbourhood import average_profile_correlation, knn_connectivities, marker_profiles, mask_matrix

N_TYPES = 3


def _counts_data(n=240, n_libraries=4, seed=0):
    """Poisson counts for 3 cell types over 4 libraries (libraries 0/1 -> dataset A, 2/3 -> B)."""
    rng = np.random.default_rng(seed)
    markers = load_marker_table()["gene"].drop_duplicates().tolist()
    genes = markers[:30] + [f"G{i}" for i in range(30)]
    ctype = rng.integers(0, N_TYPES, n)
    lib = rng.integers(0, n_libraries, n)
    base = rng.gamma(2.0, 1.0, size=len(genes))
    prog = np.ones((N_TYPES, len(genes)))
    for t in range(N_TYPES):
        prog[t, t * 10 : (t + 1) * 10] = 12.0  # 10 marker genes per type
    mu = base * prog[ctype]
    counts = rng.poisson(mu).astype(np.float32)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type{t}" for t in ctype]),
            "library": pd.Categorical([f"lib{b}" for b in lib]),
            "dataset": pd.Categorical(np.where(lib < n_libraries // 2, "A", "B")),
            "chemistry": pd.Categorical(np.where(lib % 2 == 0, "v2", "v3")),
        },
        index=[f"c{i}" for i in range(n)],
    )
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=genes))
    adata.layers["counts"] = adata.X.copy()
    return adata, ctype, lib


def _embeddings(ctype, lib, seed=0):
    """A mixed (batch-free) and a batch-separated embedding with the same cell-type structure."""
    rng = np.random.default_rng(seed)
    n = len(ctype)
    centres = rng.normal(scale=6.0, size=(N_TYPES, 8))
    mixed = centres[ctype] + rng.normal(size=(n, 8))
    separated = mixed.copy()
    separated[:, 0] += 40.0 * lib  # every library (and so every chemistry) in its own island
    return mixed.astype(np.float32), separated.astype(np.float32)


@pytest.fixture(scope="module")
def data():
    return _counts_data()


# ------------------------------------------------------------------ label-free batch mixing
def test_batch_mixing_orders_mixed_above_separated(data):
    adata, ctype, lib = data
    mixed, separated = _embeddings(ctype, lib)
    batch = adata.obs["chemistry"].to_numpy()
    s_mixed = batch_mixing_score(mixed, batch, k=15)
    s_sep = batch_mixing_score(separated, batch, k=15)
    assert s_mixed > 0.8
    assert s_sep < 0.1
    with pytest.warns(UserWarning):
        assert np.isnan(batch_mixing_score(mixed, np.zeros(len(batch))))


# ------------------------------------------------------------------ scib-metrics
def test_scib_benchmark_orders_batch_scores_and_total(data):
    adata, ctype, lib = data
    mixed, separated = _embeddings(ctype, lib)
    res = scib_benchmark(
        adata, {"mixed": mixed, "separated": separated}, label_key="cell_type", batch_key="chemistry", layer="counts"
    )
    assert list(res.index) == ["mixed", "separated"]
    for col in ("iLISI", "KBET", "Graph connectivity", "PCR comparison", "cLISI", "Bio conservation", "Total"):
        assert col in res.columns
    assert res.loc["mixed", "iLISI"] > res.loc["separated", "iLISI"] + 0.3
    assert res.loc["mixed", "Batch correction"] > res.loc["separated", "Batch correction"]
    np.testing.assert_allclose(res["Total"], 0.6 * res["Bio conservation"] + 0.4 * res["Batch correction"])
    # Too few cells for the 90-neighbour LISI graph is a clear error, not a crash deep inside scib-metrics.
    with pytest.raises(ValueError, match="more than 90 cells"):
        scib_benchmark(adata[:60], {"m": mixed[:60]}, label_key="cell_type", batch_key="chemistry", layer="counts")


def test_pca_baseline_drops_depth_pc1():
    rng = np.random.default_rng(1)
    n, g = 300, 200
    depth = rng.lognormal(mean=0.0, sigma=1.2, size=n)  # strong sequencing-depth variation
    mu = 0.3 * depth[:, None] * rng.gamma(1.0, 1.0, size=g)[None, :]
    depth_data = ad.AnnData(X=rng.poisson(mu).astype(np.float32))
    emb, info = pca_baseline(depth_data, n_comps=20, return_info=True)
    assert info["dropped_pc1"] and abs(info["pc1_total_counts_corr"]) > 0.5
    assert emb.shape == (n, 19)

    # Same depth distribution per type, composition differs: PC1 is biology and must be kept.
    ctype = rng.integers(0, 2, n)
    prof = np.full((2, g), 0.5)
    prof[0, : g // 2] = prof[1, g // 2 :] = 5.0
    type_data = ad.AnnData(X=rng.poisson(prof[ctype]).astype(np.float32))
    emb, info = pca_baseline(type_data, n_comps=20, return_info=True)
    assert not info["dropped_pc1"] and emb.shape == (n, 20)


def test_stratified_subsample_keeps_strata_and_merges_singletons():
    obs = pd.DataFrame(
        {
            "label": ["a"] * 500 + ["b"] * 100 + ["rare", "rare"],
            "lib": ["x"] * 250 + ["y"] * 250 + ["x"] * 50 + ["y"] * 50 + ["x", "y"],
        }
    )
    idx = stratified_subsample(obs, "label", "lib", n=60, seed=0)
    assert len(idx) == 60 and len(np.unique(idx)) == 60
    sub = obs.iloc[idx]
    assert set(sub["label"]) == {"a", "b", "rare"}
    # The two singleton strata (rare/x, rare/y) are pooled into one label stratum that gets one cell.
    assert (sub["label"] == "rare").sum() == 1
    assert np.array_equal(idx, stratified_subsample(obs, "label", "lib", n=60, seed=0))


# ------------------------------------------------------------------ neighbourhood correlation
def test_average_profile_correlation_matches_dense_reference(data):
    adata, ctype, lib = data
    mixed, _ = _embeddings(ctype, lib)
    C = knn_connectivities(mixed, n_neighbors=10)
    P = marker_profiles(adata.X, np.arange(adata.n_vars))
    masks = neighbour_masks(C, adata.obs["library"].to_numpy())
    M = mask_matrix(C, masks["same_library"])
    got = average_profile_correlation(M, P)
    Pd, Md = P.toarray(), M.toarray()
    for i in range(0, adata.n_obs, 17):
        if Md[i].sum() == 0:
            assert np.isnan(got[i])
            continue
        avg = Md[i] @ Pd / Md[i].sum()
        np.testing.assert_allclose(got[i], np.corrcoef(Pd[i], avg)[0, 1], rtol=1e-8, atol=1e-10)


def test_between_libraries_is_cross_library_plus_cross_dataset(data):
    adata, ctype, lib = data
    mixed, _ = _embeddings(ctype, lib)
    C = knn_connectivities(mixed, n_neighbors=15)
    masks = neighbour_masks(C, adata.obs["library"].to_numpy(), adata.obs["dataset"].to_numpy())
    between = mask_matrix(C, masks["between_libraries"])
    parts = mask_matrix(C, masks["cross_library"]) + mask_matrix(C, masks["cross_dataset"])
    assert masks["cross_library"].any() and masks["cross_dataset"].any()
    assert (between != parts).nnz == 0
    assert not (masks["cross_library"] & masks["cross_dataset"]).any()

    res = neighbourhood_correlation(
        adata,
        connectivities=C,
        library_key="library",
        dataset_key="dataset",
        technical_covariate_keys=["chemistry"],
        label_keys=["cell_type"],
        random_baseline=False,
    )
    pc = res.per_cell
    assert np.array_equal(pc["n_between_libraries"], pc["n_cross_library"] + pc["n_cross_dataset"])
    np.testing.assert_allclose(
        pc["weight_between_libraries"], pc["weight_cross_library"] + pc["weight_cross_dataset"], rtol=1e-12
    )
    assert np.isfinite(res.headline[["H1", "H3", "H7", "H11", "H12", "H14"]].astype(float)).all()


def test_library_in_two_datasets_raises(data):
    adata, _, _ = data
    bad = adata.copy()
    ds = bad.obs["dataset"].astype(str).to_numpy().copy()
    first_lib1 = np.flatnonzero(bad.obs["library"].to_numpy() == "lib1")[0]
    ds[first_lib1] = "B"
    bad.obs["dataset"] = ds
    emb = np.random.default_rng(0).normal(size=(bad.n_obs, 5))
    with pytest.raises(ValueError, match="lib1"):
        neighbourhood_correlation(bad, emb, library_key="library", dataset_key="dataset", random_baseline=False)


def test_library_only_gives_nan_dataset_outputs(data):
    adata, ctype, lib = data
    mixed, separated = _embeddings(ctype, lib)
    # No label keys: data-driven markers come from Leiden clusters (the label-free path).
    table, results = neighbourhood_benchmark(adata, {"mixed": mixed, "separated": separated}, library_key="library")
    for key in ("H7", "H8", "H9", "H10", "H12", "H13", "H14", "dataset_integration"):
        assert table[key].isna().all(), key
    assert results["mixed"].per_cell["corr_cross_dataset"].isna().all()
    assert np.isfinite(table.loc["mixed", ["H1", "H3", "H11", "bio", "batch", "total"]].to_numpy(dtype=float)).all()
    assert np.isnan(table.loc["separated", "H3"]) and table.loc["separated", "library_integration"] < 0
    # Mixing cross-chemistry libraries helps cross-library agreement; separating them isolates cells.
    assert table.loc["mixed", "H3"] > table.loc["random_knn", "H3"]
    assert table.loc["separated", "H5"] > table.loc["mixed", "H5"]
    assert table.loc["random_knn", "H1"] < table.loc["mixed", "H1"]
    fm = results["mixed"].failure_modes
    assert set(fm.columns) == {"within_library", "cross_library", "cross_dataset", "failure_mode"}
    assert fm["cross_dataset"].isna().all()


def test_integration_failure_rate():
    corr = {
        "good": np.array([0.8, 0.7, 0.1, np.nan]),
        "bad": np.array([np.nan, 0.1, 0.1, np.nan]),
    }
    rate = integration_failure_rate(corr)
    # Eligible cells: best model > 0.4 -> cells 0 and 1.
    assert rate["good"] == 0.0
    assert rate["bad"] == 1.0


def test_knn_label_accuracy_reads_label_information_not_chance():
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 60)
    separated = rng.normal(size=(180, 4)) + 4.0 * np.eye(4)[np.repeat([0, 1, 2], 60)]
    assert knn_label_accuracy(separated, labels) > 0.95
    assert knn_label_accuracy(rng.normal(size=(180, 4)), labels) < 0.55  # chance is 1/3
    with pytest.raises(ValueError, match="180 cells in the embedding but 179 labels"):
        knn_label_accuracy(separated, labels[:-1])
