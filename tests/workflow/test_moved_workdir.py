"""A copied or moved work folder reruns nothing: rule params and inputs hold work-folder-relative paths."""

from __future__ import annotations

import shutil

import pytest
import yaml

from tests.workflow import REPO, snakemake
from tests.workflow.test_e2e import job_counts

TARGETS = ("results/tiny/rna.h5ad", "results/tiny/scrublet.csv")


@pytest.mark.slow
def test_copied_work_folder_has_nothing_to_do(tmp_path):
    first = tmp_path / "first"
    first.mkdir()
    raw = yaml.safe_load((REPO / "config" / "test_tiny.yaml").read_text())
    raw.update(modalities=["rna"], ground_truth={"cells": None, "cres": None})
    for key in ("sweeps", "train_multimodal"):
        raw.pop(key)
    raw["resources"] = {"default": {"threads": 1, "mem_mb": 2000, "runtime": 10}}
    config = first / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = snakemake(first, config, *TARGETS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert job_counts(snakemake(first, config, "-n", *TARGETS).stdout) == {}

    copied = tmp_path / "elsewhere" / "copy"
    shutil.copytree(first, copied, symlinks=True)  # copy2: modification times are kept, as with cp -a / rsync -a
    proc = snakemake(copied, copied / "tiny.yaml", "-n", *TARGETS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert job_counts(proc.stdout) == {}, proc.stdout[-3000:]
    shutil.move(copied, tmp_path / "moved")
    proc = snakemake(tmp_path / "moved", tmp_path / "moved" / "tiny.yaml", "-n", *TARGETS)
    assert job_counts(proc.stdout) == {}, proc.stdout[-3000:]
