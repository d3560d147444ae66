"""Tests for rvi.atac: SnapATAC2 counting vs an independent counter, conventions, and bad inputs."""

from __future__ import annotations

import gzip

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

pytest.importorskip("snapatac2")
pysam = pytest.importorskip("pysam")

from rvi.atac import (  # noqa: E402
    HG38_CHROM_SIZES,
    atac_qc,
    count_peaks,
    count_tiles,
    independent_insertion_counts,
    join_rna_atac,
    read_peaks_from_10x_h5,
    validate_fragments,
)


def write_fragments(path, lines, index=True):
    """Write a position-sorted fragments file; bgzip + tabix index it (or plain gzip without index)."""
    lines = sorted(lines, key=lambda x: (x[0], x[1], x[2]))
    plain = path.with_suffix("")  # strip .gz
    with open(plain, "w") as handle:
        handle.write("# test fragments\n")
        for rec in lines:
            handle.write("\t".join(map(str, rec)) + "\n")
    if index:
        pysam.tabix_index(str(plain), preset="bed", force=True, meta_char="#")
    else:
        with open(plain, "rb") as src, gzip.open(path, "wb") as dst:
            dst.write(src.read())
        plain.unlink()
    return path


TOY = [
    ("chr1", 500, 1000, "A", 1),  # insertions 500, 999 -> both tile 0
    ("chr1", 999, 1001, "A", 3),  # insertions 999 (tile 0), 1000 (tile 1); count column ignored
    ("chr1", 1500, 2600, "B", 1),  # tiles 1 and 2
    ("chr1", 1500, 2600, "B", 1),  # identical line: counted again
    ("chr1", 2990, 3000, "B", 1),  # both insertions in the truncated last tile
    ("chr2", 10, 60, "B", 2),
    ("chrM", 10, 100, "B", 1),  # mitochondrial: QC only, no tiles by default
    ("chr2", 100, 200, "C", 1),  # barcode not requested
]
TOY_SIZES = {"chr1": 3000, "chr2": 500, "chrM": 200}


@pytest.fixture
def toy_fragments(tmp_path):
    return write_fragments(tmp_path / "frags.tsv.gz", TOY)


def test_insertion_convention_on_toy_file(toy_fragments):
    adata = count_tiles(toy_fragments, ["B", "A", "Z"], TOY_SIZES, bin_size=1000)
    assert adata.var_names.tolist() == ["chr1:0-1000", "chr1:1000-2000", "chr1:2000-3000", "chr2:0-500"]
    expected = np.array([[0, 2, 4, 2], [3, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(adata.X.toarray(), expected)
    assert adata.obs_names.tolist() == ["B", "A", "Z"]
    assert adata.obs["in_fragments_file"].tolist() == [True, True, False]
    assert adata.obs["n_fragment"].tolist() == [4, 2, 0]  # chrM excluded from n_fragment
    assert adata.obs.loc["A", "frac_dup"] == pytest.approx(0.5)  # 2 lines, 4 read pairs
    assert adata.obs.loc["B", "frac_mito"] == pytest.approx(0.2)
    assert adata.uns["files"]["fragments"] == str(toy_fragments)

    independent = independent_insertion_counts(toy_fragments, ["B", "A", "Z"], TOY_SIZES, 1000)
    assert (abs(adata.X - independent.X)).nnz == 0
    assert adata.var_names.equals(independent.var_names)


def test_fragment_size_filters_and_excluded_chroms_agree(toy_fragments):
    kwargs = {"exclude_chroms": ["chr2"], "min_frag_size": 10, "max_frag_size": 500}
    snap = count_tiles(toy_fragments, ["A", "B"], TOY_SIZES, bin_size=700, **kwargs)
    ref = independent_insertion_counts(toy_fragments, ["A", "B"], TOY_SIZES, 700, **kwargs)
    assert snap.var_names.equals(ref.var_names)
    assert "chrM:0-200" in snap.var_names and not any(v.startswith("chr2") for v in snap.var_names)
    np.testing.assert_array_equal(snap.X.toarray(), ref.X.toarray())
    # Kept: sizes 500 (bound inclusive), 10 and 90 (chrM); dropped: sizes 2, 1100 (x2); chr2 excluded.
    assert snap.X.sum() == 2 * 3


def test_min_num_fragments_and_no_whitelist(toy_fragments):
    all_cells = count_tiles(toy_fragments, None, TOY_SIZES, min_num_fragments=0)
    assert set(all_cells.obs_names) == {"A", "B", "C"}
    filtered = count_tiles(toy_fragments, None, TOY_SIZES, min_num_fragments=3)
    assert filtered.obs_names.tolist() == ["B"]


def test_count_peaks_half_open(toy_fragments):
    peaks = ["chr1:999-1000", "chr1-500-501", "chr1:0-500", "chr2:59-60"]
    adata = count_peaks(toy_fragments, peaks, ["A", "B"], TOY_SIZES)
    assert adata.var_names.tolist() == ["chr1:999-1000", "chr1:500-501", "chr1:0-500", "chr2:59-60"]
    np.testing.assert_array_equal(adata.X.toarray(), [[2, 1, 0, 0], [0, 0, 0, 1]])
    assert "frip" in adata.obs


@pytest.mark.realdata
@pytest.mark.filterwarnings("ignore")  # old-format h5mu metadata warnings
def test_snapatac2_tiles_equal_independent_count_on_real_10x_fragments(shared_data):
    mudata = pytest.importorskip("mudata")
    folder = shared_data / "pbmc_multiome_fragments"
    fragments = folder / "test_rna_atac_fragments.tsv.gz"
    barcodes = mudata.read_h5mu(folder / "test_rna_atac.h5mu").mod["atac"].obs_names.tolist()
    with pysam.TabixFile(str(fragments)) as tbx:
        sizes = {c: HG38_CHROM_SIZES[c] for c in tbx.contigs}

    snap = count_tiles(fragments, barcodes, sizes, bin_size=1000, min_num_fragments=0, exclude_chroms=["chrM"])
    ref = independent_insertion_counts(fragments, barcodes, sizes, 1000, exclude_chroms=["chrM"])

    assert snap.shape == ref.shape == (len(barcodes), snap.n_vars)
    assert snap.obs_names.tolist() == barcodes and snap.var_names.equals(ref.var_names)
    assert (abs(snap.X - ref.X)).nnz == 0  # exactly the same matrix, all cells
    # Independent sanity: exactly two insertions per fragment line of the requested cells.
    frags = pd.read_csv(fragments, sep="\t", header=None, comment="#", usecols=[3], names=["barcode"])
    n_lines = int(frags["barcode"].isin(set(barcodes)).sum())
    assert snap.X.sum() == 2 * n_lines
    assert snap.obs["n_fragment"].sum() == n_lines

    qc = atac_qc(snap)
    np.testing.assert_array_equal(qc["total_counts"].to_numpy(), 2 * qc["n_fragment"].to_numpy())
    assert (qc["n_features_accessible"] <= qc["total_counts"]).all()


def test_tss_enrichment_and_frip(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for barcode, near_tss in (("A", True), ("B", False)):
        for _ in range(200):
            start = int(rng.normal(50_000, 200)) if near_tss else int(rng.integers(0, 99_000))
            lines.append(("chr1", start, start + int(rng.integers(50, 300)), barcode, 1))
    fragments = write_fragments(tmp_path / "f.tsv.gz", lines)
    gtf = tmp_path / "genes.gtf"
    attrs = 'gene_id "G1"; transcript_id "T1"; gene_name "G1"; gene_type "protein_coding";'
    gtf.write_text(
        f"chr1\tt\tgene\t50001\t60000\t.\t+\t.\t{attrs}\nchr1\tt\ttranscript\t50001\t60000\t.\t+\t.\t{attrs}\n"
    )
    adata = count_tiles(fragments, ["A", "B"], {"chr1": 100_000}, gene_anno=gtf, qc_peaks=["chr1:49500-50500"])
    qc = atac_qc(adata)
    assert {"n_fragment", "total_counts", "n_features_accessible", "tsse", "frip"} <= set(qc.columns)
    assert qc.loc["A", "tsse"] > qc.loc["B", "tsse"]
    assert qc.loc["A", "frip"] > 0.5 > qc.loc["B", "frip"]
    with pytest.raises(ValueError, match="need fragments"):
        atac_qc(count_tiles(fragments, ["A"], {"chr1": 100_000}), gene_anno=gtf)


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------


def test_missing_fragments_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="fragments file not found"):
        count_tiles(tmp_path / "nope.tsv.gz", ["A"], TOY_SIZES)


def test_missing_index(tmp_path):
    path = write_fragments(tmp_path / "noidx.tsv.gz", TOY, index=False)
    with pytest.raises(FileNotFoundError, match="Tabix index not found"):
        count_tiles(path, ["A"], TOY_SIZES)
    # Without the index requirement the file is scanned instead.
    assert validate_fragments(path, TOY_SIZES, require_index=False) == ["chr1", "chr2", "chrM"]


def test_unknown_chromosomes(toy_fragments):
    with pytest.raises(ValueError, match=r"not in chrom_sizes: \['chr2'\]"):
        count_tiles(toy_fragments, ["A"], {"chr1": 3000, "chrM": 200})
    dropped = count_tiles(toy_fragments, ["B"], {"chr1": 3000, "chrM": 200}, unknown_chroms="drop")
    assert dropped.X.sum() == 6  # chr1 only (chr2 dropped, chrM has no tiles)
    with pytest.raises(ValueError, match="No chromosome of fragments file"):
        count_tiles(toy_fragments, ["A"], {"1": 3000, "2": 500})
    with pytest.raises(ValueError, match="end beyond the chromosome size"):
        count_tiles(toy_fragments, ["A"], {"chr1": 2999, "chr2": 500, "chrM": 200})


def test_no_matching_barcodes_names_file_and_examples(toy_fragments):
    with pytest.raises(ValueError, match=r"frags\.tsv\.gz.*Example barcodes in the file: \['A', 'B', 'C'\]"):
        count_tiles(toy_fragments, ["lib1-A", "lib1-B"], TOY_SIZES)


def test_join_rna_atac(toy_fragments):
    atac = count_tiles(toy_fragments, ["A", "B", "C"], TOY_SIZES)
    rna = ["lib1-B", "lib1-X", "lib2-A", "lib1-A"]
    aligned, report = join_rna_atac(rna, atac, "lib1")
    assert aligned.obs_names.tolist() == ["lib1-B", "lib1-A"]
    assert aligned.obs["barcode"].tolist() == ["B", "A"]
    np.testing.assert_array_equal(aligned.X.toarray(), atac[["B", "A"]].X.toarray())
    assert report["n_rna_cells"] == 3 and report["n_matched"] == 2
    assert report["n_rna_unmatched"] == 1 and report["n_atac_unmatched"] == 1
    with pytest.raises(ValueError, match=r"frags\.tsv\.gz.*example ATAC barcodes \['C'\].*lib2-A"):
        join_rna_atac(["lib2-A", "lib2-B"], atac[["C"]], "lib2")
    with pytest.raises(ValueError, match="Only 66.7%"):
        join_rna_atac(rna, atac, "lib1", min_fraction_matched=0.9)


def test_read_peaks_from_10x_h5(tmp_path):
    # features x barcodes, stored CSC: 2 genes + 3 peaks, 4 barcodes.
    dense = np.array([[1, 0, 2, 0], [0, 0, 1, 1], [3, 0, 0, 1], [0, 5, 0, 0], [1, 1, 1, 1]], dtype=np.int32)
    csc = sp.csc_matrix(dense)
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.array([b"AAA-1", b"CCC-1", b"GGG-1", b"TTT-1"])
        m["data"], m["indices"], m["indptr"] = csc.data, csc.indices, csc.indptr
        m["shape"] = np.array(dense.shape)
        feats = m.create_group("features")
        feats["feature_type"] = np.array([b"Gene Expression"] * 2 + [b"Peaks"] * 3)
        feats["id"] = np.array([b"ENSG1", b"ENSG2", b"chr1:10-20", b"chr1:30-40", b"chr2:5-9"])
        feats["name"] = np.array([b"G1", b"G2", b"chr1:10-20", b"chr1:30-40", b"chr2:5-9"])
        feats["interval"] = np.array([b"chr1:1-5", b"chr1:6-8", b"chr1:10-20", b"chr1:30-40", b"chr2:5-9"])
    adata = read_peaks_from_10x_h5(path)
    assert adata.obs_names.tolist() == ["AAA-1", "CCC-1", "GGG-1", "TTT-1"]
    assert adata.var_names.tolist() == ["chr1:10-20", "chr1:30-40", "chr2:5-9"]
    np.testing.assert_array_equal(adata.X.toarray(), dense[2:].T)
    assert adata.var["start"].tolist() == [10, 30, 5]
    qc = atac_qc(adata)
    assert qc["n_fragment"].isna().all() and qc["total_counts"].tolist() == [4, 6, 1, 2]

    with h5py.File(tmp_path / "gex_only.h5", "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.array([b"AAA-1"])
        m["data"], m["indices"], m["indptr"], m["shape"] = np.array([1]), np.array([0]), np.array([0, 1]), [1, 1]
        m.create_group("features")["feature_type"] = np.array([b"Gene Expression"])
        m["features"]["id"] = np.array([b"ENSG1"])
    with pytest.raises(ValueError, match="no features of type 'Peaks'"):
        read_peaks_from_10x_h5(tmp_path / "gex_only.h5")
    with pytest.raises(FileNotFoundError):
        read_peaks_from_10x_h5(tmp_path / "missing.h5")


def test_returned_anndata_is_writable(toy_fragments, tmp_path):
    from rvi.io.atomic import write_h5ad

    adata = count_tiles(toy_fragments, ["A", "B"], TOY_SIZES)
    out = tmp_path / "atac.h5ad"
    write_h5ad(adata, out)
    back = ad.read_h5ad(out)
    assert back.uns["atac_counting"]["counting_strategy"] == "insertion"
    assert (abs(back.X - adata.X)).nnz == 0


@pytest.mark.filterwarnings("ignore")
def test_demo_dataset_peaks_tiles_and_join(tmp_path):
    """Integration with rvi.simulate: every simulated Peaks count is one fragment inside its peak."""
    simulate = pytest.importorskip("rvi.simulate")
    outdir = tmp_path / "demo"
    sheet = simulate.write_demo_dataset(
        outdir, n_samples=3, n_datasets=3, cells_per_sample=80, n_genes=60, n_regions=200
    )
    sample = sheet.iloc[0]
    tenx = read_peaks_from_10x_h5(outdir / sample["rna_path"])
    fragments = outdir / sample["fragments_path"]
    sizes = outdir / "chrom_sizes.tsv"
    barcodes = tenx.obs_names.tolist()

    peaks = count_peaks(fragments, tenx.var_names.tolist(), barcodes, sizes)
    assert (abs(peaks.X - 2 * tenx.X)).nnz == 0  # 2 insertions per in-peak fragment

    tiles = count_tiles(fragments, barcodes, sizes, gene_anno=outdir / "genes.gtf", qc_peaks=tenx.var_names.tolist())
    reference = independent_insertion_counts(fragments, barcodes, sizes, 1000)
    assert (abs(tiles.X - reference.X)).nnz == 0
    qc = atac_qc(tiles)
    assert qc["tsse"].notna().all() and qc["frip"].between(0, 1).all()

    truth = pd.read_csv(outdir / "ground_truth.csv", index_col=0)
    aligned, report = join_rna_atac(truth.index, tiles, sample["library"])
    assert report["n_matched"] == report["n_rna_cells"] == len(barcodes)
    assert aligned.obs_names.isin(truth.index).all()
