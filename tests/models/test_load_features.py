"""load() matches the data's features to the model's by name: reordered genes give the same latent."""

from __future__ import annotations

import numpy as np
import pytest

from rvi import AmbientRegularizedSCVI
from tests.conftest import make_counts


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    adata = make_counts(n_cells=200, n_genes=40)
    AmbientRegularizedSCVI.setup_anndata(adata, library_key="lib")
    model = AmbientRegularizedSCVI(adata, n_hidden=16, n_latent=4)
    model.train(max_epochs=1, batch_size=100)
    path = tmp_path_factory.mktemp("model") / "m"
    model.save(str(path), save_anndata=False)
    return path, adata, model.get_latent_representation()


def test_load_reorders_genes_by_name(saved):
    path, adata, z = saved
    order = np.random.default_rng(0).permutation(adata.n_vars)
    shuffled = adata[:, order].copy()
    loaded = AmbientRegularizedSCVI.load(str(path), adata=shuffled)
    assert list(loaded.adata.var_names) == list(adata.var_names)
    np.testing.assert_allclose(loaded.get_latent_representation(), z, rtol=1e-5, atol=1e-6)


def test_load_with_other_genes_names_them(saved):
    path, adata, _ = saved
    other = adata[:, 2:].copy()
    other.var_names = [*other.var_names[:-1], "not_a_gene"]
    with pytest.raises(
        ValueError, match=r"missing from the data: \['g0', 'g1', 'g39'\].*not trained on: \['not_a_gene'\]"
    ):
        AmbientRegularizedSCVI.load(str(path), adata=other)
