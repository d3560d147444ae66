"""Scrublet per library: detection quality on the demo data, the v-score gene filter, small libraries,
retries, plots."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score

import rvi.doublets as doublets
from rvi.doublets import SCRUBLET_COLUMNS, run_scrublet, scrublet_library, vscore_genes
from rvi.plots import doublet_scores
from rvi.simulate import simulate_demo, simulate_rna


@pytest.fixture(scope="module")
def demo_rna():
    # The shipped demo (default parameters) in memory: the same counts write_demo_dataset puts in the
    # 10x files (test_io checks that equality), without paying for the fragment files here.
    mdata = simulate_demo()
    return mdata["rna"], mdata.obs


def test_scrublet_detects_simulated_doublets(demo_rna):
    adata, truth = demo_rna
    scores = run_scrublet(adata, expected_doublet_rate=0.06)
    assert scores.columns.tolist() == SCRUBLET_COLUMNS
    assert (scores["obs_name"] == adata.obs_names).all()
    assert (scores["scrublet_status"] == "ok").all()
    auroc = roc_auc_score(truth["is_doublet"], scores["doublet_score"])
    print(f"Scrublet AUROC on the demo data: {auroc:.3f}")
    assert auroc >= 0.85
    # Predicted doublets are mostly true doublets.
    pred = scores["predicted_doublet"].to_numpy(dtype=bool)
    assert truth["is_doublet"].to_numpy()[pred].mean() > 0.5


def test_small_library_gets_nan():
    a = simulate_rna(n_cells=300, n_genes=100, n_datasets=1, libraries_per_dataset=1, seed=0)
    out = run_scrublet(a, min_cells=500)
    assert out["doublet_score"].isna().all() and out["predicted_doublet"].isna().all()
    assert (out["scrublet_status"] == "too_few_cells").all()
    empty = run_scrublet(a[:0])
    assert len(empty) == 0 and empty.columns.tolist() == SCRUBLET_COLUMNS


def test_retry_with_fewer_pcs(monkeypatch):
    a = simulate_rna(n_cells=600, n_genes=150, n_datasets=1, libraries_per_dataset=1, seed=1)
    real = doublets._scrub
    seen = []

    def picky(X, rate, n_pcs, pctl, seed):
        seen.append(n_pcs)
        if n_pcs > 10:
            raise ValueError("k must be less than the number of usable genes")
        return real(X, rate, n_pcs, pctl, seed)

    monkeypatch.setattr(doublets, "_scrub", picky)
    out = scrublet_library(a.X, a.obs_names, library="lib1")
    assert seen == [30, 20, 10]
    assert (out["scrublet_status"] == "retried_n_pcs=10").all() and out["doublet_score"].notna().all()

    monkeypatch.setattr(doublets, "_scrub", lambda *args: (_ for _ in ()).throw(ValueError("always")))
    out = scrublet_library(a.X, a.obs_names, library="lib1")
    assert out["doublet_score"].isna().all() and out["scrublet_status"].iloc[0] == "failed: ValueError: always"


def test_fixed_threshold_and_plot():
    a = simulate_rna(n_cells=600, n_genes=150, n_datasets=1, libraries_per_dataset=1, seed=2)
    out = scrublet_library(a.X, a.obs_names, library="lib1", threshold=0.0)
    assert out["predicted_doublet"].to_numpy(dtype=bool).mean() > 0.95
    small = scrublet_library(a.X[:100], a.obs_names[:100], library="lib2")
    fig = doublet_scores(pd.concat([out, small]))
    assert isinstance(fig, Figure) and sum(ax.get_visible() for ax in fig.axes) == 2
    assert np.isfinite(out["doublet_score"]).all()


def test_vscore_filter_keeps_the_overdispersed_genes():
    # 40 Poisson genes and 10 overdispersed ones (negative binomial, same means): the top 20 % by v-score are
    # the overdispersed ones; genes below min_counts in min_cells cells are dropped whatever their score.
    rng = np.random.default_rng(0)
    means = np.tile(np.geomspace(0.5, 20, 10), 5)
    poisson = rng.poisson(means[:40], size=(800, 40))
    overdispersed = rng.negative_binomial(1.0, 1.0 / (1.0 + means[40:]), size=(800, 10))
    counts = sp.csr_matrix(np.hstack([poisson, overdispersed]).astype(float))
    keep = vscore_genes(counts, min_vscore_pctl=80)
    assert set(keep) <= set(range(40, 50)) and len(keep) >= 8
    rare = counts.tolil()
    rare[:, 45] = 0
    rare[:2, 45] = 50  # huge variance, in 2 cells only
    assert 45 not in vscore_genes(sp.csr_matrix(rare), min_vscore_pctl=80)
