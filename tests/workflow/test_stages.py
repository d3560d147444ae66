"""Stage helpers that the rules rely on, on small in-memory data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from rvi.stages import cell_qc, embedding, labels, report, training


def obs_frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(
        {
            "library": rng.choice(["l1", "l2", "l3"], n),
            "total_counts": rng.integers(50, 5000, n).astype(float),
            "n_genes": rng.integers(10, 1000, n),
            "mt_frac": rng.uniform(0, 0.4, n),
            "coarse": rng.choice(["A", "B", None], n),
        },
        index=[f"c{i}" for i in range(n)],
    )
    obs["dataset"] = obs["library"].map({"l1": "d1", "l2": "d1", "l3": "d2"})
    obs["fine"] = np.where(obs["coarse"].notna() & (rng.uniform(size=n) < 0.5), obs["coarse"] + "1", None)
    return obs


def test_stratified_split_covers_every_label_library_stratum():
    obs = obs_frame()
    label = training.finest_label(obs, ["coarse", "fine"])
    train, val = training.stratified_split(obs, label, "library", 0.2, seed=1)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(obs)
    strata = label.fillna("none").astype(str) + obs["library"]
    big = strata.value_counts()[lambda s: s >= 5].index
    assert set(strata.iloc[val]) >= set(big)
    assert abs(len(val) / len(obs) - 0.2) < 0.05
    again = training.stratified_split(obs, label, "library", 0.2, seed=1)
    assert np.array_equal(again[1], val)


def test_finest_label_prefers_finer_levels():
    obs = pd.DataFrame({"l1": ["A", "A", None], "l2": ["A1", None, None]})
    assert training.finest_label(obs, ["l1", "l2"]).tolist()[:2] == ["A1", "A"]
    assert pd.isna(training.finest_label(obs, ["l1", "l2"]).iloc[2])


def test_cell_qc_per_dataset_thresholds_and_doublets(tmp_path):
    obs = obs_frame()
    scr = pd.DataFrame(
        {"doublet_score": np.linspace(0, 1, len(obs)), "predicted_doublet": np.arange(len(obs)) % 10 == 0},
        index=obs.index,
    )
    thresholds = {
        "default": {"min_counts": 1000, "max_mt_frac": 0.3, "remove_predicted_doublets": True},
        "per_dataset": {"d2": {"min_counts": 100, "remove_predicted_doublets": False}},
    }
    table = cell_qc.cell_qc_table(obs, thresholds, "dataset", scr, library_key="library")
    assert table["library"].tolist() == obs["library"].tolist()
    d1 = (obs["dataset"] == "d1").to_numpy()
    expect_d1 = (obs["total_counts"] >= 1000) & (obs["mt_frac"] <= 0.3) & ~scr["predicted_doublet"]
    expect_d2 = (obs["total_counts"] >= 100) & (obs["mt_frac"] <= 0.3)
    assert table["pass_qc"].to_numpy().tolist() == np.where(d1, expect_d1, expect_d2).tolist()
    failing = table.loc[~table["pass_qc"], "fail_reasons"]
    assert (failing != "").all()
    assert "predicted_doublet" in set(",".join(failing).split(","))
    # the file round-trips as the stage writes it and the model stages read it
    table.index.name = "obs_name"
    table.to_csv(tmp_path / "cell_qc.csv")
    back = cell_qc.read_cell_qc(tmp_path / "cell_qc.csv", {"library_key": "library", "dataset_key": "dataset"})
    pd.testing.assert_frame_equal(back, table, check_dtype=False)


def test_knn_roundtrip(tmp_path):
    names = pd.Index([f"c{i}" for i in range(5)])
    conn = sp.random(5, 5, density=0.4, format="csr", random_state=0)
    dist = sp.random(5, 5, density=0.4, format="csr", random_state=1)
    embedding.save_knn(tmp_path / "knn.npz", names, conn, dist, 3)
    got_names, got_conn, got_dist = embedding.load_knn(tmp_path / "knn.npz")
    assert got_names.equals(names)
    assert (got_conn != conn).nnz == 0 and (got_dist != dist).nnz == 0


def test_history_frame_and_curves(tmp_path):
    history = {
        "elbo_train": pd.DataFrame({"elbo_train": [3.0, 2.0, 1.5]}),
        "elbo_validation": pd.DataFrame({"elbo_validation": [3.2, 2.4, 2.0]}),
        "kl_weight": pd.DataFrame({"kl_weight": [0.1, 0.2, 0.3]}),
    }
    frame = training.history_frame(history)
    assert list(frame.columns) == ["elbo_train", "elbo_validation", "kl_weight"] and len(frame) == 3
    training.plot_training_curves(frame, tmp_path / "curves.png", "t")
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_annotation_groups_fall_back_to_coarser_levels():
    table = pd.DataFrame({"cluster": ["0", "1", "2"], "l1": ["A", "B", None], "l2": ["A1", None, None]})
    groups, level = labels.annotation_groups(table, ["l1", "l2"], None)
    assert level == "l2" and groups.tolist()[:2] == ["A1", "B"] and pd.isna(groups.iloc[2])
    groups, level = labels.annotation_groups(table, [], None)
    assert level == "cluster" and groups.tolist() == ["0", "1", "2"]


def test_cre_precision_counts_overlaps_with_the_group_or_its_ancestors():
    truth = pd.DataFrame(
        {"cell_type": ["A1a", "A", "B1b"]}, index=pd.Index(["chr1:1000-1500", "chr1:5200-5700", "chr2:100-600"])
    )
    selected = pd.DataFrame(
        {
            "region": ["chr1-1000-2000", "chr1-5000-6000", "chr2-0-1000", "chr3-0-1000"],
            "group": ["A1a", "A1a", "A1a", "B1b"],
            "rank": [1, 2, 3, 1],
        }
    )
    parents = {"A1a": "A1", "A1": "A", "B1b": "B1", "B1": "B"}
    rows = {r["check"]: r for r in report.cre_precision_rows(selected, truth, top_n=10, parents=parents)}
    # A1a: own region (hit), lineage region A (hit), B1b region (miss); B1b: nothing on chr3 (miss).
    assert rows["cre_precision_top_n"]["value"] == pytest.approx(0.5)
    assert rows["cre_precision_top_n_exact_group"]["value"] == pytest.approx(0.25)


def test_doublet_auroc_row():
    gt = pd.DataFrame({"is_doublet": [True, False, False, True]}, index=list("abcd"))
    scores = pd.DataFrame({"doublet_score": [0.9, 0.1, 0.2, np.nan]}, index=list("abcd"))
    row = report.doublet_rows(gt, scores)[0]
    assert row["value"] == 1.0 and row["n"] == 3 and row["passed"]


def test_qc_columns_with_gaps_are_written_to_h5ad(tmp_path):
    import anndata as ad

    from rvi.stages.export import h5ad_safe_columns

    # cell_qc.csv read back: fail_reasons is text for failing cells only, so the passing cells' slice is an
    # object column of NaN; predicted_doublet is NaN where Scrublet skipped a small library.
    cells = ["a", "b", "c"]
    qc = pd.DataFrame(
        {
            "fail_reasons": pd.Series([np.nan, np.nan, np.nan], index=cells, dtype=object),
            "predicted_doublet": pd.Series([True, np.nan, False], index=cells, dtype=object),
            "total_counts": [10.0, 20.0, 30.0],
        },
        index=cells,
    )
    safe = h5ad_safe_columns(qc)
    ad.AnnData(np.zeros((3, 1), dtype=np.float32), obs=safe).write_h5ad(tmp_path / "x.h5ad")
    obs = ad.read_h5ad(tmp_path / "x.h5ad").obs
    assert obs["fail_reasons"].astype(str).tolist() == ["", "", ""]
    assert obs["predicted_doublet"].tolist()[::2] == [True, False] and pd.isna(obs["predicted_doublet"].iloc[1])
    assert obs["total_counts"].tolist() == [10.0, 20.0, 30.0]
