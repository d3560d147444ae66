"""End to end: the whole workflow on config/test_tiny.yaml in a temporary directory.

One Snakemake run (simulated data, 3 epochs) checks every rule's outputs, the executed notebooks
and the kernel they ran on; a dry run after editing a train_rna parameter checks that only
train_rna and what depends on it would rerun.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "workflow" / "Snakefile"
UPSTREAM = {"demo_data", "load_rna", "merge_rna", "scrublet", "merge_scrublet", "load_atac", "merge_atac"}
DOWNSTREAM = {"train_rna", "annotate", "select_cres", "train_multimodal"}


def snakemake(workdir: Path, config: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir)]
    cmd += ["--configfile", str(config), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def job_counts(dry_run_output: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table of a dry run."""
    counts = {}
    table = dry_run_output.split("Job stats:", 1)[-1]
    for line in table.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny")
    config = workdir / "tiny.yaml"
    config.write_text((REPO / "config" / "test_tiny.yaml").read_text())
    proc = snakemake(workdir, config)
    if proc.returncode != 0:
        failed = [p for p in sorted(workdir.glob("results/*/logs/**/*.log")) if "Error" in p.read_text()]
        logs = "\n".join(f"== {p}\n{p.read_text()[-4000:]}" for p in failed)
        pytest.fail(f"snakemake failed:\n{proc.stderr[-4000:]}\n{logs}")
    return workdir, config


@pytest.mark.slow
@pytest.mark.xdist_group("snakemake_e2e")
def test_all_outputs(tiny_run):
    workdir, _ = tiny_run
    out = workdir / "results" / "tiny"
    expected = [
        "rna/s1.h5ad",
        "rna.h5ad",
        "qc_summary.csv",
        "scrublet/lib1.csv",
        "scrublet.csv",
        "atac/s1.h5ad",
        "atac.h5ad",
        "atac_qc.csv",
        "rna_model/model/model.pt",
        "rna_model/latent.parquet",
        "rna_model/umap.parquet",
        "rna_model/leiden.csv",
        "rna_model/knn.npz",
        "rna_model/metrics.csv",
        "rna_model/cells.csv",
        "rna_model/training_curves.png",
        "annotation.csv",
        "annotation_purity.csv",
        "cres.csv",
        "cre_heatmap.png",
        "multimodal_model/model/model.pt",
        "multimodal_model/latent.parquet",
        "multimodal_model/attribution.parquet",
        "multimodal_model/attribution_scatter.png",
        "ground_truth_report.csv",
        "benchmarks/train_rna.tsv",
        "logs/train_rna.log",
    ]
    missing = [p for p in expected if not (out / p).exists()]
    assert not missing, missing
    cells = pd.read_csv(out / "rna_model" / "cells.csv", index_col=0)
    latent = pd.read_parquet(out / "rna_model" / "latent.parquet")
    assert latent.index.equals(cells.index[cells["pass_qc"]])
    assert set(cells.loc[cells["pass_qc"], "split"]) == {"train", "validation"}
    assert len(pd.read_csv(out / "annotation.csv", index_col=0)) == len(latent)
    report = pd.read_csv(out / "ground_truth_report.csv")
    assert {"scrublet_auroc", "cre_precision_top_n"} <= set(report["check"])
    # No temporary leftovers from the atomic writers.
    assert not list(out.rglob(".*.tmp-*"))


@pytest.mark.slow
@pytest.mark.xdist_group("snakemake_e2e")
def test_notebooks_executed_on_this_interpreter(tiny_run):
    workdir, _ = tiny_run
    folder = workdir / "results" / "tiny" / "notebooks"
    names = {p.stem for p in folder.glob("*.ipynb")}
    assert names == {
        "merge_rna",
        "scrublet",
        "load_atac",
        "train_rna",
        "annotate",
        "select_cres",
        "train_multimodal",
        "ground_truth_report",
    }
    nb = json.loads((folder / "train_rna.ipynb").read_text())
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert f"kernel python {sys.executable}" in text or f"kernel python {Path(sys.executable).resolve()}" in text
    assert any(c.get("metadata", {}).get("tags") == ["injected-parameters"] for c in nb["cells"])
    images = sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
    assert images >= 2


@pytest.mark.slow
@pytest.mark.xdist_group("snakemake_e2e")
def test_train_rna_param_change_reruns_only_downstream(tiny_run):
    workdir, config = tiny_run
    assert job_counts(snakemake(workdir, config, "-n").stdout) == {}
    raw = yaml.safe_load(config.read_text())
    raw["train_rna"]["training"]["max_epochs"] = 2
    edited = workdir / "edited.yaml"
    edited.write_text(yaml.safe_dump(raw))
    proc = snakemake(workdir, edited, "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_counts(proc.stdout)
    assert DOWNSTREAM <= set(jobs), jobs
    assert not UPSTREAM & set(jobs), jobs
    assert set(jobs) <= DOWNSTREAM | {"notebook", "ground_truth_report", "all"}
