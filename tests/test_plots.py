"""rvi.plots: unlabelled cells grey and underneath, one colour per category, readable titles, scales
that span the data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from rvi.plots import UNLABELLED_COLOUR, attribution_panels, attribution_title, training_curves, umap_panels


def _coords(n=200, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.normal(size=(n, 2)), index=[f"c{i}" for i in range(n)], columns=["UMAP1", "UMAP2"])


def test_unlabelled_cells_are_grey_and_drawn_first():
    coords = _coords()
    labels = pd.Series(
        np.where(np.arange(200) % 3 == 0, None, np.where(np.arange(200) % 2, "B", "A")), index=coords.index
    )
    frame = pd.DataFrame({"label": labels, "partial": labels.fillna("unassigned")})
    fig = umap_panels(coords, frame, ["label", "partial"])
    for ax in fig.axes[:2]:
        first = ax.collections[0]
        assert np.allclose(first.get_facecolor()[0], to_rgba(UNLABELLED_COLOUR))
        assert len(first.get_offsets()) == int(labels.isna().sum())
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["unlabelled", "A", "B"]
    # the same category has the same colour in both panels
    a0, a1 = (ax.collections[1].get_facecolor()[0] for ax in fig.axes[:2])
    assert np.allclose(a0, a1)


def test_many_categories_are_named_at_centroids_not_in_a_legend():
    coords = _coords(400)
    frame = pd.DataFrame({"leiden": [str(i % 40) for i in range(400)]}, index=coords.index)
    ax = umap_panels(coords, frame, ["leiden"]).axes[0]
    assert ax.get_legend() is None
    assert {t.get_text() for t in ax.texts} == {str(i) for i in range(40)}
    assert ax.get_title() == "leiden (40)"


def test_umap_panels_name_missing_columns():
    with pytest.raises(ValueError, match="none of the columns"):
        umap_panels(_coords(), pd.DataFrame(index=_coords().index), ["nope"])


def test_training_curves_grid_and_validation_dashed():
    hist = pd.DataFrame(
        {f"{k}_{s}": np.linspace(10, 1, 5) for k in ("elbo", "a", "b", "c") for s in ("train", "validation")}
    )
    fig = training_curves(hist, "t")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[0] == "elbo" and len(titles) == 4
    assert fig.axes[0].get_gridspec().ncols == 3
    assert [line.get_linestyle() for line in fig.axes[0].lines] == ["-", "--"]


def test_attribution_scale_spans_the_data_and_titles_are_readable():
    coords = _coords()
    ratio = np.linspace(-0.5, 3.0, 200)
    attr = pd.DataFrame({"log2_ratio_atac_rna": ratio, "frob_atac": np.abs(ratio)}, index=coords.index)
    fig = attribution_panels(coords, attr)
    norm = fig.axes[0].collections[0].norm
    assert norm.vcenter == 0 and norm.vmin == pytest.approx(np.percentile(ratio, 1))
    assert norm.vmax == pytest.approx(np.percentile(ratio, 99))
    assert attribution_title("frob_atac") == "influence of the ATAC latent block (Jacobian norm)"
    assert attribution_title("log2_ratio_atac_rna") == "log2 influence of the ATAC vs RNA latent block"
    assert attribution_title("frob_rna_decoder_atac_block") == "ATAC block -> RNA decoder: Jacobian norm"


def _qc_table(n=120, seed=1):
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "library": rng.choice(["lib1", "lib2", "lib10"], n),
            "dataset": rng.choice(["d1", "d2"], n),
            "total_counts": rng.integers(50, 5000, n).astype(float),
            "n_genes": rng.integers(10, 1000, n).astype(float),
            "mt_frac": rng.uniform(0, 0.4, n),
        },
        index=[f"c{i}" for i in range(n)],
    )
    table["pass_qc"] = table["total_counts"] >= 500
    table["fail_reasons"] = np.where(table["pass_qc"], "", "min_counts")
    return table


def test_qc_figures_draw_thresholds_and_counts():
    from rvi.plots import qc_counts, qc_histograms

    table = _qc_table()
    fig = qc_histograms(table, "dataset", thresholds={"default": {"min_counts": 500}, "d2": {"max_mt_frac": 0.3}})
    assert len(fig.axes) == 6  # 2 datasets x 3 metrics
    dashed = [len([ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]) for ax in fig.axes]
    assert dashed == [1, 0, 0, 1, 0, 1]  # min_counts everywhere, max_mt_frac on d2 only
    fig = qc_counts(table, "library")
    bars, reasons = fig.axes
    assert sorted(t.get_text() for t in bars.get_xticklabels()) == ["lib1", "lib10", "lib2"]
    assert [t.get_text() for t in reasons.get_yticklabels()] == ["min_counts"]
    kept = sum(p.get_height() for p in bars.patches[:3])
    assert kept == int(table["pass_qc"].sum())


def test_other_shared_figures_draw():
    from rvi.plots import atac_qc_histograms, attribution_by_group, composition_bars, ground_truth_checks, purity_bars

    table = _qc_table()
    atac = table.assign(n_fragment=table["total_counts"] * 2, tsse=table["mt_frac"] * 10)
    assert len(atac_qc_histograms(atac, "library").axes) == 3  # fragments, TSS enrichment, their scatter
    assert len(composition_bars(table.assign(label=["A", None] * 60), "dataset", "label").axes) == 1
    assert len(purity_bars(pd.DataFrame({"fraction": [0.9, 0.4]}, index=["0", "1"])).axes) == 1
    attr = pd.DataFrame({"log2_ratio_atac_rna": np.linspace(-1, 1, 120)}, index=table.index)
    assert len(attribution_by_group(attr, table["library"]).axes[0].get_xticklabels()) == 3
    report = pd.DataFrame({"check": ["a", "b"], "value": [0.9, 0.2], "threshold": [0.8, 0.5], "passed": [True, False]})
    assert len(ground_truth_checks(report).axes[0].patches) == 2


def test_confusion_fractions_are_row_normalised_with_the_diagonal_aligned():
    from rvi.plots import confusion_fractions

    counts = pd.DataFrame(
        {
            "true": ["B", "B", "A", "A", "A", "C"],
            "predicted": ["B", "A", "A", "D", None, "C"],
            "n_cells": [3, 1, 6, 2, 2, 5],
        }
    )
    mat = confusion_fractions(counts)
    assert list(mat.index) == ["A", "B", "C"]
    # true labels first (same order as the rows), then labels only predicted, then missing predictions
    assert list(mat.columns) == ["A", "B", "C", "D", "unassigned"]
    expected = np.array(
        [
            [0.6, 0.0, 0.0, 0.2, 0.2],
            [0.25, 0.75, 0.0, 0.0, 0.0],
            [0.0, 0.0, 1.0, 0.0, 0.0],
        ]
    )
    np.testing.assert_allclose(mat.to_numpy(), expected)
    with pytest.raises(ValueError, match="n_cells"):
        confusion_fractions(counts.drop(columns="n_cells"))


def test_annotation_confusion_draws_one_labelled_heatmap_per_level():
    from rvi.plots import annotation_confusion

    table = pd.DataFrame(
        {
            "level": ["label_l1"] * 2 + ["label_l2"] * 3,
            "true": ["A", "B", "A1", "A1", "B1"],
            "predicted": ["A", "B", "A1", "B1", "B1"],
            "n_cells": [4, 6, 3, 1, 6],
        }
    )
    fig = annotation_confusion(table, ["label_l1", "label_l2"])
    heatmaps = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in heatmaps] == ["label l1 (10 cells)", "label l2 (10 cells)"]
    l2 = heatmaps[1]
    np.testing.assert_allclose(l2.images[0].get_array(), [[0.75, 0.25], [0.0, 1.0]])
    assert [t.get_text() for t in l2.get_yticklabels()] == ["A1", "B1"]
    assert [t.get_text() for t in l2.get_xticklabels()] == ["A1", "B1"]
    assert {t.get_text() for t in l2.texts} == {"0.75", "0.25", "1.00"}
    with pytest.raises(ValueError, match="no annotation level"):
        annotation_confusion(table, ["label_l3"])
