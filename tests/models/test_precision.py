"""reduced_precision: bf16 autocast for the networks (TF32 on CUDA), fp32 likelihood; off by default."""

from __future__ import annotations

import pytest
import scvi
import torch

from rvi import AmbientRegularizedSCVI
from tests.conftest import make_counts


def _trained(reduced_precision: bool, **train_kwargs):
    scvi.settings.seed = 0
    adata = make_counts(n_cells=128, n_genes=60)
    AmbientRegularizedSCVI.setup_anndata(adata, library_key="lib", dataset_key="ds")
    model = AmbientRegularizedSCVI(adata, n_hidden=64, n_latent=8)
    model.train(
        max_epochs=10,
        batch_size=128,
        train_size=1.0,
        accelerator="cpu",
        enable_progress_bar=False,
        reduced_precision=reduced_precision,
        **train_kwargs,
    )
    return model


def test_bf16_autocast_final_elbo_within_half_a_percent_of_fp32():
    fp32 = _trained(False)
    bf16 = _trained(True)
    assert fp32.trainer.precision == "32-true" and bf16.trainer.precision == "bf16-mixed"
    first = float(fp32.history_["elbo_train"].iloc[0, 0])
    a, b = float(fp32.history_["elbo_train"].iloc[-1, 0]), float(bf16.history_["elbo_train"].iloc[-1, 0])
    assert a < 0.97 * first  # training moved the ELBO, so the comparison is not of two untrained models
    assert abs(b - a) / abs(a) < 0.005
    # the flag is scoped to the call
    assert not torch.backends.cuda.matmul.allow_tf32


def test_reduced_precision_bad_values():
    with pytest.raises(TypeError, match="reduced_precision"):
        _trained("yes")
    with pytest.raises(ValueError, match="precision"):
        _trained(True, precision="16-mixed")
