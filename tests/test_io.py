"""Readers, writers and the demo dataset: round trips, format compatibility and bad input."""

import gzip
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from rvi.io import (
    load_sample,
    load_sheet_sample,
    read_10x_h5,
    read_10x_mtx,
    read_fragments,
    read_h5ad_counts,
    read_sample_sheet,
    validate_counts,
    write_10x_h5,
    write_fragments,
)
from rvi.simulate import simulate_demo, simulate_rna, write_demo_dataset

pysam = pytest.importorskip("pysam")

DEMO = dict(n_samples=3, n_datasets=3, cells_per_sample=300, n_genes=150, n_regions=600, seed=7)
LABELS = ["label_l1", "label_l2", "label_l3"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    write_demo_dataset(out, labelled_samples=2, **DEMO)
    return out


@pytest.fixture(scope="module")
def demo_truth():
    return simulate_demo(**DEMO)


def _features(adata):
    return pd.DataFrame(
        {
            "id": adata.var["gene_ids"],
            "name": adata.var_names,
            "feature_type": "Gene Expression",
            "genome": "sim1",
            "interval": "chr1:1-2",
        }
    )


def test_write_demo_dataset_names_an_unknown_argument_before_writing(tmp_path):
    with pytest.raises(TypeError, match=r"write_demo_dataset: .*'n_sample'.*simulate_demo's arguments"):
        write_demo_dataset(tmp_path / "demo", n_sample=3)
    with pytest.raises(TypeError, match="positional"):
        write_demo_dataset(tmp_path / "demo", 3)
    assert not (tmp_path / "demo").exists()


def test_demo_layout(demo):
    for name in ("samples.tsv", "chrom_sizes.tsv", "genes.gtf", "ground_truth.csv", "cre_truth.csv"):
        assert (demo / name).is_file(), name
    sheet = pd.read_csv(demo / "samples.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert list(sheet.columns[:10]) == [
        "sample",
        "library",
        "dataset",
        "donor",
        "tissue",
        "condition",
        "chemistry",
        "rna_path",
        "fragments_path",
        "labels_path",
    ]
    assert sheet["dataset"].nunique() == 3
    assert (sheet["labels_path"] != "").tolist() == [True, True, False]
    for s in sheet["sample"]:
        for f in ("filtered_feature_bc_matrix.h5", "atac_fragments.tsv.gz", "atac_fragments.tsv.gz.tbi"):
            assert (demo / s / f).is_file()
    assert not any(p.name.startswith(".") for p in demo.parent.iterdir())  # no temporaries left


def test_demo_h5_round_trip(demo, demo_truth):
    sheet = read_sample_sheet(demo / "samples.tsv")
    row = sheet.iloc[1]
    gex = read_10x_h5(row["rna_path"])
    peaks = read_10x_h5(row["rna_path"], feature_type="Peaks")
    idx = np.flatnonzero(demo_truth.obs["library"].astype(str).to_numpy() == row["library"])
    truth_rna, truth_atac = demo_truth["rna"][idx], demo_truth["atac"][idx]
    assert list(gex.obs_names) == list(truth_rna.obs["barcode"])
    assert list(gex.var_names) == list(truth_rna.var_names)
    assert list(peaks.var_names) == list(truth_atac.var_names)
    assert (gex.X != truth_rna.X).nnz == 0 and (peaks.X != truth_atac.X).nnz == 0
    # The file is real 10x: scanpy's reader sees the same matrix and both feature types.
    import scanpy as sc

    both = sc.read_10x_h5(row["rna_path"], gex_only=False)
    assert set(both.var["feature_types"]) == {"Gene Expression", "Peaks"}
    assert (sp.csr_matrix(both.X)[:, : gex.n_vars] != gex.X).nnz == 0


def test_fragments_consistent_with_peaks(demo):
    sheet = read_sample_sheet(demo / "samples.tsv")
    row = sheet.iloc[0]
    peaks = read_10x_h5(row["rna_path"], feature_type="Peaks")
    frags = read_fragments(row["fragments_path"])
    chroms = pd.read_csv(demo / "chrom_sizes.tsv", sep="\t", header=None)[0].tolist()
    rank = frags["chrom"].map({c: i for i, c in enumerate(chroms)})
    assert (np.diff(rank * 10**9 + frags["start"]) >= 0).all()  # coordinate-sorted
    assert set(frags["barcode"]) <= set(peaks.obs_names)
    insertions = (2 * frags.groupby("barcode").size()).reindex(peaks.obs_names, fill_value=0)
    in_peaks = np.asarray(peaks.X.sum(axis=1)).ravel()
    assert np.corrcoef(insertions, in_peaks)[0, 1] > 0.95
    # Tabix region query returns exactly the counted fragments of one peak.
    j = int(np.argmax(np.asarray(peaks.X.sum(axis=0)).ravel()))
    region = peaks.var_names[j]
    assert len(read_fragments(row["fragments_path"], region=region)) == peaks.X[:, j].sum()
    # Subtype-specific regions are really enriched in the fragments of that subtype.
    truth = pd.read_csv(demo / "ground_truth.csv", index_col=0)
    cre = pd.read_csv(demo / "cre_truth.csv")
    leaf = cre.loc[cre["level"] == 3, "cell_type"].value_counts().index[0]
    regions = set(cre.loc[(cre["cell_type"] == leaf), "region"])
    ct = truth.set_index("barcode").loc[peaks.obs_names, "cell_type"].to_numpy()
    cols = np.flatnonzero(peaks.var_names.isin(regions))
    share = np.asarray(peaks.X[:, cols].sum(axis=1)).ravel() / np.maximum(in_peaks, 1)
    assert share[ct == leaf].mean() > 3 * share[ct != leaf].mean()


def test_load_sheet_sample_obs(demo):
    sheet = read_sample_sheet(demo / "samples.tsv")
    truth = pd.read_csv(demo / "ground_truth.csv", index_col=0)
    a = load_sheet_sample(sheet, "s1", label_columns=LABELS)
    assert all(n.startswith("lib1-") for n in a.obs_names)
    for col in ("library", "dataset", "donor", "tissue", "condition", "chemistry", "fragments_path", *LABELS):
        assert col in a.obs.columns, col
    assert Path(a.obs["fragments_path"].iloc[0]).is_file()
    assert (a.obs["label_l3"].astype(str) == truth.loc[a.obs_names, "cell_type"]).all()
    b = load_sheet_sample(sheet, "s2", label_columns=LABELS)  # second dataset: coarse labels only
    assert b.obs["label_l3"].isna().all() and b.obs["label_l2"].notna().all()
    c = load_sheet_sample(sheet, "s3", label_columns=LABELS)  # unlabelled
    assert all(c.obs[col].isna().all() for col in LABELS)
    merged = ad.concat([a, b, c], merge="same")
    assert merged.obs_names.is_unique and merged.n_obs == len(truth)


def test_10x_h5_and_mtx_round_trip(tmp_path):
    a = simulate_rna(n_cells=200, n_genes=60, n_datasets=1, libraries_per_dataset=1, seed=1)
    write_10x_h5(tmp_path / "m.h5", a.X, a.obs["barcode"], _features(a))
    back = read_10x_h5(tmp_path / "m.h5")
    assert (back.X != a.X).nnz == 0 and list(back.var_names) == list(a.var_names)
    assert list(back.var["gene_ids"]) == list(a.var["gene_ids"])
    mtx = tmp_path / "filtered_feature_bc_matrix"
    mtx.mkdir()
    with gzip.open(mtx / "matrix.mtx.gz", "wb") as fh:
        scipy.io.mmwrite(fh, sp.csc_matrix(a.X.T).astype(np.int64))
    _features(a)[["id", "name", "feature_type"]].to_csv(mtx / "features.tsv.gz", sep="\t", header=False, index=False)
    a.obs[["barcode"]].to_csv(mtx / "barcodes.tsv.gz", sep="\t", header=False, index=False)
    m = read_10x_mtx(mtx)
    assert (m.X != a.X).nnz == 0 and list(m.obs_names) == list(a.obs["barcode"])
    s = load_sample(mtx, "L9", metadata={"dataset": "d"})
    assert s.obs_names[0] == f"L9-{a.obs['barcode'].iat[0]}" and (s.obs["dataset"] == "d").all()


def test_h5ad_counts_prefers_counts_layer(tmp_path):
    a = simulate_rna(n_cells=100, n_genes=40, n_datasets=1, libraries_per_dataset=1, seed=2)
    a.layers["counts"] = a.X.copy()
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()))  # normalised X must not be taken as counts
    a.write_h5ad(tmp_path / "x.h5ad")
    back = read_h5ad_counts(tmp_path / "x.h5ad")
    assert (back.X != a.layers["counts"]).nnz == 0
    del a.layers["counts"]
    a.write_h5ad(tmp_path / "log.h5ad")
    with pytest.raises(ValueError, match=r"log\.h5ad \(X\): counts contain non-integer"):
        read_h5ad_counts(tmp_path / "log.h5ad")
    with pytest.raises(ValueError, match="layer 'nope' not found"):
        read_h5ad_counts(tmp_path / "x.h5ad", layer="nope")


# --- bad input -------------------------------------------------------------------------------------
def test_validate_counts_rejects_bad_values():
    validate_counts(sp.csr_matrix(np.array([[0, 2], [3, 0]], dtype=np.float32)), "ok")
    with pytest.raises(ValueError, match=r"sample\.h5: counts contain non-integer"):
        validate_counts(sp.csr_matrix(np.array([[0.5, 1.0]])), "sample.h5")
    with pytest.raises(ValueError, match=r"sample\.h5: counts contain negative"):
        validate_counts(sp.csr_matrix(np.array([[-1.0, 1.0]])), "sample.h5")
    with pytest.raises(ValueError, match="negative"):
        validate_counts(np.array([[1, -2]], dtype=np.int32), "dense")
    with pytest.raises(ValueError, match="NaN"):
        validate_counts(np.array([[np.nan, 1.0]]), "dense")
    # Chunking must not hide a bad value beyond the first chunk.
    x = np.ones((50, 4))
    x[49, 3] = 0.25
    with pytest.raises(ValueError, match="non-integer"):
        validate_counts(sp.csr_matrix(x), "chunked", chunk_size=7)


def test_non_integer_and_negative_files(tmp_path):
    a = ad.AnnData(X=sp.csr_matrix(np.array([[1.0, 0.5], [2.0, 0.0]])))
    a.write_h5ad(tmp_path / "frac.h5ad")
    with pytest.raises(ValueError, match=r"frac\.h5ad.*non-integer"):
        load_sample(tmp_path / "frac.h5ad", "L1")
    b = simulate_rna(n_cells=100, n_genes=40, n_datasets=1, libraries_per_dataset=1, seed=0)
    write_10x_h5(tmp_path / "neg.h5", b.X, b.obs["barcode"], _features(b))
    with h5py.File(tmp_path / "neg.h5", "r+") as f:
        f["matrix/data"][0] = -3
    with pytest.raises(ValueError, match=r"neg\.h5: counts contain negative"):
        read_10x_h5(tmp_path / "neg.h5")


def test_truncated_or_corrupt_h5(tmp_path):
    b = simulate_rna(n_cells=200, n_genes=60, n_datasets=1, libraries_per_dataset=1, seed=0)
    good = tmp_path / "good.h5"
    write_10x_h5(good, b.X, b.obs["barcode"], _features(b))
    data = good.read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"trunc\.h5.*corrupt or truncated"):
        read_10x_h5(tmp_path / "trunc.h5")
    (tmp_path / "junk.h5").write_bytes(b"not an hdf5 file at all" * 100)
    with pytest.raises(ValueError, match=r"junk\.h5.*corrupt or truncated"):
        load_sample(tmp_path / "junk.h5", "L1")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(ValueError, match=r"other\.h5: not a 10x HDF5"):
        read_10x_h5(tmp_path / "other.h5")
    with pytest.raises(FileNotFoundError, match=r"missing\.h5"):
        read_10x_h5(tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="no features of type 'Peaks'"):
        read_10x_h5(good, feature_type="Peaks")


def _sheet(tmp_path, rows, name="samples.tsv"):
    for r in rows:
        (tmp_path / r["rna_path"]).touch()
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def test_sample_sheet_validation(tmp_path):
    ok = [
        {"sample": "a", "library": "L1", "dataset": "d1", "rna_path": "a.h5", "donor": "x"},
        {"sample": "b", "library": "L2", "dataset": "d1", "rna_path": "b.h5", "donor": "y"},
    ]
    sheet = read_sample_sheet(_sheet(tmp_path, ok))
    assert sheet.loc["a", "rna_path"] == str(tmp_path / "a.h5")  # resolved against the sheet folder
    assert sheet.loc["a", "fragments_path"] == "" and sheet.loc["a", "labels_path"] == ""

    missing = ok + [{"sample": "c", "library": "L3", "dataset": "d2", "rna_path": "c.h5"}]
    path = _sheet(tmp_path, missing, "missing.tsv")
    (tmp_path / "c.h5").unlink()
    with pytest.raises(FileNotFoundError, match=r"sample 'c': rna_path 'c\.h5' does not exist"):
        read_sample_sheet(path)

    dup = ok + [{"sample": "a", "library": "L3", "dataset": "d2", "rna_path": "a.h5"}]
    with pytest.raises(ValueError, match=r"duplicate sample ids \['a'\]"):
        read_sample_sheet(_sheet(tmp_path, dup, "dup.tsv"))

    two = ok + [{"sample": "c", "library": "L1", "dataset": "d2", "rna_path": "c.h5"}]
    with pytest.raises(ValueError, match=r"library 'L1' -> datasets \['d1', 'd2'\]"):
        read_sample_sheet(_sheet(tmp_path, two, "two.tsv"))

    pd.DataFrame([{"sample": "a", "rna_path": "a.h5"}]).to_csv(tmp_path / "cols.tsv", sep="\t", index=False)
    with pytest.raises(ValueError, match=r"lacks required columns \['library', 'dataset'\]"):
        read_sample_sheet(tmp_path / "cols.tsv")
    with pytest.raises(FileNotFoundError, match="sample sheet does not exist"):
        read_sample_sheet(tmp_path / "nope.tsv")


# --- atomic writes ---------------------------------------------------------------------------------
def test_failed_writes_leave_no_output(tmp_path, monkeypatch):
    b = simulate_rna(n_cells=100, n_genes=40, n_datasets=1, libraries_per_dataset=1, seed=0)
    bad = b.X.copy()
    bad.data[0] = 0.5
    with pytest.raises(ValueError, match="non-integer"):
        write_10x_h5(tmp_path / "bad.h5", bad, b.obs["barcode"], _features(b))

    calls = {"n": 0}
    real = h5py.Group.create_dataset

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", flaky)
    with pytest.raises(OSError, match="disk full"):
        write_10x_h5(tmp_path / "half.h5", b.X, b.obs["barcode"], _features(b))
    monkeypatch.undo()

    frags = pd.DataFrame({"chrom": ["chr1"], "start": [10], "end": [60], "barcode": ["A-1"], "count": [1]})

    def boom(*args, **kwargs):
        raise RuntimeError("tabix failed")

    monkeypatch.setattr(pysam, "tabix_index", boom)
    with pytest.raises(RuntimeError, match="tabix failed"):
        write_fragments(tmp_path / "f.tsv.gz", frags)
    monkeypatch.undo()

    monkeypatch.setattr("rvi.io.fragments.write_fragments", lambda *a, **k: boom())
    with pytest.raises(RuntimeError, match="tabix failed"):
        write_demo_dataset(tmp_path / "demo", n_samples=3, cells_per_sample=50, n_genes=40, n_regions=100)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    write_fragments(tmp_path / "ok.tsv.gz", frags)
    assert len(read_fragments(tmp_path / "ok.tsv.gz", region="chr1:1-100")) == 1


def test_shared_bmmc_counts_validate():
    """The real multiome starter file passes count validation (skipped without ../shared/data)."""
    import os

    root = Path(os.environ.get("RVI_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    path = root / "bmmc_multiome_starter" / "bmmc_multiome_starter_500.h5mu"
    if not path.is_file():
        pytest.skip(f"real data not found at {path}")
    import mudata as md

    rna = md.read_h5mu(path)["rna"]
    validate_counts(rna.layers["counts"], str(path))


def test_sample_sheet_columns_follow_the_covariate_keys(tmp_path):
    """library / dataset columns are named by covariates.library_key / dataset_key; nesting is checked on them."""
    (tmp_path / "a.h5").touch()
    (tmp_path / "b.h5").touch()
    sheet = tmp_path / "s.tsv"
    sheet.write_text("sample\tlane\tstudy\trna_path\ns1\tL1\tS1\ta.h5\ns2\tL2\tS1\tb.h5\n")
    table = read_sample_sheet(sheet, library_key="lane", dataset_key="study")
    assert table["lane"].tolist() == ["L1", "L2"]
    with pytest.raises(ValueError, match=r"lacks required columns \['library', 'dataset'\]"):
        read_sample_sheet(sheet)
    sheet.write_text("sample\tlane\tstudy\trna_path\ns1\tL1\tS1\ta.h5\ns2\tL1\tS2\tb.h5\n")
    with pytest.raises(ValueError, match=r"libraries in several datasets: library 'L1' -> datasets \['S1', 'S2'\]"):
        read_sample_sheet(sheet, library_key="lane", dataset_key="study")
