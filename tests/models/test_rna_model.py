"""Behaviour of AmbientRegularizedSCVI: the n_obs rule, priors at init, getters, save/load, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rvi import AmbientRegularizedSCVI
from rvi.module.vae import RegularizedVAE
from rvi.train import RVITrainingPlan
from tests.conftest import make_counts

SMALL = {"n_hidden": 32, "n_latent": 6}


def _model(adata=None, **kwargs):
    adata = make_counts() if adata is None else adata
    AmbientRegularizedSCVI.setup_anndata(adata, library_key="lib", dataset_key="ds")
    return AmbientRegularizedSCVI(adata, **{**SMALL, **kwargs})


def _batch(model, n=64):
    loader = model._make_data_loader(adata=model.adata, indices=np.arange(n), batch_size=n)
    return next(iter(loader))


def _loss(module: RegularizedVAE, tensors, seed=0, **loss_kwargs):
    torch.manual_seed(seed)
    _, _, out = module(tensors, loss_kwargs=loss_kwargs)
    return out


def test_global_priors_scale_with_one_over_n_obs():
    model = _model()
    model.module.train()
    tensors = _batch(model)
    a = _loss(model.module, tensors, n_obs=1000)
    b = _loss(model.module, tensors, n_obs=2000)
    # Local terms are identical under the same seed; only the global part changes, and it halves.
    assert torch.allclose(a.reconstruction_loss_sum, b.reconstruction_loss_sum)
    ga, gb = a.extra_metrics["global_penalty_scaled"], b.extra_metrics["global_penalty_scaled"]
    assert ga.abs() > 0
    assert torch.isclose(gb, ga / 2, rtol=1e-5)
    assert torch.isclose(a.loss - b.loss, ga / 2, rtol=1e-4)
    # Every global prior of the spec is part of the global sum (ambient prior is off by default).
    names = set(a.extra_metrics)
    for term in (
        "dispersion_penalty",
        "dispersion_lambda_prior",
        "library_kl_w",
        "decoder_l2",
        "feature_scaling_prior",
    ):
        assert f"rna_{term}" in names
    # kl_global is the sum of the logged penalties that are switched on (same draw, same call).
    penalty_names = set(model.module.global_penalties())
    in_loss = sum(v for k, v in a.extra_metrics.items() if k in penalty_names and model.module._in_loss(k))
    assert torch.isclose(a.kl_global_sum, in_loss, rtol=1e-4)


def test_background_prior_enters_loss_only_when_switched_on():
    off = _model()
    on = _model(regularise_background=True)
    on.module.load_state_dict(off.module.state_dict())
    tensors = _batch(off)
    lo, ln = _loss(off.module, tensors, n_obs=500), _loss(on.module, tensors, n_obs=500)
    bg = ln.extra_metrics["rna_background_prior"]
    assert torch.isclose(ln.loss - lo.loss, bg / 500, rtol=1e-3)


def test_loss_requires_n_obs_and_checks_it():
    model = _model()
    tensors = _batch(model)
    with pytest.raises(ValueError, match="needs n_obs"):
        _loss(model.module, tensors)
    with pytest.raises(ValueError, match="smaller than the minibatch"):
        _loss(model.module, tensors, n_obs=10)
    out = _loss(model.module, tensors, n_obs=10, skip_n_obs_check=True)
    assert torch.isfinite(out.loss)


def test_training_plan_injects_training_set_size():
    model = _model()
    plan = RVITrainingPlan(model.module)
    plan.n_obs_training = 777
    assert plan.loss_kwargs["n_obs"] == 777


def test_validation_loss_on_training_scale():
    adata = make_counts(n_cells=400)
    model = _model(adata)
    model.train(max_epochs=2, batch_size=100, train_size=0.75, check_val_every_n_epoch=1)
    hist = model.history_
    n_train = len(model.train_indices)
    assert n_train == 300
    train_g = hist["global_penalty_scaled_train"].iloc[-1, 0]
    val_g = hist["global_penalty_scaled_validation"].iloc[-1, 0]
    # Same N for both: with n_validation (100) the validation term would be 3x larger.
    assert val_g == pytest.approx(train_g, rel=0.05)
    for name in ("rna_dispersion_penalty", "rna_library_kl_w", "rna_kl_library", "rna_kl_z", "rna_decoder_l2"):
        assert f"{name}_train" in hist and f"{name}_validation" in hist
    ratio = hist["elbo_validation"].iloc[-1, 0] / hist["elbo_train"].iloc[-1, 0]
    assert 0.8 < ratio < 1.25


def test_initial_dispersion_and_scaling_at_prior_equilibrium():
    model = _model()
    theta = model.get_dispersion()
    assert theta.shape == (3, 60)
    assert 8.0 < float(np.median(theta.to_numpy())) < 10.0
    scaling = model.get_feature_scaling()
    assert list(scaling.index) == ["all"]  # no scaling key -> the (1, F) fallback
    np.testing.assert_allclose(scaling.to_numpy(), 1.0, rtol=1e-5)
    ambient = model.get_ambient_profile()
    assert list(ambient.index) == ["a", "b", "c"]
    # default data start: 0.2 x the per-library mean normalised expression (on the centred-library scale)
    adata = model.adata
    frac = adata.X.toarray() / adata.X.sum(1)
    scale = np.exp(model.module.library["rna"].global_offset.item())
    expected = 0.2 * scale * np.vstack([frac[(adata.obs["lib"] == k).to_numpy()].mean(0) for k in "abc"])
    np.testing.assert_allclose(ambient.to_numpy(), expected, rtol=1e-4)
    prior_start = _model(ambient_init="prior").get_ambient_profile()
    np.testing.assert_allclose(prior_start.to_numpy(), 0.01, rtol=1e-5)


def test_dispersion_equilibrium_is_stationary_without_data():
    """The containment prior alone keeps theta at lambda^2 = 9 (gradient ~0 there)."""
    model = _model()
    disp = model.module.dispersion["rna"]
    with torch.no_grad():
        disp.px_r_mu.fill_(float(np.log(9.0)))
        disp.px_r_log_sigma.fill_(-6.0)
    torch.manual_seed(0)
    pen = disp.penalty()["dispersion_penalty"]
    (grad,) = torch.autograd.grad(pen, disp.px_r_mu)
    assert grad.abs().max() < 1e-2


def test_feature_scaling_keys_multiply():
    adata = make_counts()
    AmbientRegularizedSCVI.setup_anndata(adata, library_key="lib", nn_conditioning_covariate_keys=["ds", "lib"])
    model = AmbientRegularizedSCVI(adata, **SMALL)
    tables = model.get_feature_scaling()
    assert set(tables) == {"ds", "lib"}
    scaling = model.module.scaling["rna"]
    with torch.no_grad():
        scaling.gamma[0].add_(0.3)
        scaling.gamma[1].add_(-0.2)
    cat = _batch(model)["rvi_categoricals"]
    y = scaling(model.module._cat(cat, "feature_scaling"), cat.shape[0])
    f = scaling.factors()
    ds_col, lib_col = model.module.cols["feature_scaling"]
    expected = f[0][cat[:, ds_col].long()] * f[1][cat[:, lib_col].long()]
    assert torch.allclose(y, expected)


def test_getters_save_load_roundtrip(tmp_path):
    model = _model()
    model.train(max_epochs=2, batch_size=128)
    z = model.get_latent_representation()
    assert z.shape == (300, 6)
    norm = model.get_normalized_expression()
    assert norm.shape == (300, 60) and (norm.to_numpy() > 0).all()
    counts = model.get_normalized_expression(library_size="latent")
    assert counts.to_numpy().sum(1).mean() == pytest.approx(model.adata.X.sum(1).mean(), rel=0.5)
    model.save(tmp_path / "m", overwrite=True, save_anndata=True)
    loaded = AmbientRegularizedSCVI.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.get_latent_representation(), z)
    np.testing.assert_array_equal(loaded.get_dispersion().to_numpy(), model.get_dispersion().to_numpy())


def test_nn_conditioning_and_continuous_covariates_train():
    adata = make_counts()
    AmbientRegularizedSCVI.setup_anndata(
        adata, library_key="lib", nn_conditioning_covariate_keys=["lib"], nn_continuous_covariate_keys=["depth"]
    )
    model = AmbientRegularizedSCVI(adata, dispersion_init="data", ambient_init="data", **SMALL)
    model.train(max_epochs=1, batch_size=100)
    assert np.isfinite(model.get_latent_representation()).all()
    assert model.module.decoders["rna"].body.n_cat_in == 3


def test_modality_lr_multiplier_groups():
    model = _model()
    plan = RVITrainingPlan(model.module, modality_lr_multiplier={"rna": 2.0}, lr=1e-3)
    opt = plan.configure_optimizers()["optimizer"]
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == pytest.approx([1e-3, 2e-3])
    with pytest.raises(ValueError, match="unknown modalities"):
        RVITrainingPlan(model.module, modality_lr_multiplier={"atac": 2.0})
