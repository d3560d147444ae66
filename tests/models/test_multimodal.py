"""RegularizedMultimodalVI: registration, latent layout, masking, exact attribution, bad input."""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from rvi import RegularizedMultimodalVI
from rvi.models import align_modalities
from rvi.models._attribution import attribution_batch

md.set_options(pull_on_update=False)


def make_mudata(n=120, n_genes=30, n_regions=50, seed=0) -> md.MuData:
    rng = np.random.default_rng(seed)
    names = [f"c{i}" for i in range(n)]
    rna = rng.negative_binomial(4, 0.4, size=(n, n_genes)).astype(np.float32)
    atac = rng.binomial(2, 0.1, size=(n, n_regions)).astype(np.float32)
    obs = pd.DataFrame({"lib": rng.choice(["l1", "l2"], n)}, index=names)
    mods = {
        "rna": ad.AnnData(
            sp.csr_matrix(rna), obs=obs.copy(), var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)])
        ),
        "atac": ad.AnnData(
            sp.csr_matrix(atac), obs=obs.copy(), var=pd.DataFrame(index=[f"r{j}" for j in range(n_regions)])
        ),
    }
    mdata = md.MuData(mods)
    mdata.obs = obs.copy()
    return mdata


def _model(mdata=None, **kwargs):
    mdata = make_mudata() if mdata is None else mdata
    RegularizedMultimodalVI.setup_mudata(mdata, modalities=["rna", "atac"], library_key="lib")
    defaults = {"n_hidden": 16, "n_latent": {"rna": 5, "atac": 3}}
    return RegularizedMultimodalVI(mdata, **{**defaults, **kwargs})


def test_joint_latent_layout_and_defaults():
    model = _model()
    assert model.module.modality_names == ["atac", "rna"]
    assert "rna" in model.module.background and "atac" not in model.module.background
    # Without scaling keys only ATAC keeps its (1, F) factor; with them every modality is scaled by them.
    assert set(model.module.scaling) == {"atac"}
    keyed = make_mudata()
    RegularizedMultimodalVI.setup_mudata(
        keyed, modalities=["rna", "atac"], library_key="lib", feature_scaling_covariate_keys=["lib"]
    )
    assert set(RegularizedMultimodalVI(keyed, n_hidden=16, n_latent=4).module.scaling) == {"atac", "rna"}
    assert set(_model(feature_scaling_modalities=["atac", "rna"]).module.scaling) == {"atac", "rna"}
    model.train(max_epochs=1, batch_size=60)
    z = model.get_latent_representation()
    parts = model.get_modality_latents()
    assert z.shape == (120, 8)
    # the joint representation halves the ATAC slice by default; the slices (and weighted=False) are z itself
    assert model.joint_latent_weights == {"atac": 0.5, "rna": 1.0}
    np.testing.assert_allclose(z, np.concatenate([0.5 * parts["atac"], parts["rna"]], axis=1))
    raw = model.get_latent_representation(weighted=False)
    np.testing.assert_array_equal(raw, np.concatenate([parts["atac"], parts["rna"]], axis=1))
    assert parts["atac"].shape[1] == 3 and parts["rna"].shape[1] == 5
    norm = model.get_normalized_expression(modality="atac")
    assert list(norm.columns[:2]) == ["r0", "r1"]
    with pytest.raises(ValueError, match="several modalities"):
        model.get_normalized_expression()


def test_joint_latent_weights_scale_only_the_named_slices(tmp_path):
    model = _model(joint_latent_weights={"rna": 2.0})  # a dict names some modalities; the others get 1
    assert model.joint_latent_weights == {"atac": 1.0, "rna": 2.0}
    model.train(max_epochs=1, batch_size=60)
    raw = model.get_latent_representation(weighted=False)
    z = model.get_latent_representation()
    np.testing.assert_allclose(z[:, :3], raw[:, :3])
    np.testing.assert_allclose(z[:, 3:], 2.0 * raw[:, 3:], rtol=1e-6)
    np.testing.assert_allclose(model.get_modality_latents()["rna"], raw[:, 3:])
    model.save(tmp_path / "m", overwrite=True)
    loaded = RegularizedMultimodalVI.load(tmp_path / "m", adata=model.adata)
    assert loaded.joint_latent_weights == {"atac": 1.0, "rna": 2.0}
    np.testing.assert_allclose(loaded.get_latent_representation(), z, rtol=1e-5, atol=1e-6)
    assert _model(joint_latent_weights=1).joint_latent_weights == {"atac": 1.0, "rna": 1.0}
    with pytest.raises(ValueError, match=r"joint_latent_weights\['atac'\] must be a positive number, got 0"):
        _model(joint_latent_weights={"atac": 0})
    with pytest.raises(ValueError, match="unknown modalities"):
        _model(joint_latent_weights={"protein": 0.5})


def test_cells_missing_a_modality_are_masked():
    mdata = make_mudata()
    atac = mdata.mod["atac"].X.toarray()
    atac[:10] = 0
    mdata.mod["atac"].X = sp.csr_matrix(atac)
    model = _model(mdata)
    loader = model._make_data_loader(adata=mdata, indices=np.arange(20), batch_size=20)
    tensors = next(iter(loader))
    inf, gen, _ = model.module(tensors, loss_kwargs={"n_obs": 120})
    out = model.module.loss(tensors, inf, gen, n_obs=120)
    # Per-cell loss of the first 10 cells holds no ATAC reconstruction or ATAC library KL.
    torch.manual_seed(0)
    full = model.module.loss(tensors, inf, gen, n_obs=120)
    rna_only = full.reconstruction_loss["reconstruction_loss"][:10]
    from rvi.module.vae import log_nb

    group = gen["dispersion_group"]
    expected = -log_nb(tensors["X_rna"][:10], gen["mu"]["rna"][:10], gen["log_theta"]["rna"], group=group[:10])
    torch.testing.assert_close(rna_only, expected)
    assert out.extra_metrics["atac_reconstruction"] > 0


def _float64_jacobian(module, tensors, modality):
    inf = module.inference(**module._get_inference_input(tensors), sample=False)
    z = inf["z"].detach()
    cat = tensors.get("rvi_categoricals")

    def f(z_):
        return module.decode_rate(z_, cat, None, modality)[0]

    # (B, F, B, K) -> per-cell (B, F, K)
    jac = torch.autograd.functional.jacobian(f, z)
    idx = torch.arange(z.shape[0])
    return jac[idx, :, idx, :]


def test_attribution_matches_float64_autograd_jacobian():
    model = _model()
    module = model.module.double().eval()
    loader = model._make_data_loader(adata=model.adata, indices=np.arange(12), batch_size=12)
    tensors = {k: v.double() for k, v in next(iter(loader)).items()}
    res = attribution_batch(module, tensors, dims_per_pass=3)
    for m in ("rna", "atac"):
        jac = _float64_jacobian(module, tensors, m)
        mean_abs = jac.abs().mean(1)
        sq = (jac**2).sum(1)
        rel = (res[f"{m}_mean_abs"] - mean_abs).abs().max() / mean_abs.abs().max()
        assert rel < 1e-4
        assert ((res[f"{m}_sq"] - sq).abs().max() / sq.max()) < 1e-4
    jac_rna = _float64_jacobian(module, tensors, "rna")
    model.module.float()
    frame = model.get_modality_attribution(batch_size=50, dims_per_pass=4)
    assert frame.shape[0] == 120
    frob = jac_rna[:, :, :3].pow(2).sum((1, 2)).sqrt().numpy()
    np.testing.assert_allclose(frame["frob_rna_decoder_atac_block"].to_numpy()[:12], frob, rtol=1e-4)
    ratio = np.log2(frame["frob_atac"] / frame["frob_rna"])
    np.testing.assert_allclose(frame["log2_ratio_atac_rna"], ratio, rtol=1e-6)


def test_modality_lr_multiplier_and_scale():
    model = _model(learnable_modality_scale=True)
    model.train(max_epochs=1, batch_size=60, plan_kwargs={"modality_lr_multiplier": {"atac": 2.0}})
    hist = model.history_
    assert "atac_modality_scale_prior_train" in hist and "rna_dispersion_penalty_train" in hist


def test_different_cell_order_is_an_error_until_aligned():
    mdata = make_mudata()
    rna = mdata.mod["rna"]
    mdata.mod["rna"] = rna[rna.obs_names[::-1]].copy()
    with pytest.raises(ValueError, match="same cells in a different order.*align_modalities"):
        RegularizedMultimodalVI.setup_mudata(mdata, library_key="lib")
    aligned = align_modalities(mdata)
    np.testing.assert_array_equal(
        aligned.mod["rna"].X.toarray()[0], mdata.mod["rna"][mdata.obs_names[0]].X.toarray()[0]
    )
    RegularizedMultimodalVI.setup_mudata(aligned, library_key="lib")


def test_different_cell_sets_are_padded_by_alignment():
    mdata = make_mudata()
    atac = mdata.mod["atac"]
    mdata.mod["atac"] = atac[atac.obs_names[:100]].copy()
    mdata.update()
    with pytest.raises(ValueError, match="different set of cells"):
        RegularizedMultimodalVI.setup_mudata(mdata, library_key="lib")
    aligned = align_modalities(mdata)
    assert aligned.mod["atac"].n_obs == mdata.n_obs
    assert aligned.mod["atac"][mdata.obs_names[100:]].X.sum() == 0


def test_unknown_modality_in_per_modality_dict():
    mdata = make_mudata()
    RegularizedMultimodalVI.setup_mudata(mdata, library_key="lib")
    with pytest.raises(ValueError, match=r"n_latent names unknown modalities \['adt'\]"):
        RegularizedMultimodalVI(mdata, n_latent={"rna": 4, "adt": 3})
    with pytest.raises(ValueError, match="feature_scaling_modalities names unknown"):
        RegularizedMultimodalVI(mdata, feature_scaling_modalities=["protein"])
    with pytest.raises(ValueError, match="modality_lr_multiplier names unknown"):
        model = RegularizedMultimodalVI(mdata, n_hidden=8, n_latent=2)
        model.train(max_epochs=1, plan_kwargs={"modality_lr_multiplier": {"adt": 2.0}})


def test_zero_feature_modality():
    mdata = make_mudata()
    mdata.mod["atac"] = mdata.mod["atac"][:, []].copy()
    with pytest.raises(ValueError, match="'atac'.*zero features"):
        RegularizedMultimodalVI.setup_mudata(mdata, library_key="lib")


def test_non_integer_atac_counts():
    mdata = make_mudata()
    mdata.mod["atac"].X = mdata.mod["atac"].X * 0.3
    with pytest.raises(ValueError, match=r"mdata.mod\['atac'\].X: counts contain non-integer"):
        RegularizedMultimodalVI.setup_mudata(mdata, library_key="lib")


def test_covariates_that_differ_between_tables():
    mdata = make_mudata()
    mdata.mod["atac"].obs["lib"] = "l1"
    with pytest.raises(ValueError, match=r"'lib' differs between mdata.obs and mdata.mod\['atac'\].obs"):
        RegularizedMultimodalVI.setup_mudata(mdata, library_key="lib")


def test_setup_anndata_points_to_setup_mudata():
    with pytest.raises(TypeError, match="setup_mudata"):
        RegularizedMultimodalVI.setup_anndata(make_mudata().mod["rna"])


def test_tfidf_encoder_input_is_depth_free_and_weights_rare_features():
    mdata = make_mudata()
    model = _model(mdata, encoder_input={"atac": "tfidf"})
    module = model.module
    assert module.encoder_input == {"atac": "tfidf", "rna": "log_normalized"}
    atac = mdata.mod["atac"].X.toarray()
    expected_idf = np.log1p(atac.shape[0] / np.maximum((atac > 0).sum(0), 1))
    np.testing.assert_allclose(module.idf_atac.numpy(), expected_idf, rtol=1e-6)
    assert "idf_atac" in module.state_dict() and not any(p is module.idf_atac for p in module.parameters())
    x = torch.tensor(atac[:10])
    h = module._encoder_input(x, x.sum(-1), None, "atac")
    # binarised: the same accessible features at any count give the same input
    np.testing.assert_allclose(h.numpy(), module._encoder_input(3 * x, 3 * x.sum(-1), None, "atac").numpy())
    b = (atac[:10] > 0).astype(float)
    expected = np.log1p(1e4 * b / np.maximum(b.sum(1, keepdims=True), 1) * expected_idf)  # rare peaks weigh more
    np.testing.assert_allclose(h.numpy(), expected, rtol=1e-5)
    model.train(max_epochs=1, batch_size=60)
    assert np.isfinite(model.get_latent_representation()).all()
    with pytest.raises(ValueError, match="encoder_input for 'atac' must be one of"):
        _model(encoder_input={"atac": "lsi"})
    with pytest.raises(ValueError, match="encoder_input names unknown modalities"):
        _model(encoder_input={"protein": "tfidf"})


def test_shared_slice_is_the_product_of_the_modality_experts_and_the_prior():
    mdata = make_mudata()
    atac = mdata.mod["atac"].X.toarray()
    atac[:5] = 0  # five cells without ATAC: their shared posterior is the RNA expert times the prior
    mdata.mod["atac"].X = sp.csr_matrix(atac)
    model = _model(mdata, n_latent={"rna": 2, "atac": 1}, n_latent_shared=3)
    module = model.module
    model.train(max_epochs=1, batch_size=60)
    module.eval()
    rna = torch.tensor(mdata.mod["rna"].X.toarray()[:10])
    x = {"rna": rna, "atac": torch.tensor(atac[:10])}
    with torch.no_grad():
        inf = module.inference(x, sample=False)
        experts = {}
        for m, n_private in (("rna", 2), ("atac", 1)):
            h = module._encoder_input(x[m], x[m].sum(-1), None, m)
            qm, qv = module.encoders[m](h)
            experts[m] = (qm[:, n_private:], qv[:, n_private:])
            np.testing.assert_allclose(inf["qz_m"][m].numpy(), qm[:, :n_private].numpy(), rtol=1e-5)
    has_atac = torch.tensor([0.0] * 5 + [1.0] * 5)[:, None]
    precision = 1.0 + 1.0 / experts["rna"][1] + has_atac / experts["atac"][1]
    mean = (experts["rna"][0] / experts["rna"][1] + has_atac * experts["atac"][0] / experts["atac"][1]) / precision
    np.testing.assert_allclose(inf["shared"]["qz_v"].numpy(), (1.0 / precision).numpy(), rtol=1e-5)
    np.testing.assert_allclose(inf["shared"]["qz_m"].numpy(), mean.numpy(), rtol=1e-4, atol=1e-6)
    # pooling two experts is more certain than either alone
    assert torch.all(inf["shared"]["qz_v"][5:] < experts["rna"][1][5:])

    parts = model.get_modality_latents()
    assert {k: v.shape[1] for k, v in parts.items()} == {"atac": 1, "rna": 2, "shared": 3}
    np.testing.assert_allclose(model.get_latent_representation()[:, 3:], parts["shared"])
    assert "shared_kl_z_train" in model.history_
    assert len(model.latent_variance_ratio()) == 6
    attribution = model.get_modality_attribution()
    assert {"frob_shared", "frob_atac", "frob_rna", "log2_ratio_atac_rna"} <= set(attribution.columns)
    with pytest.raises(ValueError, match="n_latent_shared must be a non-negative integer"):
        _model(n_latent_shared=-1)
    with pytest.raises(ValueError, match="latent space is empty"):
        _model(n_latent={"rna": 0, "atac": 0})
