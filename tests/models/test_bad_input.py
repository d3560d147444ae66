"""Bad input to the models raises a clear error naming the problem."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from rvi import AmbientRegularizedSCVI
from rvi.models._stats import validate_counts
from tests.conftest import make_counts


def test_non_integer_counts():
    adata = make_counts()
    adata.X = adata.X * 0.5
    with pytest.raises(ValueError, match="non-integer"):
        AmbientRegularizedSCVI.setup_anndata(adata, library_key="lib")


def test_negative_counts_in_layer():
    adata = make_counts()
    bad = adata.X.toarray()
    bad[3, 4] = -2
    adata.layers["counts"] = sp.csr_matrix(bad)
    with pytest.raises(ValueError, match="negative"):
        AmbientRegularizedSCVI.setup_anndata(adata, layer="counts", library_key="lib")


def test_missing_layer():
    with pytest.raises(KeyError, match="'raw'"):
        AmbientRegularizedSCVI.setup_anndata(make_counts(), layer="raw", library_key="lib")


def test_covariate_key_missing_from_obs():
    with pytest.raises(KeyError, match="'donor' is not a column"):
        AmbientRegularizedSCVI.setup_anndata(make_counts(), library_key="lib", nn_conditioning_covariate_keys=["donor"])


def test_nan_in_covariate():
    adata = make_counts()
    adata.obs.loc[adata.obs_names[:5], "lib"] = np.nan
    with pytest.raises(ValueError, match="'lib'.*5 missing"):
        AmbientRegularizedSCVI.setup_anndata(adata, library_key="lib")


def test_library_in_two_datasets():
    adata = make_counts()
    adata.obs["ds"] = adata.obs["ds"].astype(str)
    adata.obs.loc[adata.obs_names[0], "ds"] = "d2" if adata.obs["lib"].iloc[0] != "c" else "d1"
    lib = adata.obs["lib"].iloc[0]
    with pytest.raises(ValueError, match=f"libraries in several datasets: library '{lib}' -> "):
        AmbientRegularizedSCVI.setup_anndata(adata, library_key="lib", dataset_key="ds")


@pytest.mark.parametrize("explicit", ["ambient_covariate_keys", "dispersion_key", "library_size_key"])
def test_batch_key_with_explicit_keys(explicit):
    value = ["lib"] if explicit == "ambient_covariate_keys" else "lib"
    with pytest.raises(ValueError, match=f"batch_key .* cannot be combined with explicit {explicit}"):
        AmbientRegularizedSCVI.setup_anndata(make_counts(), batch_key="lib", **{explicit: value})


def test_library_key_and_batch_key_together():
    with pytest.raises(ValueError, match="not both"):
        AmbientRegularizedSCVI.setup_anndata(make_counts(), library_key="lib", batch_key="lib")


def test_batch_key_alias_fans_out():
    adata = make_counts()
    AmbientRegularizedSCVI.setup_anndata(adata, batch_key="lib")
    model = AmbientRegularizedSCVI(adata, n_hidden=16, n_latent=4)
    spec = model.covariate_spec
    assert spec.ambient_covariate_keys == ["lib"] and spec.dispersion_key == "lib" and spec.library_size_key == "lib"


def test_string_where_bool_expected():
    with pytest.raises(TypeError, match="string where a bool"):
        AmbientRegularizedSCVI.setup_anndata(make_counts(), library_key="lib", encoder_covariate_keys="False")
    adata = make_counts()
    AmbientRegularizedSCVI.setup_anndata(adata, library_key="lib")
    with pytest.raises(TypeError, match="regularise_background must be a bool"):
        AmbientRegularizedSCVI(adata, regularise_background="False")
    with pytest.raises(TypeError, match="feature_scaling must be a bool"):
        AmbientRegularizedSCVI(adata, feature_scaling="True")


def test_empty_anndata():
    empty = ad.AnnData(sp.csr_matrix((0, 10), dtype=np.float32))
    with pytest.raises(ValueError, match="empty"):
        AmbientRegularizedSCVI.setup_anndata(empty)


def test_validate_counts_on_dense_nonfinite():
    with pytest.raises(ValueError, match="NaN or infinite"):
        validate_counts(np.array([[1.0, np.nan]]), name="m")
