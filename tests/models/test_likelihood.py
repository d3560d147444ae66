"""The sparsity-aware negative binomial equals the textbook density."""

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
