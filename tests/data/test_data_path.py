"""rvi.data: resident / streamed / backed minibatches match scvi-tools' loader; memory model; bad input."""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pytest
import scipy.sparse as sp
import scvi
import torch
from scvi.dataloaders import DataSplitter

from rvi import AmbientRegularizedSCVI, RegularizedMultimodalVI
from rvi.data import (
    BackedCSRSource,
    RVIDataSplitter,
    TorchCSR,
    choose_data_path,
    estimate_memory,
    gather_dense,
    rank_shard,
)
from tests.conftest import make_counts
from tests.models.test_multimodal import make_mudata

md.set_options(pull_on_update=False)


def _rna_model(adata=None, **kwargs):
    adata = make_counts(n_cells=300, n_genes=40) if adata is None else adata
    AmbientRegularizedSCVI.setup_anndata(adata, library_key="lib", dataset_key="ds")
    return AmbientRegularizedSCVI(adata, n_hidden=16, n_latent=4, **kwargs)


def test_gather_dense_matches_scipy_rows():
    rng = np.random.default_rng(0)
    X = sp.random(50, 30, density=0.2, format="csr", random_state=1, dtype=np.float32)
    X[7] = 0  # an empty row
    X.eliminate_zeros()
    csr = TorchCSR.from_scipy(X)
    rows = torch.from_numpy(rng.choice(50, 20, replace=True))
    dense = gather_dense(csr.indptr, csr.indices, csr.data, rows, 30)
    np.testing.assert_array_equal(dense.numpy(), X[rows.numpy()].toarray())
    empty = gather_dense(csr.indptr, csr.indices, csr.data, torch.tensor([7, 7]), 30)
    assert empty.shape == (2, 30) and float(empty.abs().sum()) == 0.0


def _splitter(model, data_path, **kw):
    return RVIDataSplitter(
        model.adata_manager, train_size=0.8, batch_size=64, data_path=data_path, module=model.module, **kw
    )


def _epoch(loader, seed):
    torch.manual_seed(seed)
    return list(loader)


@pytest.mark.parametrize("data_path", ["resident", "streamed"])
def test_same_minibatches_as_scvi_loader(data_path):
    model = _rna_model()
    scvi.settings.seed = 3
    ref = DataSplitter(model.adata_manager, train_size=0.8, batch_size=64)
    ref.setup()
    ours = _splitter(model, data_path)
    ours.setup()
    np.testing.assert_array_equal(ours.train_idx, ref.train_idx)
    np.testing.assert_array_equal(ours.val_idx, ref.val_idx)
    assert ours.data_path_used == data_path
    for make in ("train_dataloader", "val_dataloader"):
        a, b = _epoch(getattr(ref, make)(), 11), _epoch(getattr(ours, make)(), 11)
        assert len(a) == len(b) == len(getattr(ours, make)())
        for ta, tb in zip(a, b):
            assert set(ta) == set(tb)
            for key in ta:
                assert ta[key].dtype == tb[key].dtype, key
                torch.testing.assert_close(ta[key], tb[key], rtol=0, atol=0)
    # the global generator is left where scvi-tools' loader leaves it (the model's noise follows it)
    _epoch(ref.train_dataloader(), 5)
    after_ref = torch.rand(3)
    _epoch(ours.train_dataloader(), 5)
    torch.testing.assert_close(torch.rand(3), after_ref)


def test_loss_curves_match_across_paths_with_validation():
    adata = make_counts(n_cells=300, n_genes=40)
    curves = {}
    for data_path in ("scvi", "resident", "streamed"):
        scvi.settings.seed = 0
        model = _rna_model(adata)
        model.train(max_epochs=3, batch_size=64, data_path=data_path, check_val_every_n_epoch=1)
        assert model.data_path_["data_path"] == data_path
        hist = model.history_
        assert len(hist["elbo_validation"]) == 3
        curves[data_path] = np.concatenate(
            [hist["elbo_train"].to_numpy(float), hist["elbo_validation"].to_numpy(float)]
        )
    np.testing.assert_allclose(curves["resident"], curves["scvi"], rtol=1e-5)
    np.testing.assert_allclose(curves["streamed"], curves["scvi"], rtol=1e-5)


def test_auto_is_resident_when_it_fits_and_early_stopping_works():
    model = _rna_model()
    model.train(
        max_epochs=30,
        batch_size=64,
        early_stopping=True,
        early_stopping_patience=1,
        early_stopping_min_delta=1e9,  # no epoch can improve by this much: stops after patience
    )
    assert model.data_path_["data_path"] == "resident"
    assert "auto" in model.data_path_["reason"]
    assert len(model.history_["elbo_validation"]) == 2


def test_multimodal_resident_matches_scvi_loader_with_missing_modality():
    mdata = make_mudata()
    atac = mdata.mod["atac"].X.toarray()
    atac[:10] = 0  # cells without ATAC: all-zero rows, masked by the module
    mdata.mod["atac"].X = sp.csr_matrix(atac)
    RegularizedMultimodalVI.setup_mudata(mdata, modalities=["rna", "atac"], library_key="lib")
    curves = {}
    for data_path in ("scvi", "resident"):
        scvi.settings.seed = 0
        model = RegularizedMultimodalVI(mdata, n_hidden=16, n_latent={"rna": 5, "atac": 3})
        model.train(max_epochs=2, batch_size=40, data_path=data_path, check_val_every_n_epoch=1)
        curves[data_path] = model.history_["elbo_validation"].to_numpy(float).ravel()
    np.testing.assert_allclose(curves["resident"], curves["scvi"], rtol=1e-5)
    model = RegularizedMultimodalVI(mdata, n_hidden=16, n_latent={"rna": 5, "atac": 3})
    split = _splitter(model, "resident")
    split.setup()
    batch = split._loader(np.arange(20), False, False).batch(torch.arange(20))
    assert float(batch["X_atac"][:10].sum()) == 0.0 and float(batch["X_atac"][10:].sum()) > 0
    np.testing.assert_array_equal(batch["X_rna"].numpy(), mdata.mod["rna"].X[:20].toarray())


def test_memory_model_formula_and_forced_resident_error():
    est = estimate_memory(1000, [{"n_features": 200, "nnz": 5000, "n_hidden": 64, "n_latent": 8}], 128, 2)
    assert est.data_bytes == 8 * 1001 + 8 * 5000 + 4 * 1000 * 2 + 8 * 1000
    assert est.resident_device_bytes == est.data_bytes + est.model_bytes + est.activation_bytes
    assert est.streamed_host_bytes == est.data_bytes
    assert choose_data_path("auto", est, 10 * est.resident_device_bytes, torch.device("cpu"))[0] == "resident"
    path, reason = choose_data_path("auto", est, est.resident_device_bytes, torch.device("cpu"))
    assert path == "streamed" and "free" in reason
    with pytest.raises(MemoryError, match=rf"{est.resident_device_bytes} bytes.*1000 bytes.*streamed"):
        choose_data_path("resident", est, 1000, torch.device("cpu"))


def test_memory_model_counts_the_shared_block_in_every_encoder_and_once_in_the_decoders():
    mod = {"n_features": 200, "nnz": 5000, "n_hidden": 64}
    one = estimate_memory(1000, [{**mod, "n_latent": 8}], 128, n_latent_shared=4)
    assert one.model_bytes == estimate_memory(1000, [{**mod, "n_latent": 12}], 128).model_bytes
    two = estimate_memory(1000, [{**mod, "n_latent": 8}] * 2, 128, n_latent_shared=4)
    without = estimate_memory(1000, [{**mod, "n_latent": 8}] * 2, 128)
    # per encoder 2 heads x 64 x 4 more; per decoder 4 more inputs x 64 (the block is counted once in z)
    assert two.model_bytes - without.model_bytes == 16 * 2 * (2 * 64 * 4 + 4 * 64)


def test_bad_data_path_value():
    model = _rna_model()
    with pytest.raises(ValueError, match="data_path must be one of"):
        model.train(max_epochs=1, data_path="gpu")


def _write_backed(tmp_path, X, name="counts.h5ad"):
    path = tmp_path / name
    a = make_counts(n_cells=X.shape[0], n_genes=X.shape[1])
    a.X = X
    a.write_h5ad(path)
    return path


def test_backed_h5ad_block_shuffle_and_training(tmp_path):
    X = make_counts(n_cells=300, n_genes=40).X
    path = _write_backed(tmp_path, X)
    source = BackedCSRSource(path, "X", "X", block_size=16, blocks_per_fetch=3)
    idx = np.arange(0, 300, 2)
    seen = []
    for rows, pieces in source.epoch(idx, 32, shuffle=True, drop_last=False, seed=1):
        ip, ix, dv = pieces["X"]
        got = sp.csr_matrix((dv.numpy(), ix.numpy(), ip.numpy()), shape=(len(rows), 40)).toarray()
        np.testing.assert_array_equal(got, X[rows.numpy()].toarray())
        seen.append(rows.numpy())
    seen = np.concatenate(seen)
    assert sorted(seen.tolist()) == idx.tolist()
    assert not np.array_equal(seen, idx)  # shuffled
    backed = ad.read_h5ad(path, backed="r")
    model = _rna_model(backed)
    model.train(max_epochs=2, batch_size=64, data_path="streamed", check_val_every_n_epoch=1)
    assert len(model.history_["elbo_validation"]) == 2


def test_backed_file_not_csr_and_changed_shape(tmp_path):
    X = make_counts(n_cells=100, n_genes=20).X
    csc = _write_backed(tmp_path, sp.csc_matrix(X), "csc.h5ad")
    with pytest.raises(ValueError, match="csc_matrix.*needs CSR"):
        BackedCSRSource(csc, "X", "X")
    path = _write_backed(tmp_path, X)
    source = BackedCSRSource(path, "X", "X", block_size=16)
    _write_backed(tmp_path, sp.csr_matrix(X[:80]))  # the file is rewritten with fewer cells
    with pytest.raises(RuntimeError, match=r"changed during training.*\(100, 20\).*\(80, 20\)"):
        list(source.epoch(np.arange(80), 32, shuffle=True, drop_last=False))


def test_rank_shards_are_equal_sized_and_cover_the_split():
    idx = np.arange(10, 17)  # 7 cells over 3 ranks: 3 each, two repeated from the start
    shards = [rank_shard(idx, r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert set(np.concatenate(shards)) == set(idx)
    np.testing.assert_array_equal(rank_shard(idx, 0, 1), idx)


@pytest.mark.parametrize("data_path", ["resident", "streamed"])
def test_ddp_rank_holds_only_its_shard(monkeypatch, data_path):
    model = _rna_model()
    X = model.adata_manager.get_from_registry("X")
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(RVIDataSplitter, "_rank_and_world", lambda self, r=rank: (r, 2))
        scvi.settings.seed = 0  # every rank draws the same train / validation split
        split = _splitter(model, data_path, distributed_sampler=True)
        split.setup()
        assert f"DDP rank {rank} of 2" in split.data_path_reason and split.data_path_used == data_path
        expected_rows = rank_shard(split.train_idx, rank, 2)
        if data_path == "resident":
            n_val = len(rank_shard(split.val_idx, rank, 2))
            assert split._built["matrices"]["X"].shape[0] == len(expected_rows) + n_val  # the shard, not all cells
        batches = _epoch(split.train_dataloader(), seed=0)
        got = torch.cat([b["X"] for b in batches]).numpy()
        assert got.shape[0] == len(expected_rows)
        # the same cells (as a multiset of count rows) as the shard's rows of the full matrix
        key = lambda a: sorted(map(bytes, np.ascontiguousarray(a, dtype=np.float32)))  # noqa: E731
        assert key(got) == key(X[expected_rows])
        seen.append(set(expected_rows))
    assert seen[0] | seen[1] == set(split.train_idx)


def test_early_stopping_without_validation_set_is_an_error():
    model = _rna_model()
    with pytest.raises(ValueError, match="no validation set"):
        model.train(max_epochs=2, batch_size=64, train_size=1.0, early_stopping=True)


def test_batch_totals_match_row_lengths():
    X = sp.random(70, 12, density=0.3, format="csr", random_state=2, dtype=np.float32)
    csr = TorchCSR.from_scipy(X)
    rows = torch.randperm(70)
    lengths = np.diff(X.indptr)[rows.numpy()]
    expected = [int(lengths[s : s + 32].sum()) for s in range(0, 70, 32)]
    assert csr.batch_totals(rows, 32) == expected
    assert csr.batch_totals(rows[:64], 32) == expected[:2]
