"""Shrinkage terms on the latent space (docs/model.md, "Shrinkage"): values, gradients, the n_obs rule and
active dimensions."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

from rvi import AmbientRegularizedSCVI
from rvi.priors import ARDLatentPrior, HorseshoeLatentPrior, decoder_l1, lognormal_halfcauchy_kl
from tests.conftest import make_counts

SMALL = {"n_hidden": 32, "n_latent": 6}


def _model(**kwargs):
    adata = make_counts()
    AmbientRegularizedSCVI.setup_anndata(adata, library_key="lib")
    return AmbientRegularizedSCVI(adata, **{**SMALL, **kwargs})


def _loss(model, n=64, seed=0, **loss_kwargs):
    loader = model._make_data_loader(adata=model.adata, indices=np.arange(n), batch_size=n)
    tensors = next(iter(loader))
    torch.manual_seed(seed)
    _, _, out = model.module(tensors, loss_kwargs=loss_kwargs)
    return out


def test_ard_kl_is_the_closed_form_against_the_per_dimension_prior():
    prior = ARDLatentPrior(3, a0=2.0, b0=1.0)
    with torch.no_grad():
        prior.log_alpha.copy_(torch.log(torch.tensor([0.5, 1.0, 4.0])))
    qm, qv = torch.tensor([[0.3, -1.0, 0.2]]), torch.tensor([[0.2, 0.5, 0.1]])
    q = torch.distributions.Normal(qm, qv.sqrt())
    p = torch.distributions.Normal(torch.zeros(3), prior.precision().rsqrt())
    assert torch.allclose(prior.kl(qm, qv), torch.distributions.kl_divergence(q, p).sum(-1), atol=1e-6)
    # hyper-prior: -log Gamma(alpha; 2, 1) - log alpha, at alpha = (0.5, 1, 4)
    alpha = torch.tensor([0.5, 1.0, 4.0])
    expected = -(torch.distributions.Gamma(2.0, 1.0).log_prob(alpha) + torch.log(alpha)).sum()
    assert torch.isclose(prior.penalty(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="a0"):
        ARDLatentPrior(3, a0=0.0)


def test_ard_precision_grows_for_an_ignored_dimension():
    """Dimension 0 carries signal (spread ~1); dimension 1 is ignored, the encoder leaves it near 0."""
    torch.manual_seed(0)
    prior = ARDLatentPrior(2)
    qm = torch.stack([torch.randn(500), 0.05 * torch.randn(500)], dim=1)
    qv = torch.tensor([0.05, 0.01]).expand(500, 2)
    opt = torch.optim.Adam(prior.parameters(), lr=0.05)
    first = None
    for _ in range(400):
        opt.zero_grad()
        loss = prior.kl(qm, qv).mean() + prior.penalty() / 500
        loss.backward()
        if first is None:
            first = prior.log_alpha.grad.clone()
        opt.step()
    assert first[1] < 0 < first[0] + 1.0  # the ignored dimension's precision is pushed up at once
    alpha = prior.precision().detach()
    # the optimum is ~1 / E[z^2] per dimension: ~1 for the used one, ~1/(0.05^2 + 0.01) = 80 for the ignored
    assert 0.7 < alpha[0] < 1.3
    assert alpha[1] > 40


def test_horseshoe_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu, log_sigma, scale = torch.tensor([-1.0, 0.0, 0.7]), torch.log(torch.tensor([0.1, 0.5, 1.2])), 0.3
    exact = lognormal_halfcauchy_kl(mu, log_sigma, scale)
    q = torch.distributions.LogNormal(mu, log_sigma.exp())
    x = q.sample((400_000,))
    mc = (q.log_prob(x) - torch.distributions.HalfCauchy(scale).log_prob(x)).mean(0)
    assert torch.allclose(exact, mc, atol=0.01)
    # its gradient (w.r.t. mu) matches the reparameterised Monte-Carlo gradient
    m = mu.clone().requires_grad_(True)
    lognormal_halfcauchy_kl(m, log_sigma, scale).sum().backward()
    m2 = mu.clone().requires_grad_(True)
    eps = torch.randn(400_000, 3)
    x = torch.exp(m2 + log_sigma.exp() * eps)
    lq = torch.distributions.Normal(m2, log_sigma.exp()).log_prob(torch.log(x)) - torch.log(x)
    (lq - torch.distributions.HalfCauchy(scale).log_prob(x)).mean(0).sum().backward()
    assert torch.allclose(m.grad, m2.grad, atol=0.02)


def test_horseshoe_prior_local_kl_and_non_centred_scale():
    prior = HorseshoeLatentPrior(4, tau0=0.5)
    qm, qv = torch.zeros(2, 4), torch.ones(2, 4)
    # q(u) equals its prior: only the lambda KL (at LogNormal(0, 0.1^2) vs HalfCauchy(1)) remains
    lam_kl = lognormal_halfcauchy_kl(torch.zeros(4), torch.full((4,), np.log(0.1)), 1.0).sum()
    assert torch.allclose(prior.kl(qm, qv), lam_kl.expand(2), atol=1e-6)
    assert torch.allclose(prior.scale(qm, sample=False), torch.full((2, 4), 0.5))
    log_half, log_tenth = torch.tensor(np.log(0.5)).float(), torch.tensor(np.log(0.1)).float()
    tau_kl = lognormal_halfcauchy_kl(log_half, log_tenth, 0.5)
    assert torch.isclose(prior.penalty(), tau_kl)


@pytest.mark.parametrize("latent_prior, term", [("ard", "rna_ard_prior"), ("horseshoe", "rna_horseshoe_tau_kl")])
def test_global_shrinkage_terms_follow_the_n_obs_rule(latent_prior, term):
    model = _model(latent_prior=latent_prior, decoder_l1_weight=0.05)
    model.module.train()
    a, b = _loss(model, n_obs=1000), _loss(model, n_obs=2000)
    for name in (term, "rna_decoder_l1"):
        assert name in model.module.global_penalties()
        assert a.extra_metrics[name].abs() > 0
    ga, gb = a.extra_metrics["global_penalty_scaled"], b.extra_metrics["global_penalty_scaled"]
    assert torch.isclose(gb, ga / 2, rtol=1e-5)
    assert torch.isclose(a.loss - b.loss, ga / 2, rtol=1e-4)
    expected_l1 = decoder_l1(model.module.decoders["rna"].weight_matrices(), 0.05)
    assert torch.isclose(a.extra_metrics["rna_decoder_l1"], expected_l1)


def test_local_sparsity_terms_are_meaned_over_cells():
    model = _model(z_l1_weight=0.2, hidden_l1_weight=0.01)
    model.module.eval()
    loader = model._make_data_loader(adata=model.adata, indices=np.arange(64), batch_size=64)
    tensors = next(iter(loader))
    module = model.module
    inf = module.inference(**module._get_inference_input(tensors), sample=False)
    gen = module.generative(**module._get_generative_input(tensors, inf))
    z_l1 = 0.2 * inf["qz_m"]["rna"].abs().sum(-1).mean()
    h_l1 = 0.01 * gen["decoder_hidden"]["rna"].abs().sum(-1).mean()
    out = module.loss(tensors, inf, gen, n_obs=1000)
    assert torch.isclose(out.extra_metrics["rna_z_l1"], z_l1, rtol=1e-5)
    assert torch.isclose(out.extra_metrics["rna_hidden_l1"], h_l1, rtol=1e-5)
    # switching them off removes exactly their mean from the loss (same outputs, n_obs irrelevant to them)
    torch.manual_seed(1)  # the dispersion penalty takes one Monte-Carlo draw
    full = module.loss(tensors, inf, gen, n_obs=1000).loss
    module.z_l1_weight = module.hidden_l1_weight = 0.0
    torch.manual_seed(1)
    off = module.loss(tensors, inf, gen, n_obs=1000).loss
    assert torch.isclose(full - off, z_l1 + h_l1, rtol=1e-4)
    # gradient w.r.t. the posterior mean: (z-KL + z-L1) / B = (qm + weight * sign(qm)) / B
    module.z_l1_weight = 0.2
    qm = inf["qz_m"]["rna"].detach().requires_grad_(True)
    inf["qz_m"]["rna"] = inf["z_mean"]["rna"] = qm
    module.loss(tensors, inf, gen, n_obs=1000).loss.backward()
    assert torch.allclose(qm.grad, 0.2 * torch.sign(qm.detach()) / 64 + qm.detach() / 64, atol=1e-6)


def test_bad_shrinkage_options_are_rejected():
    with pytest.raises(ValueError, match="latent_prior"):
        _model(latent_prior="laplace")
    with pytest.raises(ValueError, match="z_l1_weight"):
        _model(z_l1_weight=-1.0)
    with pytest.raises(ValueError, match="precision"):
        m = _model(latent_prior="normal")
        m.is_trained_ = True
        m.get_active_latent_dims(method="precision")


def _linear_factor_counts(n_cells: int, n_genes: int, n_factors: int = 2, seed: int = 0):
    """NB counts whose log rate is linear in ``n_factors`` Gaussian factors."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(n_cells, n_factors))
    loadings = rng.normal(scale=1.0, size=(n_factors, n_genes))
    rate = np.exp(1.0 + factors @ loadings * 0.8)
    counts = rng.negative_binomial(10, 10 / (10 + rate)).astype(np.float32)
    adata = ad.AnnData(counts)
    adata.obs["lib"] = np.where(np.arange(n_cells) % 2, "a", "b")
    return adata


def test_active_only_drops_unused_dimensions_on_simulated_factors():
    import scvi

    scvi.settings.seed = 0
    adata = _linear_factor_counts(n_cells=400, n_genes=60)
    AmbientRegularizedSCVI.setup_anndata(adata, library_key="lib")
    model = AmbientRegularizedSCVI(adata, n_hidden=32, n_latent=8, latent_prior="ard")
    model.train(max_epochs=60, batch_size=64, enable_progress_bar=False, train_size=1.0, plan_kwargs={"lr": 1e-2})
    active = model.get_active_latent_dims()
    ratio = model.latent_variance_ratio()
    # two true factors: two or three dimensions are used, the rest collapse to their prior (ratio ~ 1)
    assert 2 <= len(active) <= 3, ratio
    unused = np.setdiff1d(np.arange(8), active)
    assert ratio[unused].min() > 0.8 and ratio[active].max() < 0.2
    z = model.get_latent_representation(active_only=True)
    assert z.shape == (adata.n_obs, len(active))
    assert np.allclose(z, model.get_latent_representation()[:, active])
    # the learned ARD precisions separate the same dimensions: used ones have the smaller prior precision
    alpha = model.module.latent_prior["rna"].precision().detach().numpy()
    assert alpha[active].max() < alpha[unused].min()
    by_precision = model.get_active_latent_dims(method="precision", threshold=float(alpha[unused].min()))
    assert set(by_precision) == set(active)
