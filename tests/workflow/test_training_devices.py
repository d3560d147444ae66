"""training.devices / training.strategy: schema, start-time checks against the job's GPUs, pass-through to
Model.train(), and the DDP rank bookkeeping of rvi.distributed."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import yaml

from rvi import distributed
from rvi.stages.training import _build_and_train, _train_kwargs
from rvi.workflow import ConfigError, load_config, training_problems, validate_config
from tests.workflow.test_config import REPO


def tiny_config(**training) -> dict:
    raw = yaml.safe_load((REPO / "config" / "test_tiny.yaml").read_text())
    raw["train_rna"]["training"].update(training)
    return raw


def problems_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(raw, check_sample_sheet=False)
    return str(err.value)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("devices", "two", "bad value for 'train_rna.training.devices': 'two'"),
        ("devices", 0, "bad value for 'train_rna.training.devices': 0"),
        ("devices", [], "bad value for 'train_rna.training.devices': []"),
        ("devices", [0, 0], "bad value for 'train_rna.training.devices': [0, 0]"),
        ("strategy", "dp", "bad value for 'train_rna.training.strategy': 'dp'"),
        ("strategy", "ddp_spawn", "bad value for 'train_rna.training.strategy': 'ddp_spawn'"),
    ],
)
def test_schema_rejects_bad_devices_and_strategy_naming_the_key(key, value, expected):
    with pytest.raises(ConfigError) as err:
        validate_config(tiny_config(**{key: value}))
    assert expected in str(err.value)


@pytest.mark.parametrize("devices", ["auto", 1, 2, [0], [0, 1]])
def test_schema_accepts_device_forms(devices):
    strategy = "ddp" if devices in (2, [0, 1]) else "auto"
    raw = tiny_config(devices=devices, strategy=strategy, early_stopping=False)
    raw["resources"]["train_rna"]["gpu"] = 2
    cfg = load_config(raw, check_sample_sheet=False)
    assert cfg["train_rna"]["training"]["devices"] == devices


def test_devices_above_the_jobs_gpus_is_a_start_time_error():
    msg = problems_of(tiny_config(devices=2, strategy="ddp", early_stopping=False))
    assert "'train_rna.training.devices' = 2 asks for 2 GPUs but 'resources.train_rna.gpu' = 1" in msg
    assert "set resources.train_rna.gpu: 2" in msg


def test_device_index_outside_the_jobs_gpus_is_an_error():
    msg = problems_of(tiny_config(devices=[1]))
    assert "'train_rna.training.devices' = [1]: the job sees its 1 GPU(s) as indices 0-0" in msg


def test_gpu_accelerator_without_a_gpu_is_an_error():
    raw = tiny_config(accelerator="gpu")
    raw["resources"]["train_rna"]["gpu"] = 0
    raw["resources"]["train_rna"]["queue"] = "normal"
    assert "'train_rna.training.accelerator' = 'gpu' but 'resources.train_rna.gpu' = 0" in problems_of(raw)


def test_several_devices_need_ddp_and_ddp_needs_a_count():
    msg = problems_of(tiny_config(devices=2))
    assert "'train_rna.training.devices' = 2 with strategy 'auto'" in msg and "needs strategy: ddp" in msg
    msg = problems_of(tiny_config(strategy="ddp", early_stopping=False))
    assert "'train_rna.training.strategy' = 'ddp' needs an explicit 'train_rna.training.devices'" in msg


@pytest.mark.parametrize("accelerator", ["cpu", "gpu"])
def test_early_stopping_under_ddp_is_accepted(accelerator):
    """train() keeps early stopping on under DDP (tests/data/test_ddp.py), so the config must load as written."""
    raw = tiny_config(accelerator=accelerator, devices=2, strategy="ddp", early_stopping=True)
    raw["resources"]["train_rna"]["gpu"] = 2
    cfg = load_config(raw, check_sample_sheet=False)
    assert training_problems(cfg) == []
    assert cfg["train_rna"]["training"]["early_stopping"] is True
    kwargs = _train_kwargs(cfg["train_rna"]["training"], np.arange(8), np.arange(8, 10))
    assert kwargs["early_stopping"] is True and kwargs["strategy"] == "ddp"


def test_cpu_ddp_does_not_need_gpus():
    cfg = load_config(
        tiny_config(accelerator="cpu", devices=2, strategy="ddp", early_stopping=False), check_sample_sheet=False
    )
    assert training_problems(cfg) == []


def test_multi_gpu_ddp_with_matching_resources_is_valid():
    raw = tiny_config(accelerator="gpu", devices=4, strategy="ddp_find_unused_parameters_true", early_stopping=False)
    raw["resources"]["train_rna"]["gpu"] = 4
    cfg = load_config(raw, check_sample_sheet=False)
    assert distributed.world_size(cfg["train_rna"]["training"]) == 4


def test_world_size():
    assert distributed.world_size({"devices": 2, "strategy": "auto"}) == 1
    assert distributed.world_size({"devices": "auto", "strategy": "ddp"}) == 1
    assert distributed.world_size({"devices": 3, "strategy": "ddp"}) == 3
    assert distributed.world_size({"devices": [0, 2], "strategy": "ddp_find_unused_parameters_true"}) == 2


def training_section(**overrides) -> dict:
    cfg = validate_config(tiny_config(**overrides))
    return copy.deepcopy(cfg["train_rna"]["training"])


def test_train_kwargs_pass_devices_and_strategy(monkeypatch):
    idx = np.arange(10)
    kwargs = _train_kwargs(training_section(devices=[0, 1], strategy="ddp"), idx[:8], idx[8:])
    assert kwargs["devices"] == [0, 1] and kwargs["strategy"] == "ddp" and kwargs["accelerator"] == "auto"
    assert "plugins" not in kwargs  # launched outside ddp_ranks: Lightning's own launcher decides
    # Inside ranks started by ddp_ranks, Lightning must join them whatever the scheduler's variables say.
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    kwargs = _train_kwargs(training_section(devices=2, strategy="ddp"), idx[:8], idx[8:])
    assert [type(p).__name__ for p in kwargs["plugins"]] == ["LightningEnvironment"]


def test_stage_passes_devices_and_strategy_to_model_train(counts_adata, monkeypatch):
    """The stage's training section reaches Model.train() and the Lightning trainer (1 CPU device)."""
    from rvi import AmbientRegularizedSCVI

    seen = {}
    original = AmbientRegularizedSCVI.train

    def recording_train(self, **kwargs):
        seen.update(kwargs)
        return original(self, **kwargs)

    monkeypatch.setattr(AmbientRegularizedSCVI, "train", recording_train)
    AmbientRegularizedSCVI.setup_anndata(counts_adata, library_key="lib")
    training = training_section(accelerator="cpu", devices=1, strategy="auto", max_epochs=1, batch_size=64)
    model_cfg = {"n_hidden": 8, "n_latent": 2, "n_layers": 1, "dropout_rate": 0.1, "module_kwargs": {}}
    idx = np.arange(counts_adata.n_obs)
    vae, hist = _build_and_train(AmbientRegularizedSCVI, counts_adata, model_cfg, training, idx[30:], idx[:30])
    assert (seen["accelerator"], seen["devices"], seen["strategy"]) == ("cpu", 1, "auto")
    assert vae.trainer.num_devices == 1
    assert type(vae.trainer.strategy).__name__ == "SingleDeviceStrategy"
    assert len(hist) == 1


def test_ddp_ranks_is_a_no_op_for_single_process_and_other_stages():
    cfg = validate_config(tiny_config())
    kwargs = {"cfg": {"train_rna": cfg["train_rna"]}}
    assert type(distributed.ddp_ranks("train_rna", "rvi.stages.models:train_rna", kwargs, {})).__name__ == "nullcontext"
    assert (
        type(distributed.ddp_ranks("annotate", "rvi.stages.labels:annotate", {"cfg": {}}, {})).__name__ == "nullcontext"
    )


def test_worker_entry_point_refuses_to_run_outside_ddp_ranks(monkeypatch, capsys):
    monkeypatch.delenv(distributed.WORKER_ENV, raising=False)
    assert distributed.main(["spec.json"]) == 2
    assert "started by rvi.distributed.ddp_ranks" in capsys.readouterr().out


def test_a_failing_rank_stops_the_job_with_its_log(tmp_path):
    """Rank 1 cannot read its input: rank 0 (waiting, as it would in a collective) exits with rank 1's log."""
    import subprocess
    import sys

    cfg = validate_config(tiny_config(accelerator="cpu", devices=2, strategy="ddp", early_stopping=False))
    names = [
        "model",
        "latent",
        "umap",
        "leiden",
        "knn",
        "metrics",
        "cells",
        "genes",
        "history",
        "curves_png",
        "umap_png",
    ]
    outputs = {name: str(tmp_path / "out" / name) for name in names}
    inputs = {"rna": str(tmp_path / "missing.h5ad"), "cell_qc": str(tmp_path / "missing.csv")}
    kwargs = {"cfg": {"covariates": cfg["covariates"], "labels": cfg["labels"], "train_rna": cfg["train_rna"]}}
    kwargs |= inputs | outputs
    script = f"""
import time
from rvi.distributed import ddp_ranks
with ddp_ranks("train_rna", "rvi.stages.models:train_rna", {kwargs!r}, {outputs!r}, 2):
    time.sleep(120)
print("rank 0 was not stopped")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "DDP rank 1 failed (exit 1); its log:" in proc.stdout
    assert "missing.h5ad" in proc.stdout  # the worker's traceback, in the job's log
    assert "rank 0 was not stopped" not in proc.stdout
