"""QC metrics, library drop rule, per-dataset cell filters, gene filter, summary and plots."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from matplotlib.figure import Figure

from rvi.io import save_figure
from rvi.plots import qc_histograms
from rvi.qc import (
    cell_qc_table,
    compute_qc_metrics,
    drop_low_quality_libraries,
    filter_cells,
    filter_genes,
    library_quality,
    qc_summary,
)
from rvi.simulate import simulate_rna


def _tiny():
    X = np.array([[5, 0, 3, 2], [0, 0, 0, 10], [1, 1, 1, 1]], dtype=np.float32)
    return ad.AnnData(X=sp.csr_matrix(X), var=pd.DataFrame(index=["MT-CO1", "GeneA", "mt-Nd1", "GeneB"]))


def test_metrics_on_handmade_matrix():
    a = _tiny()
    out = compute_qc_metrics(a)
    np.testing.assert_array_equal(out["total_counts"], [10, 10, 4])
    np.testing.assert_array_equal(out["n_genes"], [3, 1, 4])
    np.testing.assert_allclose(out["mt_frac"], [0.8, 0.0, 0.5])  # MT- and mt- both count
    assert a.var["mt"].tolist() == [True, False, True, False]
    dense = _tiny()
    dense.X = dense.X.toarray()
    pd.testing.assert_frame_equal(compute_qc_metrics(dense), out)
    no_mt = compute_qc_metrics(_tiny(), mt_prefixes=("chrM-",))
    assert (no_mt["mt_frac"] == 0).all()


def test_metrics_on_simulation():
    a = simulate_rna(n_cells=300, n_genes=100, seed=1)
    compute_qc_metrics(a)
    np.testing.assert_allclose(a.obs["total_counts"], np.asarray(a.X.sum(axis=1)).ravel())
    assert 0.005 < a.obs["mt_frac"].median() < 0.2


def _obs_two_libraries():
    # lib_bad: 5 % of cells above 1500 counts; lib_good: 50 %.
    counts = np.r_[np.full(95, 500), np.full(5, 2000), np.full(50, 500), np.full(50, 2000)]
    return pd.DataFrame(
        {
            "library": ["lib_bad"] * 100 + ["lib_good"] * 100,
            "dataset": ["d1"] * 100 + ["d2"] * 100,
            "total_counts": counts.astype(float),
            "n_genes": counts // 2,
            "mt_frac": 0.05,
        },
        index=[f"c{i}" for i in range(200)],
    )


def test_library_drop_rule_and_thresholds():
    obs = _obs_two_libraries()
    table = library_quality(obs)
    assert table.loc["lib_bad", "frac_above_min_counts"] == pytest.approx(0.05)
    assert table["passed"].to_dict() == {"lib_bad": False, "lib_good": True}
    assert library_quality(obs, min_frac=0.04)["passed"].all()
    # "more than" min_counts: a cell exactly at the threshold does not count.
    assert not library_quality(obs, min_counts=2000)["passed"].any()
    a = ad.AnnData(X=sp.csr_matrix((200, 3), dtype=np.float32), obs=obs)
    a.obs["library"] = a.obs["library"].astype("category")
    kept, dropped = drop_low_quality_libraries(a)
    assert dropped == ["lib_bad"] and kept.n_obs == 100
    assert list(kept.obs["library"].cat.categories) == ["lib_good"]


def test_per_dataset_cell_filters():
    obs = _obs_two_libraries()
    obs["doublet_score"] = np.where(np.arange(200) % 10 == 0, 0.9, 0.1)
    obs.loc["c1", "doublet_score"] = np.nan  # unscored cells (small library) are not removed
    obs.loc["c1", "total_counts"] = 2000.0
    thresholds = {"default": {"min_counts": 1000, "max_doublet_score": 0.5}, "d2": {"min_counts": 100}}
    table = cell_qc_table(obs, thresholds)
    d1 = obs["dataset"] == "d1"
    assert not table.loc["c1", "fail_max_doublet_score"] and table.loc["c1", "keep"]
    assert table.loc[d1 & (obs["total_counts"] < 1000), "fail_min_counts"].all()
    assert not table.loc[~d1, "fail_min_counts"].any()  # d2 overrides the default
    assert table.loc[obs["doublet_score"] > 0.5, "fail_max_doublet_score"].all()
    expected = ~((d1 & (obs["total_counts"] < 1000)) | (obs["doublet_score"] > 0.5))
    assert (table["keep"] == expected).all()
    a = ad.AnnData(X=sp.csr_matrix((200, 2), dtype=np.float32), obs=obs)
    assert filter_cells(a, thresholds).n_obs == int(expected.sum())
    with pytest.raises(ValueError, match=r"unknown QC threshold keys \['min_count'\]"):
        cell_qc_table(obs, {"default": {"min_count": 5}})
    with pytest.raises(ValueError, match="needs obs column 'atac_fragments'"):
        cell_qc_table(obs, {"d1": {"min_fragments": 5}})


def test_filter_genes():
    a = _tiny()
    assert list(filter_genes(a, min_cells=2).var_names) == ["MT-CO1", "mt-Nd1", "GeneB"]
    assert filter_genes(a, min_cells=3).var_names.tolist() == ["GeneB"]


def test_summary_and_plots(tmp_path):
    obs = _obs_two_libraries()
    summary = qc_summary(obs)
    assert summary.columns.tolist() == [
        "library",
        "dataset",
        "n_cells",
        "median_total_counts",
        "median_n_genes",
        "median_mt_frac",
        "frac_above_min_counts",
        "passed",
    ]
    assert summary.set_index("library").loc["lib_good", "median_total_counts"] == 1250
    fig = qc_histograms(obs, thresholds={"default": {"min_counts": 1000, "max_mt_frac": 0.2}})
    assert isinstance(fig, Figure) and len(fig.axes) == 2 * 3
    save_figure(fig, tmp_path / "qc.png")
    assert (tmp_path / "qc.png").stat().st_size > 0
