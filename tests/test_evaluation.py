"""Evaluation on hand-built graphs with known metric values, and the bad-input cases of the evaluate stage."""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from rvi.evaluation import EmbeddingError, align_embedding, best_per_family, score_embeddings
from rvi.evaluation.embeddings import modality_slices, read_embedding
from rvi.metrics import neighbourhood_benchmark, neighbourhood_correlation
from rvi.metrics.neighbourhood import random_knn_graph

# Two cell types whose cells have identical marker counts, so any same-type pair correlates exactly 1.
PROFILES = np.array([[9, 1, 1, 0, 2, 0], [0, 2, 0, 9, 1, 1]], dtype=np.float32)
PER_GROUP = 4  # cells per type and library


def _hand_data():
    """32 cells: 4 libraries (L0, L1 in dataset A; L2, L3 in B) x 2 types x 4 cells; chemistry v2/v3."""
    lib = np.repeat(np.arange(4), 2 * PER_GROUP)
    ctype = np.tile(np.repeat([0, 1], PER_GROUP), 4)
    obs = pd.DataFrame(
        {
            "library": [f"L{i}" for i in lib],
            "dataset": np.where(lib < 2, "A", "B"),
            "chemistry": np.where(lib % 2 == 0, "v2", "v3"),
            "cell_type": [f"t{t}" for t in ctype],
        },
        index=[f"c{i}" for i in range(len(lib))],
    )
    adata = ad.AnnData(X=sp.csr_matrix(PROFILES[ctype]), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(6)]))
    return adata, ctype, lib


def _graph(ctype, lib, same_library_only: bool) -> sp.csr_matrix:
    same = ctype[:, None] == ctype[None, :]
    if same_library_only:
        same &= lib[:, None] == lib[None, :]
    np.fill_diagonal(same, False)
    return sp.csr_matrix(same.astype(np.float64))


MARKERS = [f"g{i}" for i in range(6)]


def _run(adata, C, **kw):
    return neighbourhood_correlation(
        adata, connectivities=C, library_key="library", dataset_key="dataset", marker_genes=MARKERS, **kw
    )


def test_graph_separating_libraries_has_known_metrics():
    adata, ctype, lib = _hand_data()
    h = _run(adata, _graph(ctype, lib, True), random_baseline=False).headline
    n = adata.n_obs
    degree = PER_GROUP - 1
    # Isolation: observed 1 (no cell has cross neighbours) / (1 - p_match)^k with p_match = target / (n - 1).
    expected_lib = (1 - 2 * PER_GROUP / (n - 1)) ** degree  # the other library of the dataset: 8 cells
    expected_ds = (1 - 16 / (n - 1)) ** degree  # the other dataset: 16 cells
    assert h["H1"] == pytest.approx(1.0) and h["H2"] == pytest.approx(0.0, abs=1e-9)
    for key in ("H3", "H4", "H6", "H7", "H8", "H10", "H11", "H12", "H14"):
        assert np.isnan(h[key]), key
    assert h["H5"] == pytest.approx(1 / expected_lib) and h["H5"] > 2
    assert h["H9"] == pytest.approx(1 / expected_ds) and h["H9"] > 8
    # Composites: isolation scores 1 - clip(H5, 0, 2) = -1, the NaN parts skipped.
    assert h["bio"] == pytest.approx(1.0)
    assert h["library_integration"] == pytest.approx(-1.0)
    assert h["dataset_integration"] == pytest.approx(-1.0)
    assert h["batch"] == pytest.approx(-1.0)
    assert h["total"] == pytest.approx(0.6 - 0.4)


def test_graph_mixing_libraries_has_known_metrics():
    adata, ctype, lib = _hand_data()
    res = _run(adata, _graph(ctype, lib, False), technical_covariate_keys=["chemistry"], random_baseline=False)
    h = res.headline
    for key, value in {
        "H1": 1,
        "H3": 1,
        "H7": 1,
        "H11": 1,
        "H12": 1,
        "H14": 1,
        "bio": 1,
        "batch": 1,
        "total": 1,
    }.items():
        assert h[key] == pytest.approx(value), key
    for key in ("H2", "H4", "H5", "H6", "H8", "H9", "H10"):
        assert h[key] == pytest.approx(0.0, abs=1e-9), key
    assert (res.failure_modes["failure_mode"] == "ideal").all()


def test_h13_across_models_on_hand_graphs():
    adata, ctype, lib = _hand_data()
    # Embeddings that give exactly the hand graphs: types far apart, libraries far apart or on top.
    sep = np.column_stack([ctype * 100.0, lib * 10.0]) + np.random.default_rng(0).normal(scale=0.01, size=(32, 2))
    mixed = sep.copy()
    mixed[:, 1] = 0.0
    table, results = neighbourhood_benchmark(
        adata,
        {"separated": sep, "mixed": mixed},
        library_key="library",
        dataset_key="dataset",
        marker_genes=MARKERS,
        n_neighbors=3,
    )
    assert table.loc["separated", "H13"] == pytest.approx(1.0)
    assert table.loc["mixed", "H13"] == pytest.approx(0.0)
    # The mixed model finds cross-dataset partners the separated one lacks: under-integration (the
    # threshold is the 25th percentile of correlations that are all 1 up to rounding, so not every cell).
    assert (results["separated"].failure_modes["cross_dataset"] == "under_integration").mean() > 0.5
    assert not (results["mixed"].failure_modes["cross_dataset"] == "under_integration").any()


def test_random_graph_isolation_ratio_near_one():
    rng = np.random.default_rng(1)
    n, k = 6000, 5
    lib = rng.integers(0, 10, n)
    adata = ad.AnnData(
        X=sp.csr_matrix(rng.poisson(3.0, size=(n, 8)).astype(np.float32)),
        obs=pd.DataFrame(
            {"library": lib.astype(str), "dataset": (lib // 2).astype(str)}, index=[f"c{i}" for i in range(n)]
        ),
        var=pd.DataFrame(index=[f"g{i}" for i in range(8)]),
    )
    ring = sp.csr_matrix(
        (np.ones(n * k), (np.repeat(np.arange(n), k), (np.arange(n)[:, None] + np.arange(1, k + 1)).ravel() % n))
    )
    h = neighbourhood_correlation(
        adata,
        connectivities=random_knn_graph(ring, seed=2),
        library_key="library",
        dataset_key="dataset",
        marker_genes=[f"g{i}" for i in range(8)],
        random_baseline=False,
    ).headline
    # p_match ~ 0.1, so ~59% of cells lack a cross-library neighbour on a random graph: observed ~ expected.
    assert h["H5"] == pytest.approx(1.0, abs=0.05)


# ------------------------------------------------------------------ bad input
def test_library_in_two_datasets_names_library_and_datasets():
    adata, ctype, lib = _hand_data()
    ds = adata.obs["dataset"].to_numpy().copy()
    ds[0] = "B"  # one cell of L0 in dataset B
    adata.obs["dataset"] = ds
    with pytest.raises(ValueError, match=r"library 'L0' -> datasets \['A', 'B'\]"):
        _run(adata, _graph(ctype, lib, False), random_baseline=False)


def test_nan_covariates_warned_and_excluded():
    adata, ctype, lib = _hand_data()
    adata.obs["dataset"] = adata.obs["dataset"].where(adata.obs["library"] != "L3")
    adata.obs["chemistry"] = adata.obs["chemistry"].where(adata.obs["library"] != "L0")
    with pytest.warns(UserWarning) as record:
        res = _run(adata, _graph(ctype, lib, False), technical_covariate_keys=["chemistry"], random_baseline=False)
    messages = " ".join(str(w.message) for w in record)
    assert "8 cells have no 'dataset'" in messages and "'chemistry'" in messages
    pc = res.per_cell
    l3 = (adata.obs["library"] == "L3").to_numpy()
    # L3 cells have no cross-level statistics and count as nobody's cross-level neighbour.
    assert pc.loc[l3, "corr_cross_dataset"].isna().all() and (pc.loc[l3, "n_between_libraries"] == 0).all()
    assert pc.loc[l3, "n_target_cross_library"].isna().all()
    # Same-type partners in the other dataset: A cells see L2 only (4), L2 cells see L0 + L1 (8).
    expected = np.where(adata.obs["dataset"][~l3] == "A", PER_GROUP, 2 * PER_GROUP)
    assert np.array_equal(pc.loc[~l3, "n_cross_dataset"], expected)
    assert np.array_equal(pc["n_between_libraries"], pc["n_cross_library"] + pc["n_cross_dataset"])
    # L2 (dataset B) lost its only cross-library partner: not eligible, so H5 stays the others' 0.
    assert res.headline["H5"] == pytest.approx(0.0)
    l0 = (adata.obs["library"] == "L0").to_numpy()
    assert pc.loc[l0, "corr_cross_technical"].isna().all() and res.headline["H14"] == pytest.approx(1.0)


def test_markers_absent_from_var_are_reported_and_skipped():
    adata, ctype, lib = _hand_data()
    emb = np.column_stack([ctype * 100.0, np.zeros(32)]) + np.random.default_rng(0).normal(scale=0.01, size=(32, 2))
    with pytest.warns(UserWarning, match="NOT_A_GENE"):
        table, _ = neighbourhood_benchmark(
            adata,
            {"m": emb},
            library_key="library",
            marker_genes=[*MARKERS, "NOT_A_GENE"],
            n_neighbors=3,
            random_baseline=False,
        )
    assert table.attrs["missing_markers"] == ["NOT_A_GENE"] and table.attrs["marker_genes"] == MARKERS
    assert table.loc["m", "H1"] == pytest.approx(1.0)


def test_embedding_with_nan_rows_or_wrong_cells_is_named():
    names = pd.Index([f"c{i}" for i in range(5)])
    good = pd.DataFrame(np.ones((5, 2)), index=names)
    assert align_embedding(good.iloc[::-1], names, "ok").shape == (5, 2)
    bad = good.copy()
    bad.iloc[2, 1] = np.nan
    with pytest.raises(EmbeddingError, match=r"'harmony' has 1 rows with NaN"):
        align_embedding(bad, names, "harmony")
    with pytest.raises(EmbeddingError, match=r"'ext' has 4 cells, the evaluated study has 5"):
        align_embedding(good.iloc[:4], names, "ext")
    with pytest.raises(EmbeddingError, match="'scvi' has shape"):
        score_embeddings(ad.AnnData(X=np.ones((5, 3))), {"scvi": np.ones((4, 2))}, library_key="library")


def test_read_embedding_sources(tmp_path):
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]}, index=["x", "y"])
    frame.to_parquet(tmp_path / "e.parquet")
    assert read_embedding(str(tmp_path / "e.parquet"), "e").equals(frame)
    adata = ad.AnnData(obs=pd.DataFrame(index=["x", "y"]), obsm={"X_ext": frame.to_numpy()})
    adata.write_h5ad(tmp_path / "e.h5ad")
    got = read_embedding({"path": str(tmp_path / "e.h5ad"), "obsm": "X_ext"}, "e2")
    assert np.array_equal(got.to_numpy(), frame.to_numpy()) and list(got.index) == ["x", "y"]
    with pytest.raises(EmbeddingError, match=r"'e3'.*no obsm\['X_missing'\]"):
        read_embedding(f"{tmp_path / 'e.h5ad'}:X_missing", "e3")
    with pytest.raises(EmbeddingError, match="'e4': file .* does not exist"):
        read_embedding(str(tmp_path / "none.parquet"), "e4")
    slices = modality_slices(pd.DataFrame(np.ones((2, 3)), columns=["atac_z0", "rna_z0", "rna_z1"]), "mm")
    assert {k: list(v.columns) for k, v in slices.items()} == {"mm_atac": ["atac_z0"], "mm_rna": ["rna_z0", "rna_z1"]}


def test_no_labels_gives_label_free_only_with_a_note():
    adata, ctype, lib = _hand_data()
    sep = np.column_stack([ctype * 100.0, lib * 10.0]) + np.random.default_rng(0).normal(scale=0.01, size=(32, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ev = score_embeddings(
            adata,
            {"rvi": sep},
            library_key="library",
            dataset_key="dataset",
            label_levels=["label_l1"],
            marker_genes=MARKERS,
            n_neighbors=3,
        )
    assert ev.scib is None and any("no labels" in n for n in ev.notes)
    assert ev.composite.loc["rvi", ["scib_bio", "scib_batch", "scib_total"]].isna().all()
    assert ev.neighbourhood.loc["rvi", "H1"] == pytest.approx(1.0) and "random_knn" in ev.neighbourhood.index
    best = best_per_family(ev.composite)
    assert list(best["metric"]) == ["bio", "batch", "total"] and set(best["best"]) == {"rvi"}
    assert set(ev.per_cell["rvi"].columns) >= {"corr_same_library", "failure_mode"}


# ------------------------------------------------------------------ baselines
def test_harmony_removes_a_batch_shift():
    from rvi.evaluation.baselines import harmony_embedding
    from rvi.metrics import batch_mixing_score

    rng = np.random.default_rng(0)
    n = 400
    batch = np.repeat(["b0", "b1"], n // 2)
    ctype = rng.integers(0, 2, n)
    pcs = rng.normal(size=(n, 10)) + 6.0 * ctype[:, None] * np.eye(10)[0]
    pcs[batch == "b1", 1] += 8.0  # a pure batch shift along PC2
    z = harmony_embedding(pcs, pd.DataFrame({"library": batch}), "library", threads=1)
    assert z.shape == pcs.shape and np.isfinite(z).all()
    assert batch_mixing_score(z, batch) > batch_mixing_score(pcs, batch) + 0.3
    single = harmony_embedding(pcs, pd.DataFrame({"library": ["b0"] * n}), "library")
    assert np.allclose(single, pcs)
    with pytest.raises(ValueError, match="1 cells have no 'library'"):
        harmony_embedding(pcs, pd.DataFrame({"library": [None, *batch[1:]]}), "library")


def test_chunked_edge_statistics_match_one_chunk(monkeypatch):
    from rvi.metrics.neighbourhood import cell_stats

    rng = np.random.default_rng(3)
    n = 300
    adata = ad.AnnData(
        X=sp.csr_matrix(rng.poisson(2.0, size=(n, 12)).astype(np.float32)),
        obs=pd.DataFrame({"library": rng.integers(0, 3, n).astype(str)}, index=[f"c{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(12)]),
    )
    emb = rng.normal(size=(n, 4))
    kw = dict(library_key="library", marker_genes=list(adata.var_names), n_neighbors=8, random_baseline=False)
    whole = neighbourhood_correlation(adata, emb, **kw).per_cell
    monkeypatch.setattr(cell_stats, "_EDGE_CHUNK", 7)  # many blocks, most cells split from their neighbours' block
    chunked = neighbourhood_correlation(adata, emb, **kw).per_cell
    pd.testing.assert_frame_equal(whole, chunked)
