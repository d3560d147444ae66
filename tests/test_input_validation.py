"""Bad inputs stop at the door with a message naming the file (corrupt matrices, sheets, label files)."""

from __future__ import annotations

import anndata as ad
import h5py
import pandas as pd
import pytest
import scipy.sparse as sp

from rvi.io import load_sample, read_10x_h5, read_h5ad_counts, read_sample_sheet, write_10x_h5
from rvi.simulate import simulate_rna
from tests.test_io import _features


@pytest.fixture
def small_rna():
    return simulate_rna(n_cells=80, n_genes=30, n_datasets=1, libraries_per_dataset=1, seed=0)


def _raw_offset(dataset) -> tuple[int, int]:
    """Byte offset and size of a dataset's (first chunk of) data in its file."""
    offset = dataset.id.get_offset()
    if offset is not None:
        return offset, dataset.id.get_storage_size()
    info = dataset.id.get_chunk_info(0)
    return info.byte_offset, info.size


def _h5ad(tmp_path, small_rna, name="x.h5ad"):
    path = tmp_path / name
    a = ad.AnnData(X=sp.csr_matrix(small_rna.X), var=pd.DataFrame(index=small_rna.var_names))
    a.obs_names = [f"c{i}" for i in range(a.n_obs)]
    a.write_h5ad(path)  # uncompressed: the datasets below are edited in place
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: f["X/indices"].__setitem__(slice(3, 4), 10_000), "indices range"),
        (lambda f: f["X/indices"].__setitem__(slice(0, 1), -5), "indices range"),
        (lambda f: f["X/indptr"].__setitem__(slice(5, 6), 0), "indptr decreases"),
    ],
    ids=["index-too-large", "negative-index", "indptr-not-monotone"],
)
def test_corrupt_h5ad_sparse_structure_is_an_error(tmp_path, small_rna, edit, message):
    path = _h5ad(tmp_path, small_rna)
    with h5py.File(path, "r+") as f:
        edit(f)
    with pytest.raises(ValueError, match=rf"x\.h5ad.*corrupt sparse matrix: {message}"):
        load_sample(path, "L1")


def test_corrupt_h5ad_flipped_bytes_named(tmp_path, small_rna):
    """Bytes flipped in the raw file (the indices array) give an error naming the file, never a crash later."""
    path = _h5ad(tmp_path, small_rna)
    with h5py.File(path, "r") as f:
        offset, nbytes = _raw_offset(f["X/indices"])
    raw = bytearray(path.read_bytes())
    for k in range(offset + nbytes // 2, offset + nbytes // 2 + 8):
        raw[k] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"x\.h5ad"):
        read_h5ad_counts(path)


def test_h5ad_duplicate_var_names_listed(tmp_path, small_rna):
    a = ad.AnnData(X=sp.csr_matrix(small_rna.X))
    names = [f"g{j}" for j in range(a.n_vars)]
    names[3], names[7] = "g1", "g2"
    a.var_names = names
    a.write_h5ad(tmp_path / "dup.h5ad")
    with pytest.raises(ValueError, match=r"dup\.h5ad: duplicated feature names \['g1', 'g2'\]"):
        load_sample(tmp_path / "dup.h5ad", "L1")


def test_h5_with_flipped_barcode_bytes_names_the_file(tmp_path, small_rna):
    path = tmp_path / "bad.h5"
    write_10x_h5(path, small_rna.X, small_rna.obs["barcode"], _features(small_rna))
    with h5py.File(path, "r") as f:
        offset, _ = _raw_offset(f["matrix/barcodes"])
    raw = bytearray(path.read_bytes())
    raw[offset] = 0xFF  # invalid UTF-8 start byte in the first barcode
    raw[offset + 1] = 0xFE
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"bad\.h5: cannot read 10x HDF5 content \(corrupt"):
        read_10x_h5(path)


def test_h5_with_non_monotone_indptr(tmp_path, small_rna):
    path = tmp_path / "ptr.h5"
    write_10x_h5(path, small_rna.X, small_rna.obs["barcode"], _features(small_rna))
    with h5py.File(path, "r+") as f:
        ptr = f["matrix/indptr"][:]
        ptr[10], ptr[11] = ptr[11], ptr[10]
        f["matrix/indptr"][:] = ptr
    with pytest.raises(ValueError, match=r"ptr\.h5 \(10x HDF5\): corrupt sparse matrix: indptr decreases"):
        read_10x_h5(path)


# ------------------------------------------------------------------------------------------------ sample sheets
def _sheet(tmp_path, rows, columns=("sample", "library", "dataset", "rna_path")):
    for r in rows:
        (tmp_path / r[3]).touch()
    path = tmp_path / "samples.tsv"
    path.write_text("\n".join("\t".join(r) for r in [list(columns), *rows]) + "\n")
    return path


def test_sheet_library_used_by_two_samples(tmp_path):
    path = _sheet(tmp_path, [["a", "L1", "d1", "a.h5"], ["b", "L1", "d1", "b.h5"], ["c", "L2", "d1", "c.h5"]])
    with pytest.raises(ValueError, match=r"library ids used by several samples \('L1': samples \['a', 'b'\]\)"):
        read_sample_sheet(path)


def test_sheet_same_file_twice(tmp_path):
    path = _sheet(tmp_path, [["a", "L1", "d1", "a.h5"], ["b", "L2", "d1", "./a.h5"]])
    with pytest.raises(ValueError, match=r"same rna_path is listed for several samples.*a\.h5: samples \['a', 'b'\]"):
        read_sample_sheet(path)


def test_header_only_sheet(tmp_path):
    path = _sheet(tmp_path, [])
    with pytest.raises(ValueError, match="header but no samples"):
        read_sample_sheet(path)


# ------------------------------------------------------------------------------------------------ label files
LEVELS = ["label_l1", "label_l2"]


def _labels(tmp_path, small_rna, columns, barcodes=None):
    barcodes = list(small_rna.obs["barcode"][:20]) if barcodes is None else barcodes
    table = pd.DataFrame({"barcode": barcodes, **{c: "T" for c in columns}})
    path = tmp_path / "labels.csv"
    table.to_csv(path, index=False)
    return path


def _h5(tmp_path, small_rna):
    path = tmp_path / "m.h5"
    write_10x_h5(path, small_rna.X, small_rna.obs["barcode"], _features(small_rna))
    return path


def test_label_file_with_misspelt_level_column(tmp_path, small_rna):
    labels = _labels(tmp_path, small_rna, ["label_l1", "label_L2"])
    with pytest.raises(ValueError, match=r"labels\.csv: label table lacks .*\['label_l2'\].*did you mean 'label_L2'"):
        load_sample(_h5(tmp_path, small_rna), "L1", labels_path=labels, label_columns=LEVELS)


def test_label_file_matching_no_barcode(tmp_path, small_rna):
    labels = _labels(tmp_path, small_rna, LEVELS, barcodes=[f"{b}-1" for b in small_rna.obs["barcode"][:20]])
    with pytest.raises(ValueError, match=r"labels\.csv: none of the 20 barcodes of the label table is a cell"):
        load_sample(_h5(tmp_path, small_rna), "L1", labels_path=labels, label_columns=LEVELS)


def test_partial_labels_are_counted_in_the_log(tmp_path, small_rna, capsys):
    labels = _labels(tmp_path, small_rna, LEVELS, barcodes=[*small_rna.obs["barcode"][:20], "AAAA-9"])
    adata = load_sample(_h5(tmp_path, small_rna), "L1", labels_path=labels, label_columns=LEVELS)
    assert adata.obs["label_l1"].notna().sum() == 20
    out = capsys.readouterr().out
    assert f"20 of {small_rna.n_obs} cells labelled" in out and "1 barcodes of the label table are not cells" in out


# ------------------------------------------------------------------------------------------------ fragments
FRAGS = pd.DataFrame(
    {
        "chrom": ["chr1"] * 6 + ["chr2"] * 2,
        "start": [10, 50, 90, 400, 800, 1200, 30, 70],
        "end": [60, 120, 300, 700, 900, 1500, 90, 200],
        "barcode": ["A", "B", "A", "B", "A", "A", "B", "A"],
        "count": 1,
    }
)
SIZES = {"chr1": 5000, "chr2": 5000}


@pytest.fixture
def fragments(tmp_path):
    from rvi.io import write_fragments

    return write_fragments(tmp_path / "frags.tsv.gz", FRAGS)


def test_fragments_plain_gzip_with_index(tmp_path, fragments):
    import gzip

    from rvi.atac import validate_fragments

    text = gzip.open(fragments, "rb").read()
    with gzip.open(fragments, "wb") as fh:  # same content, plain gzip, the .tbi still next to it
        fh.write(text)
    with pytest.raises(ValueError, match=r"frags\.tsv\.gz: plain gzip, not bgzip.*\| bgzip >.*tabix -f -p bed"):
        validate_fragments(fragments, SIZES)


def test_fragments_truncated(tmp_path, fragments):
    from rvi.atac import validate_fragments

    data = fragments.read_bytes()
    fragments.write_bytes(data[: len(data) - 40])
    with pytest.raises(ValueError, match=r"frags\.tsv\.gz: truncated"):
        validate_fragments(fragments, SIZES)


def test_fragments_stale_index(tmp_path, fragments):
    import os

    from rvi.atac import validate_fragments

    index = fragments.with_name(fragments.name + ".tbi")
    later = index.stat().st_mtime + 60
    os.utime(fragments, (later, later))  # the file changed after it was indexed
    with pytest.raises(ValueError, match=r"index frags\.tsv\.gz\.tbi is older than the file.*tabix -f -p bed"):
        validate_fragments(fragments, SIZES)


def test_fragments_missing_index_names_config_key(tmp_path, fragments):
    from rvi.atac import validate_fragments

    fragments.with_name(fragments.name + ".tbi").unlink()
    with pytest.raises(FileNotFoundError, match=r"tabix -p bed .*'load_atac.require_index: false'"):
        validate_fragments(fragments, SIZES)
    assert validate_fragments(fragments, SIZES, require_index=False) == ["chr1", "chr2"]


def test_fragments_unsorted_without_index(tmp_path):
    import pysam

    from rvi.atac import validate_fragments

    plain = tmp_path / "u.tsv"
    FRAGS.iloc[[0, 2, 1, 3, 4, 5, 6, 7]].to_csv(plain, sep="\t", header=False, index=False)
    pysam.tabix_compress(str(plain), str(tmp_path / "u.tsv.gz"))
    with pytest.raises(ValueError, match=r"u\.tsv\.gz is not sorted .*line 3: start 50 after 90.*sort -k1,1 -k2,2n"):
        validate_fragments(tmp_path / "u.tsv.gz", SIZES, require_index=False)


def test_require_index_config_key_reaches_the_stage():
    from rvi.workflow import load_config, stage_params

    cfg = load_config(
        {"study": "s", "demo_data": {"generate": True}, "load_atac": {"require_index": False}},
        check_sample_sheet=False,
    )
    assert stage_params(cfg, "load_atac")["load_atac"]["require_index"] is False
