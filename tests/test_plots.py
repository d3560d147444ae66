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
