"""The sparsity-aware negative binomial equals the textbook density."""

import numpy as np
import pytest
import torch

from rvi.module.vae import log_nb


def test_log_nb_matches_torch_negative_binomial():
    torch.manual_seed(0)
    mu = torch.rand(50, 40, dtype=torch.float64) * 20 + 0.01
    log_theta = torch.randn(50, 40, dtype=torch.float64)
    theta = log_theta.exp()
    x = torch.distributions.Poisson(torch.distributions.Gamma(theta, theta / mu).sample()).sample()
    assert (x == 0).any() and (x > 0).any()
    # torch's NegativeBinomial(total_count=theta, probs=mu/(mu+theta)) has mean mu and variance mu + mu^2/theta
    ref = torch.distributions.NegativeBinomial(total_count=theta, probs=mu / (mu + theta)).log_prob(x).sum(-1)
    torch.testing.assert_close(log_nb(x, mu, log_theta, eps=0.0, sparse=False), ref)
    torch.testing.assert_close(log_nb(x, mu, log_theta, eps=0.0, sparse=True), ref)


def test_log_nb_gradients_match_dense_formula():
    torch.manual_seed(1)
    mu = (torch.rand(8, 6, dtype=torch.float64) * 5 + 0.1).requires_grad_()
    log_theta = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    x = torch.tensor([[0, 1, 0, 3, 0, 0]] * 8, dtype=torch.float64)

    def dense(mu, log_theta):
        theta = log_theta.exp()
        lt = torch.log(theta + mu)
        return (
            theta * (log_theta - lt) + x * (torch.log(mu) - lt) + torch.lgamma(x + theta) - torch.lgamma(theta)
        ).sum() - torch.lgamma(x + 1).sum()

    g2 = torch.autograd.grad(dense(mu, log_theta), (mu, log_theta))
    for sparse in (False, True):
        g1 = torch.autograd.grad(log_nb(x, mu, log_theta, eps=0.0, sparse=sparse).sum(), (mu, log_theta))
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b)


def test_decoder_softplus_works_on_fractions_of_the_typical_library():
    from rvi.nn.blocks import Decoder

    mean_rate = torch.tensor([0.01, 0.5, 12.0, 300.0])
    dec = Decoder(n_latent=3, n_out=4, n_hidden=8, n_layers=1, output_scale=3000.0)
    dec.init_output_bias(mean_rate)
    with torch.no_grad():
        dec.out.weight.zero_()
    torch.testing.assert_close(dec(torch.randn(5, 3)), mean_rate.expand(5, -1), rtol=1e-4, atol=1e-6)
    # Every pre-activation sits in softplus' exponential regime (a fold change = additive shift).
    assert (dec.out.bias < -2).all()
    with pytest.raises(ValueError, match="output_scale"):
        Decoder(n_latent=3, n_out=4, n_hidden=8, n_layers=1, output_scale=0.0)


def test_model_decoders_use_the_typical_library_as_output_scale():
    from rvi import AmbientRegularizedSCVI
    from rvi.simulate import simulate_rna

    adata = simulate_rna(n_cells=200, n_genes=60, seed=0)
    AmbientRegularizedSCVI.setup_anndata(adata, library_key="library")
    model = AmbientRegularizedSCVI(adata, n_hidden=16, n_latent=4)
    totals = np.asarray(adata.X.sum(1)).ravel()
    per_library = [
        np.log(totals[adata.obs["library"].to_numpy() == lib]).mean() for lib in adata.obs["library"].cat.categories
    ]
    expected = float(np.exp(np.mean(per_library)))
    assert float(model.module.decoders["rna"].output_scale) == pytest.approx(expected, rel=1e-4)
