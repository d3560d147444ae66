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


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("n_groups", [0, 1, 3])
def test_log_nb_per_group_table_is_an_exact_rewrite_of_the_per_entry_form(sparse, n_groups):
    """Theta shared by a dispersion group: the table path (theta-only terms per group) gives the per-entry
    formula's value and gradients, with or without a group index."""
    torch.manual_seed(2)
    b, f = 30, 25
    table = torch.randn(max(n_groups, 1), f, dtype=torch.float64, requires_grad=True)
    mu = (torch.rand(b, f, dtype=torch.float64) * 8 + 0.05).requires_grad_()
    group = torch.randint(0, n_groups, (b,)) if n_groups else None
    x = torch.distributions.Poisson(mu.detach()).sample()
    x[x > 6] = 0
    assert (x == 0).any() and (x > 0).any()
    per_entry = table[group] if group is not None else table.expand(b, f)
    ref = log_nb(x, mu, per_entry, sparse=False)
    got = log_nb(x, mu, table, sparse=sparse, group=group)
    torch.testing.assert_close(got, ref)
    g_ref = torch.autograd.grad(ref.sum(), (mu, table))
    g_got = torch.autograd.grad(got.sum(), (mu, table))
    for a, b_ in zip(g_got, g_ref):
        torch.testing.assert_close(a, b_)


def test_shared_dispersion_draw_leaves_the_expected_loss_unchanged():
    """One draw of log theta per (group, feature) shared by the minibatch vs one per cell x feature: same
    per-entry marginal, so the Monte Carlo means of the per-cell log likelihood agree."""
    from rvi.priors import HierarchicalDispersion

    torch.manual_seed(3)
    b, f, n_draws = 16, 12, 4000
    disp = HierarchicalDispersion(f, n_groups=2, init_log_sigma=float(np.log(0.5)))
    group = torch.randint(0, 2, (b,))
    mu = torch.rand(b, f) * 5 + 0.1
    x = torch.distributions.Poisson(mu).sample()
    with torch.no_grad():
        shared = torch.stack([log_nb(x, mu, disp.log_theta(True), group=group) for _ in range(n_draws)])
        sigma = disp.px_r_log_sigma.exp()[group]
        entry = torch.stack([log_nb(x, mu, disp.px_r_mu[group] + sigma * torch.randn(b, f)) for _ in range(n_draws)])
    # the shared draw correlates cells, not entries' marginals: compare means per cell within MC error
    se = torch.sqrt(shared.var(0) / n_draws + entry.var(0) / n_draws)
    assert ((shared.mean(0) - entry.mean(0)).abs() < 4 * se).all()
    # and the draws do vary (a test that cannot fail otherwise)
    assert (shared.std(0) > 0.1).all()


def test_gather_rows_backward_matches_index_select():
    from rvi.priors import _ONE_HOT_MAX_ROWS, gather_rows

    torch.manual_seed(4)
    for n_rows in (3, _ONE_HOT_MAX_ROWS + 1):
        table = torch.randn(n_rows, 7, dtype=torch.float64, requires_grad=True)
        index = torch.randint(0, n_rows, (40,))
        upstream = torch.randn(40, 7, dtype=torch.float64)
        (g,) = torch.autograd.grad((gather_rows(table, index) * upstream).sum(), table)
        (ref,) = torch.autograd.grad((table[index] * upstream).sum(), table)
        torch.testing.assert_close(g, ref)
