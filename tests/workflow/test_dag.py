"""DAG shape from a real-study style sample sheet (placeholder files, dry runs only)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.workflow import snakemake
from tests.workflow.test_config import rows, write_sheet
from tests.workflow.test_e2e import job_counts


def dry_run(workdir: Path, config: dict, *targets: str) -> subprocess.CompletedProcess:
    path = workdir / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return snakemake(workdir, path, "-n", *targets, timeout=120)


def test_multiome_dag(tmp_path):
    sheet = write_sheet(tmp_path, rows(4))
    proc = dry_run(tmp_path, {"study": "dag", "sample_sheet": str(sheet), "labels": {"levels": ["l1"]}})
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_counts(proc.stdout)
    assert jobs["load_rna"] == 4 and jobs["load_atac"] == 4 and jobs["scrublet"] == 4
    for rule in ("merge_rna", "merge_atac", "cell_qc", "train_rna", "annotate", "select_cres", "train_multimodal"):
        assert jobs[rule] == 1, rule
    assert jobs["notebook"] == 9  # one per stage notebook, evaluate included
    # GPU rules carry gpu=1 and the LSF flags; the local dry run still schedules them.
    block = re.search(r"rule train_rna:.*?resources: ([^\n]*)", proc.stdout, re.S).group(1)
    assert "gpu=1" in block and "lsf_queue=normal" in block and "-gpu" in block


def test_rna_only_dag_has_no_atac_rules(tmp_path):
    sheet = write_sheet(tmp_path, [r[:5] + ["", ""] for r in rows(3)])
    config = {"study": "rna_only", "sample_sheet": str(sheet), "modalities": ["rna"], "labels": {"levels": ["l1"]}}
    proc = dry_run(tmp_path, config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_counts(proc.stdout)
    assert jobs["load_rna"] == 3 and jobs["train_rna"] == 1 and jobs["annotate"] == 1
    assert not {"load_atac", "merge_atac", "select_cres", "train_multimodal"} & set(jobs)
    assert jobs["notebook"] == 6


def test_stage_target_runs_only_what_it_needs(tmp_path):
    sheet = write_sheet(tmp_path, rows(2))
    proc = dry_run(tmp_path, {"study": "dag", "sample_sheet": str(sheet)}, "qc")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(job_counts(proc.stdout)) == {"load_rna", "merge_rna", "scrublet", "merge_scrublet", "notebook", "qc"}
