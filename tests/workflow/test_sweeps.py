"""Experiment sweeps: override merging and validation, params isolation, the collected table, the DAG.

The end-to-end run (`snakemake sweep` on config/test_tiny.yaml, then a dry run after editing one
experiment) is in test_e2e.py, which shares its Snakemake run.
"""

from __future__ import annotations

import re

import pandas as pd
import pytest
import yaml

from rvi.stages.report import flatten_overrides, sweep_metrics, sweep_table
from rvi.workflow import ConfigError, load_config, stage_params
from rvi.workflow.sweeps import deep_merge, experiment_config, sweep_params
from tests.workflow.test_config import REPO, rows, write_sheet
from tests.workflow.test_dag import dry_run
from tests.workflow.test_e2e import job_counts


def tiny(**experiments) -> dict:
    raw = yaml.safe_load((REPO / "config" / "test_tiny.yaml").read_text())
    raw["sweeps"] = {"stage": "train_rna", "experiments": experiments}
    return raw


def load(raw: dict) -> dict:
    return load_config(raw, check_sample_sheet=False)


def errors(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        load(raw)
    return str(err.value)


def test_deep_merge_merges_mappings_and_replaces_the_rest():
    base = {"model": {"n_hidden": 16, "module_kwargs": {"a": 1}}, "training": {"plan_kwargs": {"x": {"atac": 2}}}}
    over = {"model": {"module_kwargs": {"b": 2}}, "training": {"plan_kwargs": {"x": {"atac": 4}}, "seed": 3}}
    merged = deep_merge(base, over)
    assert merged == {
        "model": {"n_hidden": 16, "module_kwargs": {"a": 1, "b": 2}},
        "training": {"plan_kwargs": {"x": {"atac": 4}}, "seed": 3},
    }
    assert base["model"]["module_kwargs"] == {"a": 1}  # inputs untouched
    assert deep_merge({"devices": [0, 1]}, {"devices": [2]}) == {"devices": [2]}


def test_flatten_overrides():
    flat = flatten_overrides({"training": {"seed": 1, "plan_kwargs": {"lr": 0.01}}, "model": {"module_kwargs": {}}})
    assert flat == {"model.module_kwargs": {}, "training.plan_kwargs.lr": 0.01, "training.seed": 1}


def test_experiment_section_is_the_merged_validated_stage_section():
    cfg = load(tiny(wide={"model": {"n_hidden": 32, "module_kwargs": {"dispersion_init": "data"}}}))
    section = experiment_config(cfg, "wide")["train_rna"]
    assert section["model"]["n_hidden"] == 32 and section["model"]["n_latent"] == cfg["train_rna"]["model"]["n_latent"]
    assert section["model"]["module_kwargs"] == {"dispersion_init": "data"}
    assert section["training"] == cfg["train_rna"]["training"]
    # The job's params have the stage's own structure (the stage function runs unchanged).
    params = sweep_params(cfg, "wide")
    assert set(params) == set(stage_params(cfg, "train_rna")) == {"train_rna", "covariates", "labels"}
    assert params["train_rna"] == section


def test_unknown_override_key_names_the_experiment_and_key():
    msg = errors(tiny(ok={}, typo={"training": {"max_epoch": 5}}, worse={"modle": {}}))
    assert "unknown key 'sweeps.experiments.typo.training.max_epoch'; did you mean 'max_epochs'?" in msg
    assert "unknown key 'sweeps.experiments.worse.modle'; did you mean 'model'?" in msg
    assert "'sweeps.experiments.ok" not in msg


def test_bad_override_value_names_the_experiment_and_key():
    msg = errors(tiny(neg={"training": {"max_epochs": -1}}, strat={"training": {"strategy": "dp"}}))
    assert "bad value for 'sweeps.experiments.neg.training.max_epochs': -1" in msg
    assert "bad value for 'sweeps.experiments.strat.training.strategy': 'dp'" in msg


def test_cross_key_checks_apply_to_each_experiment():
    msg = errors(
        tiny(
            gpus={"training": {"devices": 2, "strategy": "ddp", "early_stopping": False}},
            level={"metrics": {"label_level": "nope"}},
        )
    )
    assert "'sweeps.experiments.gpus.training.devices' = 2 asks for 2 GPUs but 'resources.train_rna.gpu' = 1" in msg
    assert "bad value for 'sweeps.experiments.level.metrics.label_level': 'nope'" in msg


def test_bad_experiment_names_and_stages():
    assert "bad value for 'sweeps.experiments': 'two words'" in errors(tiny(**{"two words": {}}))
    assert "'metrics.csv' is reserved" in errors(tiny(**{"metrics.csv": {}}))
    raw = tiny(a={})
    raw["sweeps"]["stage"] = "annotate"
    assert "bad value for 'sweeps.stage': 'annotate'" in errors(raw)
    raw = tiny(a={})
    raw["sweeps"]["stage"] = "train_multimodal"
    raw["modalities"] = ["rna"]
    raw["ground_truth"]["cres"] = None
    raw["cell_qc"]["default"].pop("min_fragments", None)
    assert "'sweeps.stage' = 'train_multimodal' but modalities has no 'atac'" in errors(raw)


def test_editing_one_experiment_changes_only_its_params():
    raw = tiny(a={"training": {"seed": 1}}, b={"training": {"seed": 2}})
    before = load(raw)
    raw["sweeps"]["experiments"]["b"]["training"]["seed"] = 5
    after = load(raw)
    assert sweep_params(before, "a") == sweep_params(after, "a")
    assert sweep_params(before, "b") != sweep_params(after, "b")
    # Reordering keys in the YAML changes nothing (params are canonical).
    raw["sweeps"]["experiments"]["a"] = {"training": {"seed": 1}}
    assert repr(sweep_params(load(raw), "a")) == repr(sweep_params(before, "a"))


def write_run(folder, name: str, metrics: dict, elbo: list[float]):
    path = folder / name
    path.mkdir()
    pd.DataFrame(metrics, index=["rvi"]).to_csv(path / "metrics.csv")
    hist = pd.DataFrame({"elbo_validation": elbo, "elbo_train": elbo})
    hist.index.name = "epoch"
    hist.to_csv(path / "history.csv")
    return str(path / "metrics.csv"), str(path / "history.csv")


def test_sweep_table_one_row_per_experiment_with_override_columns(tmp_path):
    m1, h1 = write_run(tmp_path, "base", {"batch_mixing_library": 0.5}, [10.0, 8.0, 9.0])
    m2, h2 = write_run(tmp_path, "wide", {"batch_mixing_library": 0.7}, [11.0, 7.0])
    overrides = {"base": {}, "wide": {"model": {"n_hidden": 32}, "training": {"devices": [0, 1]}}}
    out = tmp_path / "sweeps" / "metrics.csv"
    sweep_metrics([m1, m2], [h1, h2], str(out), "train_rna", ["base", "wide"], overrides)
    table = pd.read_csv(out)
    assert list(table["experiment"]) == ["base", "wide"]
    assert list(table.columns) == [
        "experiment",
        "stage",
        "batch_mixing_library",
        "n_epochs",
        "elbo_validation_last",
        "elbo_validation_min",
        "model.n_hidden",
        "training.devices",
    ]
    assert table["n_epochs"].tolist() == [3, 2]
    assert table["elbo_validation_last"].tolist() == [9.0, 7.0]
    assert table["elbo_validation_min"].tolist() == [8.0, 7.0]
    assert table["model.n_hidden"].isna().tolist() == [True, False] and table.loc[1, "model.n_hidden"] == 32
    assert table.loc[1, "training.devices"] == "[0, 1]"
    assert not list(out.parent.glob(".*.tmp-*"))


def test_sweep_table_checks_its_inputs(tmp_path):
    m1, h1 = write_run(tmp_path, "a", {"x": 1.0}, [1.0])
    with pytest.raises(ValueError, match="2 experiments but 1 metrics"):
        sweep_table(["a", "b"], [m1], [h1], {})
    with pytest.raises(ValueError, match=r"override key\(s\) \['x'\] collide"):
        sweep_table(["a"], [m1], [h1], {"a": {"x": 2}})


# ------------------------------------------------------------------------------------------------ DAG


def block(stdout: str, rule: str) -> list[str]:
    return re.findall(rf"^rule {rule}:\n(.*?)^\s*resources: ([^\n]*)", stdout, re.S | re.M)


def test_rna_sweep_dag_has_one_gpu_job_per_experiment(tmp_path):
    sheet = write_sheet(tmp_path, rows(2))
    experiments = {"base": {}, "wide": {"model": {"n_hidden": 64}}}
    config = {
        "study": "dag",
        "sample_sheet": str(sheet),
        "sweeps": {"stage": "train_rna", "experiments": experiments},
        "resources": {
            "train_rna": {"gpu": 1, "gpu_mem_mb": 80000, "queue": "gpu-normal", "mem_mb": 30000},
            "train_multimodal": {"gpu": 1, "queue": "gpu-normal"},
            "baseline_scvi": {"gpu": 1, "queue": "gpu-normal"},
        },
    }
    proc = dry_run(tmp_path, config, "sweep")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_counts(proc.stdout)
    assert jobs["train_rna_sweep"] == 2 and jobs["sweep_notebook"] == 2 and jobs["sweep_metrics"] == 1
    assert "train_rna" not in jobs and "train_multimodal" not in jobs
    blocks = block(proc.stdout, "train_rna_sweep")
    assert {re.search(r"wildcards: experiment=(\S+)", b).group(1) for b, _ in blocks} == {"base", "wide"}
    for body, resources in blocks:
        assert "gpu=1" in resources and "lsf_queue=gpu-normal" in resources
        assert '-gpu "mode=shared:j_exclusive=yes:gmem=80000:num=1"' in resources and "mem_mb=30000" in resources
        assert re.search(r"output: .*results/dag/sweeps/(base|wide)/model", body)


def test_multimodal_sweep_needs_the_main_annotation_and_cres(tmp_path):
    sheet = write_sheet(tmp_path, rows(2))
    config = {
        "study": "dag",
        "sample_sheet": str(sheet),
        "labels": {"levels": ["l1"]},
        "sweeps": {"stage": "train_multimodal", "experiments": {"lr4": {"training": {"plan_kwargs": {"lr": 1e-4}}}}},
    }
    proc = dry_run(tmp_path, config, "sweep")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_counts(proc.stdout)
    assert jobs["train_multimodal_sweep"] == 1
    for rule in ("train_rna", "annotate", "select_cres", "load_atac"):
        assert jobs.get(rule, 0) >= 1, (rule, jobs)
    assert "train_multimodal" not in jobs
    ((body, _),) = block(proc.stdout, "train_multimodal_sweep")
    assert "results/dag/cres.csv" in body and "results/dag/annotation.csv" in body


def test_sweep_target_without_sweeps_says_how_to_add_one(tmp_path):
    sheet = write_sheet(tmp_path, rows(2))
    proc = dry_run(tmp_path, {"study": "dag", "sample_sheet": str(sheet)}, "sweep")
    assert proc.returncode != 0
    assert "has no sweep: add a 'sweeps' section" in proc.stdout + proc.stderr
