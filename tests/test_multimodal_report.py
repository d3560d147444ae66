"""The stage's integration metrics over every cell and the ground-truth report's multimodal rows, on small
synthetic latents (no training)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from rvi.stages.integration import integration_metrics
from rvi.stages.report import annotation_confusion, annotation_rows, atac_share, multimodal_rows, scored_cells

COV = {"library_key": "library", "dataset_key": "dataset"}


def _cells(n=240, seed=0):
    rng = np.random.default_rng(seed)
    obs = pd.DataFrame(
        {
            "library": np.repeat(["l1", "l2", "l3", "l4"], n // 4),
            "dataset": np.repeat(["d1", "d2"], n // 2),
            "cell_type": np.tile(["A", "B", "C1", "C2"], n // 4),
            "is_doublet": False,
        },
        index=[f"c{i}" for i in range(n)],
    )
    return obs, rng


def test_batch_terms_use_every_cell_and_warn_on_single_dataset_labels():
    obs, rng = _cells()
    type_codes = pd.factorize(obs["cell_type"])[0]
    mixed = rng.normal(size=(len(obs), 6)) + 4.0 * np.eye(6)[type_codes]
    split = mixed + 20.0 * (obs["dataset"] == "d2").to_numpy()[:, None]
    obs["label"] = obs["cell_type"].where(obs["dataset"] == "d1")  # labels cover one dataset only
    counts = sp.csr_matrix(rng.poisson(2.0, size=(len(obs), 30)).astype(np.float32))
    adata = ad.AnnData(counts, obs=obs)
    cfg = {"enabled": True, "label_level": "label", "max_cells": None}
    with pytest.warns(UserWarning, match="single dataset"):
        good = integration_metrics(adata, mixed, cfg, COV, ["label"])
    with pytest.warns(UserWarning, match="single dataset"):
        bad = integration_metrics(adata, split, cfg, COV, ["label"])
    assert {"rvi", "pca"} <= set(good.index)
    assert good.loc["rvi", "n_cells_batch_terms"] == len(obs)
    assert good.loc["rvi", "labelled_single_batch"] == "dataset"
    # The labelled cells (one dataset) cannot see the split; the all-cell columns do.
    assert bad.loc["rvi", "batch_mixing_dataset"] < 0.05 < 0.5 < good.loc["rvi", "batch_mixing_dataset"]
    assert bad.loc["rvi", "ilisi_dataset"] < good.loc["rvi", "ilisi_dataset"]


def test_multimodal_rows_compare_with_the_rna_latent():
    obs, rng = _cells(400)
    gt = obs.copy()
    types = obs["cell_type"].to_numpy()
    base = {"A": 0, "B": 1, "C1": 2, "C2": 2}  # the RNA latent merges the chromatin-only pair C1 / C2
    z_rna = rng.normal(size=(len(obs), 4)) + 5.0 * np.eye(4)[[base[t] for t in types]]
    z_joint = np.hstack([z_rna, 5.0 * (types == "C2")[:, None] + rng.normal(size=(len(obs), 1))])
    frob_atac = np.where(np.isin(types, ["C1", "C2"]), 2.0, 0.5)
    attribution = pd.DataFrame({"frob_atac": frob_atac, "frob_rna": 1.0}, index=obs.index)
    pairs = pd.DataFrame({"kind": ["chromatin_only", "rna_only"], "type_a": ["C1", "A"], "type_b": ["C2", "B"]})
    rows = multimodal_rows(
        gt, obs, pd.DataFrame(z_rna, index=obs.index), pd.DataFrame(z_joint, index=obs.index), attribution, pairs, COV
    )
    by = {r["check"]: r for r in rows}
    acc = by["chromatin_only_pair_accuracy_C1_C2"]
    assert acc["value"] >= 0.9 and acc["passed"] and acc["n"] == 200
    rna_acc = float(acc["detail"].split("RNA model's latent ")[1].split()[0])
    assert rna_acc < 0.7
    true_type = by["multimodal_true_type_accuracy"]  # 4 types: the RNA latent confuses C1 and C2
    assert true_type["value"] > 0.95 and true_type["threshold"] < 0.85 and true_type["passed"]
    assert true_type["n"] == len(obs)
    mixing = by["multimodal_batch_mixing_dataset"]
    assert 0.5 < mixing["threshold"] <= 1 and mixing["passed"] and "RNA model" in mixing["detail"]
    share = by["chromatin_only_atac_share"]
    assert share["value"] == pytest.approx(0.8) and share["threshold"] == pytest.approx(0.2) and share["passed"]
    np.testing.assert_allclose(atac_share(attribution).to_numpy()[:4], [0.2, 0.2, 0.8, 0.8])


def test_annotation_check_leaves_out_chromatin_only_subtypes():
    obs, _ = _cells(40)
    gt = obs.assign(cell_type_l1=obs["cell_type"].str[0], cell_type_l2=obs["cell_type"])
    rna_obs = obs.assign(l1=np.nan, l2=np.nan)
    ann = pd.DataFrame({"l1": gt["cell_type_l1"], "l2": gt["cell_type"].replace("C2", "C1")}, index=obs.index)
    ann["annotation_level"] = "l2"
    rna_obs.loc[rna_obs["library"] == "l1", ["l1", "l2"]] = "x"
    rows = {r["check"]: r for r in annotation_rows(gt, ann, rna_obs, ["l1", "l2"], {"C1", "C2"})}
    assert rows["annotation_accuracy_l2_finest"]["value"] == 1.0
    assert rows["annotation_accuracy_l2_chromatin_only_subtypes"]["value"] == pytest.approx(0.5)


def test_annotation_confusion_counts_the_judged_cells():
    obs, _ = _cells(40)  # 10 cells per library, types A, B, C1, C2 in turn
    gt = obs.assign(cell_type_l1=obs["cell_type"].str[0], cell_type_l2=obs["cell_type"])
    gt.loc["c10", "is_doublet"] = True  # library l2, type C1
    rna_obs = obs.assign(l1=np.nan, l2=np.nan)
    rna_obs.loc[rna_obs["library"] == "l1", ["l1", "l2"]] = "x"
    ann = pd.DataFrame({"l1": gt["cell_type_l1"], "l2": gt["cell_type"].replace("B", "A")}, index=obs.index)
    ann.loc["c12", "l2"] = np.nan  # type A, left without a label at the finer level
    cells, with_pairs = scored_cells(gt, ann, rna_obs, ["l1", "l2"], {"C1", "C2"})
    # singlets of the unlabelled libraries l2-l4 (30 cells, one doublet), the chromatin-only C1 / C2 apart
    assert len(with_pairs) == 29 and len(cells) == 14
    table = annotation_confusion(gt, ann, cells, ["l1", "l2"])
    assert list(table.columns) == ["level", "true", "predicted", "n_cells"]
    l2 = table.loc[table["level"] == "l2"]
    assert l2.loc[l2["predicted"].isna(), "true"].tolist() == ["A"]
    counts = l2.dropna().set_index(["true", "predicted"])["n_cells"].to_dict()
    assert counts == {("A", "A"): 6, ("B", "A"): 7}
    l1 = table.loc[table["level"] == "l1"].set_index(["true", "predicted"])["n_cells"].to_dict()
    assert l1 == {("A", "A"): 7, ("B", "B"): 7}
