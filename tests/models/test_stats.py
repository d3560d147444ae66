"""Chunked statistics and the data-driven dispersion initialisation, in memory and on a backed .h5ad."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp

from rvi import AmbientRegularizedSCVI
from rvi.models._stats import dispersion_from_data, modality_stats
from tests.conftest import make_counts


def test_chunked_welford_matches_numpy():
    adata = make_counts(n_cells=257, n_genes=30)
    codes = adata.obs["lib"].astype("category").cat.codes.to_numpy()
    stats = modality_stats(adata.X, [codes], [3], chunk_size=50)
    dense = adata.X.toarray().astype(np.float64)
    np.testing.assert_allclose(stats.mean, dense.mean(0), rtol=1e-10)
    np.testing.assert_allclose(stats.var, dense.var(0, ddof=1), rtol=1e-8)
    np.testing.assert_allclose(stats.total, dense.sum(1))
    frac = dense / dense.sum(1, keepdims=True)
    np.testing.assert_allclose(stats.category_fraction[0][1], frac[codes == 1].mean(0), rtol=1e-10)


def test_dispersion_init_recovers_technical_overdispersion():
    """With constant library sizes and no biology, all excess is technical: theta = mu^2 / (0.1 * excess)."""
    rng = np.random.default_rng(1)
    mu = np.full(40, 20.0)
    theta_true = 2.0
    X = rng.negative_binomial(theta_true, theta_true / (theta_true + mu), size=(20000, 40)).astype(float)
    stats = modality_stats(sp.csr_matrix(X), [], [])
    est = dispersion_from_data(stats.mean, stats.var, stats.total, technical_fraction=1.0)
    # CV^2 of library sizes is small but non-zero (sums of NB draws), so allow 15 %.
    assert abs(np.median(est) - theta_true) / theta_true < 0.15
    tech = dispersion_from_data(stats.mean, stats.var, stats.total)
    assert np.all(tech >= est) and np.all(tech <= 20.0)


def test_backed_h5ad_gives_same_init(tmp_path):
    adata = make_counts(n_cells=200, n_genes=40)
    path = tmp_path / "counts.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    in_mem = modality_stats(adata.X, [], [])
    on_disk = modality_stats(backed.X, [], [], chunk_size=64)
    np.testing.assert_allclose(on_disk.var, in_mem.var)
    np.testing.assert_allclose(on_disk.mean_fraction, in_mem.mean_fraction)
    backed.file.close()


def test_model_uses_data_dispersion_init():
    adata = make_counts()
    AmbientRegularizedSCVI.setup_anndata(adata, library_key="lib")
    model = AmbientRegularizedSCVI(adata, n_hidden=16, n_latent=4, dispersion_init="data")
    stats = modality_stats(adata.X, [], [])
    expected = dispersion_from_data(stats.mean, stats.var, stats.total)
    got = model.get_dispersion().to_numpy()
    # noise N(0, 0.1^2) on log theta at init
    assert np.abs(np.log(got) - np.log(expected)[None, :]).max() < 0.6
