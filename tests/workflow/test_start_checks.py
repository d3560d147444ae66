"""Mistakes caught at config load (so `snakemake -n` reports them) instead of inside train_rna."""

from __future__ import annotations

import pytest
import yaml

from rvi.workflow import ConfigError, load_config
from tests.workflow import snakemake
from tests.workflow.test_config import load_yaml, rows, study_config, write_sheet


def test_plan_kwargs_typo_named_with_close_match():
    raw = load_yaml("test_tiny")
    raw["train_rna"]["training"]["plan_kwargs"] = {"lrr": 0.01}
    expected = r"stage train_rna / key 'train_rna.training.plan_kwargs.lrr'.*did you mean 'lr'"
    with pytest.raises(ConfigError, match=expected):
        load_config(raw, check_sample_sheet=False)


def test_module_kwargs_typo_named_with_close_match():
    raw = load_yaml("test_tiny")
    raw["train_multimodal"]["model"]["module_kwargs"] = {"learnable_modality_scal": True, "n_latent": 3}
    with pytest.raises(ConfigError) as exc:
        load_config(raw, check_sample_sheet=False)
    text = str(exc.value)
    assert "'train_multimodal.model.module_kwargs.learnable_modality_scal'" in text
    assert "did you mean 'learnable_modality_scale'" in text
    assert "set it as 'train_multimodal.model.n_latent' instead" in text


def test_sweep_experiment_kwargs_checked():
    raw = load_yaml("test_tiny")
    raw["sweeps"]["experiments"]["baseline"] = {"training": {"plan_kwargs": {"weight_decayy": 0.0}}}
    with pytest.raises(ConfigError, match=r"sweeps.experiments.baseline.training.plan_kwargs.weight_decayy"):
        load_config(raw, check_sample_sheet=False)


def test_shipped_kwargs_accepted():
    for name in ("demo", "bone_marrow", "immune"):
        load_config(load_yaml(name), check_sample_sheet=False)


def test_covariate_column_missing_from_sheet(tmp_path):
    sheet = write_sheet(tmp_path, rows())
    cfg = study_config(sheet, covariates={"nn_conditioning_covariate_keys": ["donr"]}, modalities=["rna"])
    expected = r"'covariates.nn_conditioning_covariate_keys' = 'donr' is not a column.*'donor'"
    with pytest.raises(ConfigError, match=expected):
        load_config(cfg)


def test_empty_covariate_cell_names_rows(tmp_path):
    table = rows(3)
    table[1][3] = ""  # donor of s1
    sheet = write_sheet(tmp_path, table)
    cfg = study_config(sheet, covariates={"technical_covariate_keys": ["donor"]}, modalities=["rna"])
    with pytest.raises(ConfigError, match=r"column 'donor'.*empty in line\(s\) \[3\] \(samples \['s1'\]\)"):
        load_config(cfg)


def test_header_only_sheet_stops_at_start(tmp_path):
    sheet = write_sheet(tmp_path, [])
    with pytest.raises(ConfigError, match="header but no samples"):
        load_config(study_config(sheet, modalities=["rna"]))


def test_label_file_level_columns_checked_at_start(tmp_path):
    table = rows(2)
    table[0][6] = "s0/labels.csv"
    sheet = write_sheet(tmp_path, table)
    (tmp_path / "s0" / "labels.csv").write_text("barcode,l1,level2\nAAA,T,U\n")
    with pytest.raises(ConfigError, match=r"sample 's0': label file .*lacks the label level column\(s\) \['l2'\]"):
        load_config(study_config(sheet, modalities=["rna"]))


def test_snakemake_dry_run_reports_late_mistakes(tmp_path):
    """`snakemake -n` stops with every one of them, before any job."""
    table = rows(3)
    table[2][1] = "lib0"  # library used twice
    sheet = write_sheet(tmp_path, table)
    raw = {
        **study_config(sheet, modalities=["rna"]),
        "train_rna": {"training": {"plan_kwargs": {"lrr": 0.01}}},
    }
    config = tmp_path / "late.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = snakemake(tmp_path, config, "-n", cores=1, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "train_rna.training.plan_kwargs.lrr" in out
    raw["train_rna"] = {}
    config.write_text(yaml.safe_dump(raw))
    proc = snakemake(tmp_path, config, "-n", cores=1, timeout=180)
    assert proc.returncode != 0
    assert "library ids used by several samples ('lib0': samples ['s0', 's2'])" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_empty_validation_set_with_early_stopping_stops_before_the_model_is_built():
    """Cell counts per stratum are known only after cell QC: checked at the start of the training job."""
    import numpy as np

    from rvi.stages.training import _build_and_train

    training = {"early_stopping": True, "validation_fraction": 0.01}
    with pytest.raises(ValueError, match=r"validation_fraction = 0.01 gives 0 validation cells of 40.*early_stopping"):
        _build_and_train(None, None, {}, training, np.arange(40), np.array([], dtype=np.int64))
