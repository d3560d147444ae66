"""The getters both models share follow scvi-tools' signatures and semantics; bad keys name what exists."""

from __future__ import annotations

import numpy as np
import pytest

from rvi import AmbientRegularizedSCVI, RegularizedMultimodalVI
from tests.conftest import make_counts
from tests.models.test_multimodal import make_mudata

SMALL = {"n_hidden": 16, "n_latent": 4}


@pytest.fixture(scope="module")
def rna_model():
    adata = make_counts()
    AmbientRegularizedSCVI.setup_anndata(adata, library_key="lib", nn_conditioning_covariate_keys=["ds"])
    model = AmbientRegularizedSCVI(adata, **SMALL)
    model.train(max_epochs=2, batch_size=100)
    return model


@pytest.fixture(scope="module")
def multimodal_model():
    mdata = make_mudata()
    RegularizedMultimodalVI.setup_mudata(mdata, modalities=["rna", "atac"], library_key="lib")
    model = RegularizedMultimodalVI(mdata, n_hidden=16, n_latent={"rna": 4, "atac": 2})
    model.train(max_epochs=2, batch_size=60)
    return model


def test_library_size_rows_sum_to_it_for_both_models(rna_model, multimodal_model):
    norm = rna_model.get_normalized_expression(library_size=1e4)
    np.testing.assert_allclose(norm.to_numpy().sum(1), 1e4, rtol=1e-4)
    for modality in ("rna", "atac"):
        values = multimodal_model.get_normalized_expression(modality=modality, library_size=1e4, return_numpy=True)
        assert isinstance(values, np.ndarray)
        np.testing.assert_allclose(values.sum(1), 1e4, rtol=1e-4)
    # the default gives frequencies
    np.testing.assert_allclose(rna_model.get_normalized_expression().to_numpy().sum(1), 1.0, rtol=1e-4)


def test_gene_list_n_samples_and_batch_size(rna_model):
    full = rna_model.get_normalized_expression(library_size=100, batch_size=37)
    genes = ["g5", "g1"]
    sub = rna_model.get_normalized_expression(library_size=100, gene_list=genes)
    assert list(sub.columns) == genes
    np.testing.assert_allclose(sub.to_numpy(), full[genes].to_numpy(), rtol=1e-5)
    draws = rna_model.get_normalized_expression(n_samples=3, return_mean=False, indices=np.arange(10))
    assert draws.shape == (3, 10, 60)
    assert not np.allclose(draws[0], draws[1])  # posterior draws differ
    np.testing.assert_allclose(
        rna_model.get_normalized_expression(n_samples=3, indices=np.arange(10)).to_numpy().sum(1), 1.0, rtol=1e-4
    )
    with pytest.raises(KeyError, match="not in the model"):
        rna_model.get_normalized_expression(gene_list=["g1", "nope"])


def test_transform_batch_decodes_as_one_category(rna_model):
    d1 = rna_model.get_normalized_expression(transform_batch="d1", return_numpy=True)
    d2 = rna_model.get_normalized_expression(transform_batch="d2", return_numpy=True)
    both = rna_model.get_normalized_expression(transform_batch=["d1", "d2"], return_numpy=True)
    assert not np.allclose(d1, d2)
    np.testing.assert_allclose(both, (d1 + d2) / 2, rtol=1e-5)
    with pytest.raises(KeyError, match=r"categories: \['d1', 'd2'\]"):
        rna_model.get_normalized_expression(transform_batch="d3")


def test_transform_batch_on_batch_free_decoder_is_an_error(multimodal_model):
    with pytest.raises(ValueError, match="batch-free"):
        multimodal_model.get_normalized_expression(modality="rna", transform_batch="l1")


def test_latent_give_mean(rna_model):
    mean = rna_model.get_latent_representation()
    np.testing.assert_array_equal(mean, rna_model.get_latent_representation(give_mean=True))
    assert not np.allclose(mean, rna_model.get_latent_representation(give_mean=False))


@pytest.mark.parametrize("early_stopping", [False, True])
def test_history_has_validation_keys_with_and_without_early_stopping(early_stopping):
    adata = make_counts()
    AmbientRegularizedSCVI.setup_anndata(adata, library_key="lib")
    model = AmbientRegularizedSCVI(adata, **SMALL)
    model.train(max_epochs=2, batch_size=100, early_stopping=early_stopping)
    for key in ("elbo_train", "elbo_validation", "reconstruction_loss_validation", "rna_kl_z_validation"):
        assert key in model.history_, key
    assert np.isfinite(model.history_["elbo_validation"].to_numpy(dtype=float)).all()


def test_history_without_validation_set_has_nan_twins():
    adata = make_counts()
    AmbientRegularizedSCVI.setup_anndata(adata, library_key="lib")
    model = AmbientRegularizedSCVI(adata, **SMALL)
    model.train(max_epochs=1, batch_size=100, train_size=1.0)
    assert "elbo_train" in model.history_
    assert np.isnan(model.history_["elbo_validation"].to_numpy(dtype=float)).all()


def test_one_column_for_library_and_dataset_is_a_clear_error():
    adata = make_counts()
    with pytest.raises(ValueError, match="library_key and dataset_key are both 'lib'"):
        AmbientRegularizedSCVI.setup_anndata(adata, library_key="lib", dataset_key="lib")


def test_missing_covariate_key_lists_columns():
    adata = make_counts()
    with pytest.raises(KeyError, match=r"available: \['lib', 'depth', 'ds'\]"):
        AmbientRegularizedSCVI.setup_anndata(adata, library_key="library")
    mdata = make_mudata()
    with pytest.raises(KeyError, match="available"):
        RegularizedMultimodalVI.setup_mudata(mdata, modalities=["rna", "atac"], library_key="library")
