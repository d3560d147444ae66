"""Structural priors shared by every modality and their penalties.

Each prior owns its parameters and returns its *global* penalty (negative log prior or KL of a
global variational factor). The module divides the sum of global penalties by the training-set
size n_obs, never by the minibatch size (docs/model.md, "Loss and the n_obs rule").
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn.functional import softplus

_LOG_2PI = math.log(2 * math.pi)
# softplus(gamma) / 0.7 == 1 at gamma = softplus^-1(0.7)
_SCALING_DIVISOR = 0.7
_SCALING_INIT = math.log(math.expm1(_SCALING_DIVISOR))


def gamma_log_prob(x: torch.Tensor, shape: float, rate: float) -> torch.Tensor:
    """log Gamma(x; shape, rate), shape/rate parameterisation."""
    return shape * math.log(rate) - math.lgamma(shape) + (shape - 1) * torch.log(x) - rate * x


_ONE_HOT_MAX_ROWS = 512  # above this many groups the B x G x F one-hot matmul loses to index_add_


class _GatherRows(torch.autograd.Function):
    """table[index] whose backward is a one-hot matmul instead of index_select's scatter-add: at 1024 cells x
    2000 features x 4 groups on 2 CPU cores the scatter-add took ~70 ms and index_add_ as long, the matmul
    ~12 ms (it is B x G x F work, so tables with thousands of rows fall back to index_add_)."""

    @staticmethod
    def forward(ctx, table, index):
        ctx.save_for_backward(index)
        ctx.n_rows = table.shape[0]
        return table.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        if ctx.n_rows <= _ONE_HOT_MAX_ROWS:
            onehot = torch.nn.functional.one_hot(index, ctx.n_rows).to(grad.dtype)
            return onehot.T @ grad, None
        return grad.new_zeros((ctx.n_rows, *grad.shape[1:])).index_add_(0, index, grad), None


def gather_rows(table: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """table[index] for a (groups x features) parameter table and a per-cell group index; a one-row table
    (or no index) broadcasts instead of being copied. Far cheaper than advanced indexing (index_put
    backward) or a one-hot matmul forward."""
    if index is None or table.shape[0] == 1:
        return table[:1]
    if not table.requires_grad:
        return table.index_select(0, index)
    return _GatherRows.apply(table, index)


def normal_kl(m_q: torch.Tensor, v_q: torch.Tensor, m_p: torch.Tensor, v_p: torch.Tensor) -> torch.Tensor:
    """KL(Normal(m_q, v_q) || Normal(m_p, v_p)) with variances, elementwise."""
    return 0.5 * (torch.log(v_p) - torch.log(v_q) + (v_q + (m_q - m_p) ** 2) / v_p - 1.0)


def standard_normal_kl(m_q: torch.Tensor, v_q: torch.Tensor) -> torch.Tensor:
    """KL(Normal(m_q, v_q) || Normal(0, I)) summed over the last dimension."""
    return 0.5 * (v_q + m_q**2 - 1.0 - torch.log(v_q)).sum(-1)


class HierarchicalDispersion(nn.Module):
    """Inverse dispersion theta_{f,d} with a variational LogNormal and a containment prior.

    q(log theta) = Normal(px_r_mu, exp(px_r_log_sigma)); 1/sqrt(theta) ~ Exponential(lambda_d);
    lambda_d ~ Gamma(9, 3). The prior density is written in log-theta space (with the Jacobian
    |d u / d log theta| = u / 2 of u = 1/sqrt(theta)), so the penalty is a proper KL term whose
    stationary point without data is theta = lambda^2 (= 9 at the Gamma(9, 3) mean of lambda).
    """

    def __init__(
        self,
        n_features: int,
        n_groups: int = 1,
        lambda_shape: float = 9.0,
        lambda_rate: float = 3.0,
        init_theta: torch.Tensor | None = None,
        init_noise_sd: float = 0.1,
        init_log_sigma: float = math.log(0.1),
    ):
        super().__init__()
        self.lambda_shape, self.lambda_rate = lambda_shape, lambda_rate
        equilibrium = (lambda_shape / lambda_rate) ** 2
        if init_theta is None:
            centre = torch.full((n_groups, n_features), math.log(equilibrium))
        else:
            centre = torch.log(torch.as_tensor(init_theta, dtype=torch.float32)).expand(n_groups, n_features).clone()
        self.px_r_mu = nn.Parameter(centre + init_noise_sd * torch.randn(n_groups, n_features))
        self.px_r_log_sigma = nn.Parameter(torch.full((n_groups, n_features), init_log_sigma))
        self.log_lambda = nn.Parameter(torch.full((n_groups,), math.log(lambda_shape / lambda_rate)))

    def log_theta(self, sample: bool) -> torch.Tensor:
        """log theta per dispersion group and feature (groups x F): one LogNormal draw per entry of the table
        while training, px_r_mu otherwise. The draw is shared by the cells of a minibatch: each cell-feature
        entry still has the marginal q(log theta), so the expected loss is that of a draw per cell x feature
        (the sum over cells is linear), at G x F instead of B x F sampling, exp and lgamma work."""
        if not sample:
            return self.px_r_mu
        sigma = torch.exp(self.px_r_log_sigma)
        return torch.addcmul(self.px_r_mu, sigma, torch.randn_like(sigma))

    def penalty(self) -> dict[str, torch.Tensor]:
        sigma = torch.exp(self.px_r_log_sigma)
        log_theta = self.px_r_mu + sigma * torch.randn_like(sigma)
        lam = torch.exp(self.log_lambda)[:, None]
        u = torch.exp(-0.5 * log_theta)
        entropy = (0.5 * (1.0 + _LOG_2PI) + self.px_r_log_sigma).sum()
        log_prior = (torch.log(lam) - lam * u + math.log(0.5) + torch.log(u)).sum()
        lambda_prior = gamma_log_prob(torch.exp(self.log_lambda), self.lambda_shape, self.lambda_rate).sum()
        return {"dispersion_penalty": -entropy - log_prior, "dispersion_lambda_prior": -lambda_prior}


class AmbientBackground(nn.Module):
    """Additive background s_nf = sum over ambient keys of exp(beta_{f, e_k(n)}); prior Gamma(1, 100) on exp(beta)."""

    def __init__(
        self,
        n_features: int,
        n_cats_per_key: list[int],
        prior_shape: float = 1.0,
        prior_rate: float = 100.0,
        init: list[torch.Tensor] | None = None,
    ):
        super().__init__()
        self.prior_shape, self.prior_rate = prior_shape, prior_rate
        prior_mean = prior_shape / prior_rate
        betas = []
        for k, n_cats in enumerate(n_cats_per_key):
            start = torch.full((n_cats, n_features), prior_mean) if init is None else init[k].clamp(min=1e-8)
            betas.append(nn.Parameter(torch.log(start.float())))
        self.beta = nn.ParameterList(betas)

    def forward(self, categories: list[torch.Tensor]) -> torch.Tensor:
        return sum(gather_rows(torch.exp(beta), cat) for beta, cat in zip(self.beta, categories))

    def profiles(self) -> list[torch.Tensor]:
        return [torch.exp(beta) for beta in self.beta]

    def penalty(self) -> torch.Tensor:
        return -sum(gamma_log_prob(torch.exp(b), self.prior_shape, self.prior_rate).sum() for b in self.beta)


class FeatureScaling(nn.Module):
    """Multiplicative per-feature factor y = prod_k softplus(gamma_k)/0.7 with a tight Gamma(200, 200) prior.

    With no scaling key a single (1, F) fallback factor is used. Several keys multiply, so the
    product starts at 1.
    """

    def __init__(self, n_features: int, n_cats_per_key: list[int], prior_shape: float = 200.0, prior_rate=200.0):
        super().__init__()
        self.prior_shape, self.prior_rate = prior_shape, prior_rate
        self.has_keys = len(n_cats_per_key) > 0
        sizes = n_cats_per_key if self.has_keys else [1]
        self.gamma = nn.ParameterList([nn.Parameter(torch.full((n, n_features), _SCALING_INIT)) for n in sizes])

    def factors(self) -> list[torch.Tensor]:
        return [softplus(g) / _SCALING_DIVISOR for g in self.gamma]

    def forward(self, categories: list[torch.Tensor], n_cells: int) -> torch.Tensor:
        if not self.has_keys:
            return self.factors()[0]  # (1, F), broadcast by the caller
        out = None
        for y, cat in zip(self.factors(), categories):
            out = gather_rows(y, cat) if out is None else out * gather_rows(y, cat)
        return out

    def penalty(self) -> torch.Tensor:
        return -sum(gamma_log_prob(y, self.prior_shape, self.prior_rate).sum() for y in self.factors())


class LearnedLibrary(nn.Module):
    """Priors of the learned library size of one modality.

    Residual form: o_n = log(max(sum_f x_nf, 1)) - G + c; log l_n = c + w (o_n - c) + eps_n with
    eps_n ~ Normal(a_n, b_n^2) from the library encoder and a global shrinkage weight
    w ~ q(w) = LogNormal(mu_w, sigma_w) (init 0, e^-2), prior w ~ Exponential(1).
    Prior per library-size group p: log l_n ~ Normal(m_p - G + c, 0.5 v_p).
    """

    def __init__(self, log_lib_mean: torch.Tensor, log_lib_var: torch.Tensor, centering: float, prior_var_scale=0.5):
        super().__init__()
        self.centering = float(centering)
        self.prior_var_scale = float(prior_var_scale)
        self.register_buffer("log_lib_mean", torch.as_tensor(log_lib_mean, dtype=torch.float32).reshape(-1))
        self.register_buffer("log_lib_var", torch.as_tensor(log_lib_var, dtype=torch.float32).reshape(-1))
        self.w_mu = nn.Parameter(torch.zeros(()))
        self.w_log_sigma = nn.Parameter(torch.full((), -2.0))

    @property
    def global_offset(self) -> torch.Tensor:
        # G: mean over library groups of the mean log library
        return self.log_lib_mean.mean()

    def residual_offset(self, total: torch.Tensor) -> torch.Tensor:
        return torch.log(total.clamp(min=1.0)) - self.global_offset + self.centering

    def sample_w(self, sample: bool) -> torch.Tensor:
        if not sample:
            return torch.exp(self.w_mu + 0.5 * torch.exp(2 * self.w_log_sigma))
        return torch.exp(self.w_mu + torch.exp(self.w_log_sigma) * torch.randn((), device=self.w_mu.device))

    def posterior(self, total: torch.Tensor, a: torch.Tensor, b2: torch.Tensor, w: torch.Tensor):
        """Mean and variance of q(log l_n | w)."""
        c = self.centering
        return c + w * (self.residual_offset(total) - c) + a, b2

    def prior(self, group: torch.Tensor | None):
        mean = self.log_lib_mean if group is None else self.log_lib_mean[group]
        var = self.log_lib_var if group is None else self.log_lib_var[group]
        return mean - self.global_offset + self.centering, (self.prior_var_scale * var).clamp(min=1e-3)

    def kl_w(self) -> torch.Tensor:
        """KL(LogNormal(mu_w, sigma_w) || Exponential(1)) = E[w] - H(q), closed form."""
        sigma = torch.exp(self.w_log_sigma)
        entropy = self.w_mu + 0.5 + self.w_log_sigma + 0.5 * _LOG_2PI
        return torch.exp(self.w_mu + 0.5 * sigma**2) - entropy


class ModalityScale(nn.Module):
    """Optional learnable modality scale softplus(r)/0.7 with a Gamma prior centred at its init (1)."""

    def __init__(self, prior_shape: float = 50.0):
        super().__init__()
        self.prior_shape = prior_shape
        self.r = nn.Parameter(torch.full((), _SCALING_INIT))

    def forward(self) -> torch.Tensor:
        return softplus(self.r) / _SCALING_DIVISOR

    def penalty(self) -> torch.Tensor:
        return -gamma_log_prob(self(), self.prior_shape, self.prior_shape)


def decoder_l2(weights: list[torch.Tensor], weight: float) -> torch.Tensor:
    return weight * sum((w**2).sum() for w in weights)


def decoder_l1(weights: list[torch.Tensor], weight: float) -> torch.Tensor:
    """Global L1 on the decoder weight matrices (next to the L2): weight x sum |W|."""
    return weight * sum(w.abs().sum() for w in weights)


# ---------------------------------------------------------------------- shrinkage on the latent space
LATENT_PRIORS = ("normal", "ard", "horseshoe")

# Gauss-Hermite rule for expectations under a Normal: E[f(y)], y ~ N(m, s^2) = sum_i w_i f(m + sqrt(2) s x_i) / sqrt(pi)
_GH_NODES, _GH_WEIGHTS = (torch.tensor(a, dtype=torch.float32) for a in np.polynomial.hermite.hermgauss(24))


def lognormal_halfcauchy_kl(mu: torch.Tensor, log_sigma: torch.Tensor, scale: float) -> torch.Tensor:
    """KL(LogNormal(mu, sigma^2) || HalfCauchy(scale)), elementwise.

    -H(q) - E_q[log p]: the LogNormal entropy is closed form (mu + 1/2 + log sigma + log(2 pi)/2);
    E_q[log(1 + x^2/scale^2)] has none and is computed by 24-point Gauss-Hermite quadrature in
    log x = y ~ Normal(mu, sigma^2), deterministic and accurate to ~1e-6 for sigma <= 3.
    """
    sigma = torch.exp(log_sigma)
    nodes = _GH_NODES.to(mu.device, mu.dtype)
    weights = _GH_WEIGHTS.to(mu.device, mu.dtype) / math.sqrt(math.pi)
    y = mu[..., None] + math.sqrt(2.0) * sigma[..., None] * nodes
    expected_log1p = (softplus(2.0 * (y - math.log(scale))) * weights).sum(-1)
    entropy = mu + 0.5 + log_sigma + 0.5 * _LOG_2PI
    log_norm = math.log(2.0 / (math.pi * scale))
    return -entropy - (log_norm - expected_log1p)


class ARDLatentPrior(nn.Module):
    """Automatic relevance determination on one latent slice: p(z_nk) = Normal(0, 1/alpha_k).

    alpha_k is a point estimate (parameterised by log alpha) with hyper-prior alpha_k ~ Gamma(a0, b0);
    the global penalty is -log p(log alpha) = -log Gamma(alpha; a0, b0) - log alpha (the density of the
    parameter actually optimised, so its mode is alpha = a0/b0 and a0 < 1 stays proper). The local
    z-KL against the per-dimension prior is closed form. Optimising alpha drives it to
    1 / E[z_k^2] (aggregate second moment): a dimension the encoder leaves near zero gets a large
    precision, one the decoder uses with spread gets a small one.
    """

    def __init__(self, n_latent: int, a0: float = 1.0, b0: float = 1.0):
        super().__init__()
        if not (a0 > 0 and b0 > 0):
            raise ValueError(f"ARD hyper-prior Gamma(a0, b0) needs a0 > 0 and b0 > 0, got a0={a0!r}, b0={b0!r}.")
        self.a0, self.b0 = float(a0), float(b0)
        self.log_alpha = nn.Parameter(torch.zeros(n_latent))

    def precision(self) -> torch.Tensor:
        return torch.exp(self.log_alpha)

    def kl(self, qm: torch.Tensor, qv: torch.Tensor) -> torch.Tensor:
        """Per-cell KL(Normal(qm, qv) || Normal(0, 1/alpha)), summed over dimensions."""
        alpha = self.precision()
        return 0.5 * (alpha * (qv + qm**2) - 1.0 - torch.log(qv) - self.log_alpha).sum(-1)

    def penalty(self) -> torch.Tensor:
        return -(gamma_log_prob(self.precision(), self.a0, self.b0) + self.log_alpha).sum()


class HorseshoeLatentPrior(nn.Module):
    """Horseshoe on one latent slice, non-centred: z_nk = tau * lambda_nk * u_nk, u_nk ~ Normal(0, 1),
    lambda_nk ~ HalfCauchy(1) (local), tau ~ HalfCauchy(tau0) (global).

    The encoder's Gaussian is q(u). q(lambda_nk) = LogNormal(m_nk, s_nk^2) is amortised by a per-dimension
    affine map of |E_q[u_nk]| (initialised at m = 0, s = 0.1, i.e. lambda ~ 1); q(tau) = LogNormal with free
    parameters (init median tau0). Local KL (meaned over cells by the module): KL(q(u) || N(0, 1)) +
    KL(q(lambda) || HalfCauchy(1)); global (divided by n_obs): KL(q(tau) || HalfCauchy(tau0)).
    """

    def __init__(self, n_latent: int, tau0: float = 1.0, init_log_sigma: float = math.log(0.1)):
        super().__init__()
        if not tau0 > 0:
            raise ValueError(f"horseshoe global scale tau0 must be positive, got {tau0!r}.")
        self.tau0 = float(tau0)
        self.lambda_slope = nn.Parameter(torch.zeros(n_latent))
        self.lambda_mu = nn.Parameter(torch.zeros(n_latent))
        self.lambda_log_sigma = nn.Parameter(torch.full((n_latent,), init_log_sigma))
        self.tau_mu = nn.Parameter(torch.full((), math.log(tau0)))
        self.tau_log_sigma = nn.Parameter(torch.full((), init_log_sigma))

    def local_posterior(self, qm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = self.lambda_mu + self.lambda_slope * qm.abs()
        return mu, self.lambda_log_sigma.expand_as(mu)

    def scale(self, qm: torch.Tensor, sample: bool) -> torch.Tensor:
        """tau * lambda per cell and dimension: a reparameterised draw, or the posterior medians."""
        lam_mu, lam_log_sigma = self.local_posterior(qm)
        if not sample:
            return torch.exp(self.tau_mu + lam_mu)
        log_tau = self.tau_mu + torch.exp(self.tau_log_sigma) * torch.randn((), device=qm.device, dtype=qm.dtype)
        log_lam = lam_mu + torch.exp(lam_log_sigma) * torch.randn_like(lam_mu)
        return torch.exp(log_tau + log_lam)

    def kl(self, qm: torch.Tensor, qv: torch.Tensor) -> torch.Tensor:
        """Per-cell local KL: that of u against N(0, 1) plus that of lambda, summed over dimensions."""
        kl_u = standard_normal_kl(qm, qv)
        lam_mu, lam_log_sigma = self.local_posterior(qm)
        return kl_u + lognormal_halfcauchy_kl(lam_mu, lam_log_sigma, 1.0).sum(-1)

    def penalty(self) -> torch.Tensor:
        return lognormal_halfcauchy_kl(self.tau_mu, self.tau_log_sigma, self.tau0)

    def global_scale(self) -> torch.Tensor:
        return torch.exp(self.tau_mu)
