"""RegularizedVAE: an N-modality VAE with ambient, feature-scaling, dispersion and library priors.

Notation follows docs/model.md: cell n, feature f, modality m, minibatch size B, training-set size N.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn
from torch.nn.functional import one_hot

from rvi.nn import Decoder, GaussianEncoder, LibraryEncoder
from rvi.priors import (
    LATENT_PRIORS,
    AmbientBackground,
    ARDLatentPrior,
    FeatureScaling,
    HierarchicalDispersion,
    HorseshoeLatentPrior,
    LearnedLibrary,
    ModalityScale,
    decoder_l1,
    decoder_l2,
    gather_rows,
    normal_kl,
    standard_normal_kl,
)

CAT_KEY = "rvi_categoricals"
CONT_KEY = "rvi_continuous"
# Measured on 2 CPU threads at 1024 x 2000, h1024: with theta shared per dispersion group the dense path is
# ~5 % cheaper per step at 43 % non-zeros (with theta per entry the sparse path had won up to ~60 %).
SPARSE_LIKELIHOOD_BELOW = 0.3
# What the encoders see: log1p of depth-normalised counts, log1p of raw counts, or TF-IDF of the binarised
# counts (log1p(scale * idf_f * b_nf / sum_f b_nf), the LSI normalisation ATAC analyses use).
ENCODER_INPUTS = ("log_normalized", "log1p", "tfidf")


def resolve_encoder_inputs(encoder_input, names: list[str]) -> dict[str, str]:
    """``encoder_input`` (one value, or a dict {modality: value} whose missing modalities get
    "log_normalized") -> {modality: value}, validated."""
    if isinstance(encoder_input, dict):
        unknown = sorted(set(encoder_input) - set(names))
        if unknown:
            raise ValueError(f"encoder_input names unknown modalities {unknown}; the model has {names}.")
        chosen = {m: encoder_input.get(m, "log_normalized") for m in names}
    else:
        chosen = {m: encoder_input for m in names}
    for m, value in chosen.items():
        if value not in ENCODER_INPUTS:
            raise ValueError(f"encoder_input for {m!r} must be one of {list(ENCODER_INPUTS)}, got {value!r}.")
    return chosen


@dataclass
class ModalityConfig:
    """Everything the module needs to know about one modality (plain data, saved with the model)."""

    name: str
    registry_key: str
    n_features: int
    n_hidden: int = 512
    n_latent: int = 128
    n_layers: int = 1
    centering_sensitivity: float = 1.0
    additive_background: bool = False
    feature_scaling: bool = False
    # data-driven initial values (lists so that the config stays JSON-friendly)
    log_lib_mean: list[float] = field(default_factory=lambda: [0.0])
    log_lib_var: list[float] = field(default_factory=lambda: [1.0])
    init_theta: list[float] | None = None
    mean_rate: list[float] | None = None
    ambient_init: list[list[list[float]]] | None = None
    density: float = 1.0  # fraction of non-zero entries; below SPARSE_LIKELIHOOD_BELOW the sparse NB path is used
    idf: list[float] | None = None  # per feature log(1 + N / n_detected), for encoder_input "tfidf"


def log_nb(
    x: torch.Tensor,
    mu: torch.Tensor,
    log_theta: torch.Tensor,
    eps: float = 1e-8,
    sparse: bool = False,
    group: torch.Tensor | None = None,
):
    """Per-cell sum over features of log GammaPoisson(x; concentration=theta, rate=theta/mu).

    Negative binomial with variance mu + mu^2/theta. ``log_theta`` is either per entry (B x F, ``group``
    None) or a table per dispersion group (G x F) with ``group`` the (B,) group of each cell (or a 1 x F row
    and no group). With a table, the terms that depend on theta alone (theta log theta and lgamma(theta))
    are evaluated per group and gathered per cell, instead of per entry.

    For x = 0 the density reduces to theta * (log theta - log(theta + mu)), so with ``sparse=True`` the
    x-dependent terms (two lgammas with their digamma backward, log mu, log x!) are evaluated on the
    non-zero entries only; on whole-transcriptome counts (> 90 % zeros) this removes most of the
    transcendental work. For denser matrices (a few thousand HVGs) the dense formula is cheaper than
    gathering; the module picks per modality from the data density (SPARSE_LIKELIHOOD_BELOW).
    """
    if group is not None or log_theta.shape[0] != x.shape[0]:
        return _log_nb_table(x, mu, log_theta, eps, sparse, group)
    theta = torch.exp(log_theta)
    log_theta_mu = torch.log(theta + mu + eps)
    dense = theta * (log_theta - log_theta_mu)
    if not sparse:
        with torch.no_grad():
            log_x_factorial = torch.lgamma(x + 1)
        xterm = x * (torch.log(mu + eps) - log_theta_mu) + torch.lgamma(x + theta) - torch.lgamma(theta)
        return (dense + xterm).sum(-1) - log_x_factorial.sum(-1)
    # Gather the non-zero entries through a flat index_select: its backward is an index_add, far
    # cheaper on CPU than the index_put behind advanced indexing.
    flat = torch.nonzero(x.reshape(-1)).squeeze(1)
    rows = torch.div(flat, x.shape[1], rounding_mode="floor")
    xs = x.reshape(-1).index_select(0, flat)
    lt = log_theta.reshape(-1).index_select(0, flat)
    m = mu.reshape(-1).index_select(0, flat)
    th = torch.exp(lt)
    with torch.no_grad():
        log_x_factorial = torch.lgamma(xs + 1)  # constant in the parameters: no graph needed
    nz = xs * (torch.log(m + eps) - torch.log(th + m + eps))
    nz = nz + torch.lgamma(xs + th) - torch.lgamma(th) - log_x_factorial
    return dense.sum(-1).index_add(0, rows, nz)


def _log_nb_table(x, mu, log_theta, eps, sparse, group):
    """log_nb with theta shared by the cells of a dispersion group (see log_nb)."""
    n_cells, n_features = x.shape
    theta_table = torch.exp(log_theta)
    theta = gather_rows(theta_table, group)  # (B, F), or (1, F) that broadcasts

    def per_cell(values: torch.Tensor) -> torch.Tensor:  # (G,) -> (B,)
        return values.expand(n_cells) if group is None else values.index_select(0, group)

    log_theta_mu = torch.log(theta + mu + eps)
    # sum_f theta (log theta - log(theta + mu)): the first half per group, the second per entry
    dense = per_cell((theta_table * log_theta).sum(-1)) - (theta * log_theta_mu).sum(-1)
    if not sparse:
        with torch.no_grad():
            log_x_factorial = torch.lgamma(x + 1).sum(-1)
        xterm = (x * (torch.log(mu + eps) - log_theta_mu) + torch.lgamma(x + theta)).sum(-1)
        return dense + xterm - per_cell(torch.lgamma(theta_table).sum(-1)) - log_x_factorial
    flat = torch.nonzero(x.reshape(-1)).squeeze(1)
    rows = torch.div(flat, n_features, rounding_mode="floor")
    xs = x.reshape(-1).index_select(0, flat)
    m = mu.reshape(-1).index_select(0, flat)
    ltm = log_theta_mu.reshape(-1).index_select(0, flat)
    if theta.shape[0] != n_cells:  # a (1, F) row: gather by feature, without materialising B x F
        th = theta[0].index_select(0, flat - rows * n_features)
    else:
        th = theta.reshape(-1).index_select(0, flat)
    with torch.no_grad():
        log_x_factorial = torch.lgamma(xs + 1)
    nz = xs * (torch.log(m + eps) - ltm) + torch.lgamma(xs + th) - log_x_factorial
    # lgamma(theta) over each cell's non-zero features: an indicator matmul against the (G x F) table
    lg_theta = (x > 0).to(x.dtype) @ torch.lgamma(theta_table).T  # (B, G)
    lg_theta = lg_theta[:, 0] if group is None else lg_theta.gather(1, group[:, None]).squeeze(1)
    return (dense - lg_theta).index_add(0, rows, nz)


class RegularizedVAE(BaseModuleClass):
    """N-modality VAE. Private latent slices per modality, concatenated in alphabetical order of names;
    every decoder sees the whole z plus the one-hot nn-conditioning covariates.

    Parameters
    ----------
    modalities
        One :class:`ModalityConfig` (or dict) per modality.
    n_cats_per_cov
        Number of categories of each column of the joint categorical covariate tensor.
    covariate_columns
        Purpose -> column indices into that tensor: ``ambient``, ``nn_conditioning``,
        ``feature_scaling``, ``encoder`` (lists) and ``dispersion``, ``library_size`` (one or None).
    latent_prior
        Prior on every latent slice (docs/model.md, "Shrinkage"): ``"normal"`` (Normal(0, I)), ``"ard"``
        (learned per-dimension precision alpha_k, Gamma(``ard_a0``, ``ard_b0``) hyper-prior, a global
        term) or ``"horseshoe"`` (non-centred local-global shrinkage, HalfCauchy(1) local scales and a
        HalfCauchy(``horseshoe_tau0``) global scale).
    z_l1_weight
        Local L1 on the posterior mean of z (summed over dimensions, meaned over cells); 0 switches it off.
    hidden_l1_weight
        Local L1 on the decoder's last hidden activations (summed over units, meaned over cells); 0 = off.
    decoder_l1_weight
        Global L1 on the decoder weight matrices (divided by n_obs, next to ``decoder_l2_weight``); 0 = off.
    n_latent_shared
        Dimensions of a shared slice, appended after the private ones: every encoder also gives a Gaussian
        "expert" over it, and q(z_shared) is their product with the Normal(0, I) prior (precision-weighted
        pooling of the modalities' evidence; a cell without a modality drops its expert). Normal prior
        whatever ``latent_prior`` says. 0 (default) = private slices only.
    """

    def __init__(
        self,
        modalities: list[ModalityConfig | dict],
        n_cats_per_cov: list[int],
        covariate_columns: dict,
        n_continuous_cov: int = 0,
        dropout_rate: float = 0.1,
        activation: str = "relu",
        use_layer_norm: bool = True,
        use_batch_norm: bool = False,
        encoder_input: str | dict = "log_normalized",
        normalization_scale: float = 1e4,
        regularise_background: bool = False,
        regularise_feature_scaling: bool = True,
        decoder_l2_weight: float = 0.1,
        library_prior_var_scale: float = 0.5,
        learnable_modality_scale: bool = False,
        dispersion_lambda_shape: float = 9.0,
        dispersion_lambda_rate: float = 3.0,
        latent_prior: str = "normal",
        ard_a0: float = 1.0,
        ard_b0: float = 1.0,
        horseshoe_tau0: float = 1.0,
        z_l1_weight: float = 0.0,
        hidden_l1_weight: float = 0.0,
        decoder_l1_weight: float = 0.0,
        n_latent_shared: int = 0,
    ):
        super().__init__()
        if latent_prior not in LATENT_PRIORS:
            raise ValueError(f"latent_prior must be one of {list(LATENT_PRIORS)}, got {latent_prior!r}.")
        for name, value in (
            ("z_l1_weight", z_l1_weight),
            ("hidden_l1_weight", hidden_l1_weight),
            ("decoder_l1_weight", decoder_l1_weight),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}.")
        self.latent_prior_kind = latent_prior
        self.z_l1_weight, self.hidden_l1_weight = float(z_l1_weight), float(hidden_l1_weight)
        self.decoder_l1_weight = float(decoder_l1_weight)
        if isinstance(n_latent_shared, bool) or not isinstance(n_latent_shared, int) or n_latent_shared < 0:
            raise ValueError(f"n_latent_shared must be a non-negative integer, got {n_latent_shared!r}.")
        self.n_latent_shared = n_latent_shared
        mods = [m if isinstance(m, ModalityConfig) else ModalityConfig(**m) for m in modalities]
        self.modalities = sorted(mods, key=lambda m: m.name)
        self.modality_names = [m.name for m in self.modalities]
        self.modality_config = {m.name: m for m in self.modalities}
        self.encoder_input = resolve_encoder_inputs(encoder_input, self.modality_names)
        for m in self.modalities:  # idf is a data statistic: a buffer, saved with the weights, never trained
            if self.encoder_input[m.name] == "tfidf":
                if m.idf is None or len(m.idf) != m.n_features:
                    raise ValueError(f"encoder_input 'tfidf' for {m.name!r} needs idf with one value per feature.")
                self.register_buffer(f"idf_{m.name}", torch.tensor(m.idf, dtype=torch.float32))
        self.n_cats_per_cov = list(n_cats_per_cov)
        self.cols = {k: (list(v) if isinstance(v, list | tuple) else v) for k, v in covariate_columns.items()}
        self.n_continuous_cov = n_continuous_cov
        self.normalization_scale = normalization_scale
        self.regularise_background = regularise_background
        self.regularise_feature_scaling = regularise_feature_scaling
        self.decoder_l2_weight = decoder_l2_weight
        self.n_latent_total = sum(m.n_latent for m in self.modalities) + n_latent_shared
        if self.n_latent_total == 0:
            raise ValueError("The latent space is empty: give some modality n_latent > 0 or n_latent_shared > 0.")

        n_cond = sum(self.n_cats_per_cov[j] for j in self.cols.get("nn_conditioning", []))
        n_enc_cat = sum(self.n_cats_per_cov[j] for j in self.cols.get("encoder", []))
        fc = {"activation": activation, "use_layer_norm": use_layer_norm, "use_batch_norm": use_batch_norm}
        disp_col = self.cols.get("dispersion")
        n_disp = 1 if disp_col is None else self.n_cats_per_cov[disp_col]

        self.encoders, self.library_encoders, self.decoders = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        self.dispersion, self.library, self.background, self.scaling = (nn.ModuleDict() for _ in range(4))
        self.modality_scale = nn.ModuleDict()
        self.latent_prior = nn.ModuleDict()
        for m in self.modalities:
            if latent_prior == "ard":
                self.latent_prior[m.name] = ARDLatentPrior(m.n_latent, ard_a0, ard_b0)
            elif latent_prior == "horseshoe":
                self.latent_prior[m.name] = HorseshoeLatentPrior(m.n_latent, horseshoe_tau0)
            n_in = m.n_features + n_continuous_cov
            c = float(torch.log(torch.tensor(m.centering_sensitivity)))
            self.encoders[m.name] = GaussianEncoder(
                n_in,
                m.n_latent + n_latent_shared,
                m.n_hidden,
                m.n_layers,
                n_cat_in=n_enc_cat,
                dropout_rate=dropout_rate,
                **fc,
            )
            # No input dropout for the library encoder: it estimates depth from all counts.
            self.library_encoders[m.name] = LibraryEncoder(
                n_in, centering=c, n_cat_in=n_enc_cat, dropout_rate=0.0, **fc
            )
            self.library[m.name] = LearnedLibrary(
                torch.tensor(m.log_lib_mean), torch.tensor(m.log_lib_var), c, library_prior_var_scale
            )
            # exp(G), the typical library size: the decoder's softplus works on fractions of it.
            typical_library = float(self.library[m.name].global_offset.exp())
            self.decoders[m.name] = Decoder(
                self.n_latent_total + n_continuous_cov,
                m.n_features,
                m.n_hidden,
                m.n_layers,
                n_cat_in=n_cond,
                output_scale=typical_library,
                **fc,
            )
            if m.mean_rate is not None:
                self.decoders[m.name].init_output_bias(torch.tensor(m.mean_rate, dtype=torch.float32))
            init_theta = None if m.init_theta is None else torch.tensor(m.init_theta, dtype=torch.float32)
            self.dispersion[m.name] = HierarchicalDispersion(
                m.n_features, n_disp, dispersion_lambda_shape, dispersion_lambda_rate, init_theta=init_theta
            )
            amb_cols = self.cols.get("ambient", [])
            if m.additive_background and amb_cols:
                init = None if m.ambient_init is None else [torch.tensor(a) for a in m.ambient_init]
                self.background[m.name] = AmbientBackground(
                    m.n_features, [self.n_cats_per_cov[j] for j in amb_cols], init=init
                )
            if m.feature_scaling:
                fs_cols = self.cols.get("feature_scaling", [])
                self.scaling[m.name] = FeatureScaling(m.n_features, [self.n_cats_per_cov[j] for j in fs_cols])
            if learnable_modality_scale:
                self.modality_scale[m.name] = ModalityScale()

    # ------------------------------------------------------------------ helpers
    def _cat(self, cat: torch.Tensor | None, purpose: str) -> list[torch.Tensor]:
        cols = self.cols.get(purpose, [])
        return [cat[:, j].long() for j in cols] if cols else []

    def latent_blocks(self) -> dict[str, slice]:
        """Where each block lives in the joint z: private slices in alphabetical order, then "shared"."""
        blocks, start = {}, 0
        for m in self.modalities:
            blocks[m.name] = slice(start, start + m.n_latent)
            start += m.n_latent
        if self.n_latent_shared:
            blocks["shared"] = slice(start, start + self.n_latent_shared)
        return blocks

    def _one_hot(self, cat: torch.Tensor | None, purpose: str) -> torch.Tensor | None:
        cols = self.cols.get(purpose, [])
        if not cols:
            return None
        return torch.cat([one_hot(cat[:, j].long(), self.n_cats_per_cov[j]).float() for j in cols], dim=-1)

    def _single(self, cat: torch.Tensor | None, purpose: str) -> torch.Tensor | None:
        j = self.cols.get(purpose)
        return None if j is None else cat[:, j].long()

    def _encoder_input(self, x: torch.Tensor, total: torch.Tensor, cont: torch.Tensor | None, modality: str):
        kind = self.encoder_input[modality]
        if kind == "log_normalized":
            h = torch.log1p(x * (self.normalization_scale / total.clamp(min=1.0))[:, None])
        elif kind == "tfidf":
            b = (x > 0).to(x.dtype)
            tf = b * (self.normalization_scale / b.sum(-1).clamp(min=1.0))[:, None]
            h = torch.log1p(tf * getattr(self, f"idf_{modality}"))
        else:
            h = torch.log1p(x)
        return h if cont is None else torch.cat([h, cont], dim=-1)

    # ------------------------------------------------------------------ scvi-tools interface
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs):
        return {
            "x": {m.name: tensors[m.registry_key] for m in self.modalities},
            "cat": tensors.get(CAT_KEY),
            "cont": tensors.get(CONT_KEY),
        }

    def _get_generative_input(self, tensors, inference_outputs, **kwargs):
        return {
            "z": inference_outputs["z"],
            "log_library": inference_outputs["log_library"],
            "cat": tensors.get(CAT_KEY),
            "cont": tensors.get(CONT_KEY),
        }

    @auto_move_data
    def inference(self, x: dict[str, torch.Tensor], cat=None, cont=None, n_samples: int = 1, sample: bool = True):
        """Encode every modality: q(z) slices and q(log l). ``sample=False`` gives posterior means."""
        enc_cat = self._one_hot(cat, "encoder")
        out = {"qz_m": {}, "qz_v": {}, "z_parts": {}, "z_mean": {}, "log_library": {}, "ql_m": {}, "ql_v": {}}
        out["total"] = {}
        # product of experts for the shared slice: the prior's precision 1 plus each present modality's
        shared_precision, shared_weighted_mean = 1.0, 0.0
        for m in self.modalities:
            xm = x[m.name]
            total = xm.sum(-1)
            h = self._encoder_input(xm, total, cont, m.name)
            qm, qv = self.encoders[m.name](h, enc_cat)
            if self.n_latent_shared:
                present = (total > 0).to(qm.dtype)[:, None]
                expert_precision = present / qv[:, m.n_latent :]
                shared_precision = shared_precision + expert_precision
                shared_weighted_mean = shared_weighted_mean + expert_precision * qm[:, m.n_latent :]
                qm, qv = qm[:, : m.n_latent], qv[:, : m.n_latent]
            z_m = qm + qv.sqrt() * torch.randn_like(qm) if sample else qm
            z_mean = qm
            if self.latent_prior_kind == "horseshoe":
                # non-centred: the encoder's Gaussian is q(u); z = tau * lambda * u
                prior = self.latent_prior[m.name]
                z_mean = prior.scale(qm, sample=False) * qm
                z_m = prior.scale(qm, sample) * z_m
            out["z_mean"][m.name] = z_mean
            a, b2 = self.library_encoders[m.name](h, enc_cat)
            lib = self.library[m.name]
            l_mean, l_var = lib.posterior(total, a, b2, lib.sample_w(sample))
            log_l = l_mean + l_var.sqrt() * torch.randn_like(l_mean) if sample else l_mean
            for key, val in (("qz_m", qm), ("qz_v", qv), ("z_parts", z_m), ("log_library", log_l)):
                out[key][m.name] = val
            out["ql_m"][m.name], out["ql_v"][m.name], out["total"][m.name] = l_mean, l_var, total
        parts = [out["z_parts"][name] for name in self.modality_names]
        if self.n_latent_shared:
            qm, qv = shared_weighted_mean / shared_precision, 1.0 / shared_precision
            z_shared = qm + qv.sqrt() * torch.randn_like(qm) if sample else qm
            out["shared"] = {"qz_m": qm, "qz_v": qv, "z": z_shared}
            parts.append(z_shared)
        out["z"] = torch.cat(parts, dim=-1)
        return out

    def decode_rate(self, z: torch.Tensor, cat, cont, modality: str, include_background: bool = True):
        """Library-free rate (rho + s) * y of one modality (the decoder half of mu)."""
        rate, rho, _ = self._decode(z, cat, cont, modality, include_background)
        return rate, rho

    def _decode(self, z: torch.Tensor, cat, cont, modality: str, include_background: bool = True):
        """rate, rho and the decoder's last hidden activations of one modality."""
        n = z.shape[0]
        h = z if cont is None else torch.cat([z, cont], dim=-1)
        rho, hidden = self.decoders[modality].forward_with_hidden(h, self._one_hot(cat, "nn_conditioning"))
        rate = rho
        if include_background and modality in self.background:
            rate = rate + self.background[modality](self._cat(cat, "ambient"))
        if modality in self.scaling:
            rate = rate * self.scaling[modality](self._cat(cat, "feature_scaling"), n)
        if modality in self.modality_scale:
            rate = rate * self.modality_scale[modality]()
        return rate, rho, hidden

    @auto_move_data
    def generative(self, z, log_library, cat=None, cont=None, sample_theta: bool | None = None):
        sample_theta = self.training if sample_theta is None else sample_theta
        disp_group = self._single(cat, "dispersion")
        # log_theta: a (dispersion groups x F) table per modality; dispersion_group: each cell's row (or None)
        out = {"mu": {}, "rho": {}, "log_theta": {}, "decoder_hidden": {}, "dispersion_group": disp_group}
        for m in self.modalities:
            rate, rho, hidden = self._decode(z, cat, cont, m.name)
            if self.hidden_l1_weight:
                out["decoder_hidden"][m.name] = hidden
            out["mu"][m.name] = torch.exp(log_library[m.name])[:, None] * rate
            out["rho"][m.name] = rho
            out["log_theta"][m.name] = self.dispersion[m.name].log_theta(sample_theta)
        return out

    def global_penalties(self) -> dict[str, torch.Tensor]:
        """Every prior on parameters shared across cells (not yet divided by n_obs), by name."""
        terms = {}
        for m in self.modality_names:
            for k, v in self.dispersion[m].penalty().items():
                terms[f"{m}_{k}"] = v
            terms[f"{m}_library_kl_w"] = self.library[m].kl_w()
            if self.decoder_l2_weight:
                terms[f"{m}_decoder_l2"] = decoder_l2(self.decoders[m].weight_matrices(), self.decoder_l2_weight)
            if self.decoder_l1_weight:
                terms[f"{m}_decoder_l1"] = decoder_l1(self.decoders[m].weight_matrices(), self.decoder_l1_weight)
            if self.latent_prior_kind == "ard":
                terms[f"{m}_ard_prior"] = self.latent_prior[m].penalty()
            elif self.latent_prior_kind == "horseshoe":
                terms[f"{m}_horseshoe_tau_kl"] = self.latent_prior[m].penalty()
            if m in self.background:
                terms[f"{m}_background_prior"] = self.background[m].penalty()
            if m in self.scaling:
                terms[f"{m}_feature_scaling_prior"] = self.scaling[m].penalty()
            if m in self.modality_scale:
                terms[f"{m}_modality_scale_prior"] = self.modality_scale[m].penalty()
        return terms

    def _in_loss(self, name: str) -> bool:
        # Penalties that are switched off are still logged, but do not enter the loss.
        if name.endswith("_background_prior"):
            return self.regularise_background
        if name.endswith("_feature_scaling_prior"):
            return self.regularise_feature_scaling
        return True

    def loss(
        self,
        tensors,
        inference_outputs,
        generative_outputs,
        kl_weight: float = 1.0,
        n_obs: int | None = None,
        skip_n_obs_check: bool = False,
    ) -> LossOutput:
        """mean_n[recon + kl_weight * KL_z + KL_library] + (global priors) / n_obs.

        ``n_obs`` is the training-set size N; scvi-tools' TrainingPlan injects it because it is a
        parameter of this method. Validation uses the same N, so both losses share one scale.
        """
        device = next(iter(tensors.values())).device
        # The likelihood and priors stay fp32 under bf16 autocast (reduced_precision): only the networks drop.
        with torch.autocast(device.type, enabled=False):
            return self._loss(tensors, inference_outputs, generative_outputs, kl_weight, n_obs, skip_n_obs_check)

    def _loss(self, tensors, inference_outputs, generative_outputs, kl_weight, n_obs, skip_n_obs_check):
        x_all = self._get_inference_input(tensors)["x"]
        batch_size = next(iter(x_all.values())).shape[0]
        if n_obs is None:
            raise ValueError(
                "RegularizedVAE.loss() needs n_obs (the training-set size) to scale the global priors; "
                "scvi-tools' TrainingPlan injects it. Pass n_obs=<number of training cells> when calling it directly."
            )
        if n_obs < batch_size and not skip_n_obs_check:
            raise ValueError(
                f"n_obs={n_obs} is smaller than the minibatch ({batch_size} cells): global priors would be "
                "over-weighted. This usually means n_obs was not injected; pass skip_n_obs_check=True to override."
            )
        cat = tensors.get(CAT_KEY)
        lib_group = self._single(cat, "library_size")
        recon = torch.zeros(batch_size, device=next(iter(x_all.values())).device)
        kl_lib = torch.zeros_like(recon)
        metrics = {}
        for m in self.modality_names:
            x = x_all[m]
            present = (inference_outputs["total"][m] > 0).float()  # cells missing this modality are masked out
            sparse = self.modality_config[m].density < SPARSE_LIKELIHOOD_BELOW
            mu, log_theta = generative_outputs["mu"][m], generative_outputs["log_theta"][m]
            ll = log_nb(x, mu, log_theta, sparse=sparse, group=generative_outputs["dispersion_group"])
            rec_m = -ll * present
            p_m, p_v = self.library[m].prior(lib_group)
            kl_m = normal_kl(inference_outputs["ql_m"][m], inference_outputs["ql_v"][m], p_m, p_v) * present
            recon, kl_lib = recon + rec_m, kl_lib + kl_m
            metrics[f"{m}_reconstruction"] = rec_m.mean().detach()
            metrics[f"{m}_kl_library"] = kl_m.mean().detach()
        kl_z = torch.zeros_like(recon)
        for m in self.modality_names:
            qm, qv = inference_outputs["qz_m"][m], inference_outputs["qz_v"][m]
            if m in self.latent_prior:  # ARD: per-dimension prior; horseshoe: KL of u and of lambda
                kl_z_m = self.latent_prior[m].kl(qm, qv)
            else:
                kl_z_m = standard_normal_kl(qm, qv)
            metrics[f"{m}_kl_z"] = kl_z_m.mean().detach()
            kl_z = kl_z + kl_z_m
        if self.n_latent_shared:
            qm, qv = inference_outputs["shared"]["qz_m"], inference_outputs["shared"]["qz_v"]
            kl_shared = standard_normal_kl(qm, qv)
            metrics["shared_kl_z"] = kl_shared.mean().detach()
            kl_z = kl_z + kl_shared
        # Local sparsity penalties: summed over dimensions / hidden units, meaned over the minibatch below.
        sparsity = torch.zeros_like(recon)
        for m in self.modality_names:
            if self.z_l1_weight:
                z_l1 = self.z_l1_weight * inference_outputs["z_mean"][m].abs().sum(-1)
                metrics[f"{m}_z_l1"] = z_l1.mean().detach()
                sparsity = sparsity + z_l1
            if self.hidden_l1_weight:
                h_l1 = self.hidden_l1_weight * generative_outputs["decoder_hidden"][m].abs().sum(-1)
                metrics[f"{m}_hidden_l1"] = h_l1.mean().detach()
                sparsity = sparsity + h_l1

        penalties = self.global_penalties()
        global_sum = sum(v for k, v in penalties.items() if self._in_loss(k))
        loss = torch.mean(recon + kl_weight * kl_z + kl_lib + sparsity) + global_sum / n_obs
        for k, v in penalties.items():
            metrics[k] = v.detach()
        metrics["global_penalty_scaled"] = (global_sum / n_obs).detach()
        return LossOutput(
            loss=loss,
            reconstruction_loss=recon,
            kl_local={"kl_z": kl_z, "kl_library": kl_lib, "sparsity": sparsity},
            kl_global=global_sum,
            extra_metrics=metrics,
        )

    @torch.inference_mode()
    def sample(self, tensors, n_samples: int = 1):
        """Draw counts from the posterior predictive, per modality."""
        inf = self.inference(**self._get_inference_input(tensors))
        gen = self.generative(**self._get_generative_input(tensors, inf), sample_theta=False)
        out = {}
        for m in self.modality_names:
            mu = gen["mu"][m]
            theta = gather_rows(torch.exp(gen["log_theta"][m]), gen["dispersion_group"]).expand_as(mu)
            rate = torch.distributions.Gamma(theta, theta / mu.clamp(min=1e-8)).sample((n_samples,))
            out[m] = torch.distributions.Poisson(rate).sample()
        return out

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        """Parameters that belong to one modality (for per-modality learning rates)."""
        owners = (self.encoders, self.library_encoders, self.decoders, self.dispersion, self.library)
        owners += (self.background, self.scaling, self.modality_scale, self.latent_prior)
        return [p for owner in owners if modality in owner for p in owner[modality].parameters()]

    def config_dicts(self) -> list[dict]:
        return [asdict(m) for m in self.modalities]
