"""End to end: the whole workflow on config/test_tiny.yaml in a temporary directory.

One Snakemake run (simulated data, 3 epochs) checks every rule's outputs (the evaluate stage's baselines,
metrics and HTML report included), the executed notebooks
and the kernel they ran on; a dry run after editing a train_rna parameter checks that only
train_rna and what depends on it would rerun. Then `snakemake sweep` runs the config's two experiments
(one of them with DDP on 2 CPU processes) on the same outputs, and a dry run after editing one
experiment checks that only that experiment would rerun.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.workflow import REPO, snakemake

UPSTREAM = {"demo_data", "load_rna", "merge_rna", "scrublet", "merge_scrublet", "load_atac", "merge_atac", "cell_qc"}
DOWNSTREAM = {
    "train_rna",
    "annotate",
    "select_cres",
    "train_multimodal",
    "integrated_output",
    "baseline_pca",
    "baseline_harmony",
    "baseline_scvi",
    "score_embeddings",
    "study_report",
}
EMBEDDINGS = ["rvi_rna", "rvi_multimodal", "rvi_multimodal_atac", "rvi_multimodal_rna", "pca", "harmony", "scvi"]


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
        "cell_qc.csv",
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
        "baselines/pca.parquet",
        "baselines/harmony.parquet",
        "baselines/scvi.parquet",
        "metrics/scib.csv",
        "metrics/neighbourhood_headline.csv",
        "metrics/composite.csv",
        "metrics/per_cell/rvi_rna.parquet",
        "metrics/metric_heatmap.png",
        "report.html",
        "benchmarks/train_rna.tsv",
        "benchmarks/baseline_scvi.tsv",
        "logs/train_rna.log",
    ]
    missing = [p for p in expected if not (out / p).exists()]
    assert not missing, missing
    cells = pd.read_csv(out / "rna_model" / "cells.csv", index_col=0)
    latent = pd.read_parquet(out / "rna_model" / "latent.parquet")
    assert latent.index.equals(cells.index[cells["pass_qc"]])
    assert set(cells.loc[cells["pass_qc"], "split"]) == {"train", "validation"}
    # cell_qc.csv holds the verdicts both trainers read; the RNA model's cells.csv adds the split.
    qc = pd.read_csv(out / "cell_qc.csv", index_col=0)
    assert qc["pass_qc"].equals(cells["pass_qc"]) and {"library", "fail_reasons"} <= set(qc.columns)
    assert (qc.loc[~qc["pass_qc"], "fail_reasons"].notna()).all()
    assert len(pd.read_csv(out / "annotation.csv", index_col=0)) == len(latent)
    report = pd.read_csv(out / "ground_truth_report.csv")
    assert {"scrublet_auroc", "cre_precision_top_n"} <= set(report["check"])
    # The multimodal rows: batch mixing and true-type accuracy beside the RNA model's, the chromatin-only pair
    # and its attribution.
    mm = {
        "multimodal_batch_mixing_library",
        "multimodal_batch_mixing_dataset",
        "multimodal_true_type_accuracy",
        "chromatin_only_atac_share",
    }
    assert mm <= set(report["check"])
    assert report["check"].str.startswith("chromatin_only_pair_accuracy_").sum() == 1
    # No temporary leftovers from the atomic writers.
    assert not list(out.rglob(".*.tmp-*"))


@pytest.mark.slow
def test_notebooks_executed_on_this_interpreter(tiny_run):
    workdir, _ = tiny_run
    folder = workdir / "results" / "tiny" / "notebooks"
    names = {p.stem for p in folder.glob("*.ipynb")}
    assert names == {
        "merge_rna",
        "scrublet",
        "load_atac",
        "cell_qc",
        "train_rna",
        "annotate",
        "select_cres",
        "train_multimodal",
        "ground_truth_report",
        "evaluate",
    }
    nb = json.loads((folder / "train_rna.ipynb").read_text())
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert f"kernel python {sys.executable}" in text or f"kernel python {Path(sys.executable).resolve()}" in text
    assert any(c.get("metadata", {}).get("tags") == ["injected-parameters"] for c in nb["cells"])
    images = sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
    assert images >= 2


@pytest.mark.slow
def test_training_logs_are_quiet_and_single(tiny_run):
    workdir, _ = tiny_run
    for stage in ("train_rna", "train_multimodal"):
        text = (workdir / "results" / "tiny" / "logs" / f"{stage}.log").read_text()
        assert "Tip:" not in text and "already downloaded" not in text, stage
        assert text.count("`Trainer.fit` stopped") == 1, stage  # once, not once per handler


@pytest.mark.slow
def test_evaluate_scores_every_embedding_and_report_shows_them(tiny_run):
    workdir, _ = tiny_run
    out = workdir / "results" / "tiny"
    headline = pd.read_csv(out / "metrics" / "neighbourhood_headline.csv", index_col=0)
    assert list(headline.index) == [*EMBEDDINGS, "random_knn"]
    assert [f"H{i}" for i in range(1, 15)] + [
        "bio",
        "library_integration",
        "dataset_integration",
        "batch",
        "total",
    ] == [c for c in headline.columns]
    # Library and dataset keys but no technical covariate: H1-H13 finite for every embedding, H14 NaN.
    assert np.isfinite(headline.loc[EMBEDDINGS, [f"H{i}" for i in (1, 2, 3, 4, 6, 7, 8, 10, 11, 12, 13)]]).all().all()
    assert headline["H14"].isna().all()
    composite = pd.read_csv(out / "metrics" / "composite.csv", index_col=0)
    assert list(composite.index) == EMBEDDINGS
    assert np.isfinite(composite[["bio", "batch", "total", "scib_bio", "scib_batch", "scib_total"]]).all().all()
    scib = pd.read_csv(out / "metrics" / "scib.csv", index_col=0)
    assert list(scib.index) == EMBEDDINGS and (scib["n_cells"] <= 300).all()
    per_cell = pd.read_parquet(out / "metrics" / "per_cell" / "scvi.parquet")
    cells = pd.read_csv(out / "rna_model" / "cells.csv", index_col=0)
    assert len(per_cell) == int(cells["pass_qc"].sum()) and "failure_mode" in per_cell
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 10 and "<table" in html and "scib total" in html
    assert "not produced by this run" not in html  # every stage ran, so every figure is there


@pytest.mark.slow
def test_integrated_files_open_in_scanpy_and_mudata(tiny_run):
    import anndata as ad
    import mudata as md

    workdir, _ = tiny_run
    out = workdir / "results" / "tiny"
    adata = ad.read_h5ad(out / "integrated.h5ad")
    cells = pd.read_csv(out / "rna_model" / "cells.csv", index_col=0)
    assert adata.n_obs == int(cells["pass_qc"].sum())
    latent = pd.read_parquet(out / "rna_model" / "latent.parquet")
    np.testing.assert_allclose(adata.obsm["X_rvi"], latent.loc[adata.obs_names].to_numpy(), rtol=1e-6)
    assert adata.obsm["X_umap"].shape == (adata.n_obs, 2)
    expected_obs = {"leiden", "rvi_cluster", "rvi_label_l1", "doublet_score", "total_counts", "library", "dataset"}
    assert expected_obs <= set(adata.obs)
    counts = adata.layers["counts"]
    assert np.allclose(counts.data, np.round(counts.data)) and adata.var["rvi_model_gene"].sum() == 100
    mdata = md.read_h5mu(out / "integrated.h5mu")
    assert set(mdata.mod) == {"rna", "atac"}
    assert {"X_rvi", "X_umap", "X_rvi_rna", "X_rvi_atac_slice", "X_rvi_rna_slice"} <= set(mdata.obsm)
    assert mdata.obsm["X_rvi"].shape[1] == 6 and "leiden_multimodal" in mdata.obs


@pytest.mark.slow
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


# ------------------------------------------------------------------------------------------------ sweeps
# config/test_tiny.yaml sweeps train_rna with two experiments: `baseline` ({}) and `ddp_random_val`
# (n_latent 3, random 20 % validation split, DDP on 2 CPU processes). `snakemake sweep` reuses the main
# run's upstream outputs, so only the sweep's own jobs run here.
SWEEP_JOBS = {"train_rna_sweep", "sweep_notebook", "sweep_metrics", "sweep"}


@pytest.fixture(scope="module")
def tiny_sweep(tiny_run):
    workdir, config = tiny_run
    proc = snakemake(workdir, config, "sweep")
    if proc.returncode != 0:
        logs = sorted(workdir.glob("results/tiny/logs/*sweep*/*.log"))
        text = "\n".join(f"== {p}\n{p.read_text()[-4000:]}" for p in logs)
        pytest.fail(f"snakemake sweep failed:\n{proc.stderr[-4000:]}\n{text}")
    return workdir, config, proc


@pytest.mark.slow
def test_sweep_runs_each_experiment_and_collects_one_row_each(tiny_sweep):
    workdir, config, proc = tiny_sweep
    # Only the sweep's jobs ran: the main pipeline's outputs were reused.
    assert set(job_counts(proc.stderr + proc.stdout)) == SWEEP_JOBS, proc.stderr[-3000:]
    out = workdir / "results" / "tiny"
    experiments = yaml.safe_load(config.read_text())["sweeps"]["experiments"]
    for name in experiments:
        folder = out / "sweeps" / name
        for path in ("model/model.pt", "latent.parquet", "umap.parquet", "metrics.csv", "history.csv", "cells.csv"):
            assert (folder / path).exists(), (name, path)
        assert (folder / "training_curves.png").exists() and (folder / "umap.png").exists()
        nb = json.loads((folder / "train_rna.ipynb").read_text())
        text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
        assert f"sweep {name}" in text  # the executed notebook says which experiment it shows
        assert (out / "logs" / "train_rna_sweep" / f"{name}.log").exists()
        assert (out / "benchmarks" / "train_rna_sweep" / f"{name}.tsv").exists()
    table = pd.read_csv(out / "sweeps" / "metrics.csv")
    assert list(table["experiment"]) == ["baseline", "ddp_random_val"]
    assert set(table["stage"]) == {"train_rna"}
    overrides = [c for c in table.columns if "." in c]
    assert overrides == [
        "model.n_latent",
        "training.accelerator",
        "training.devices",
        "training.strategy",
        "training.stratify",
        "training.validation_fraction",
    ]
    ddp = table.set_index("experiment").loc["ddp_random_val"]
    assert ddp["model.n_latent"] == 3 and ddp["training.devices"] == 2 and ddp["training.strategy"] == "ddp"
    assert table.set_index("experiment").loc["baseline", overrides].isna().all()
    assert {"batch_mixing_library", "n_epochs", "elbo_validation_last"} <= set(table.columns)
    assert (table["n_epochs"] == 3).all()
    # Each experiment trained with its own settings: latent size and validation split.
    assert pd.read_parquet(out / "sweeps" / "ddp_random_val" / "latent.parquet").shape[1] == 3
    assert pd.read_parquet(out / "sweeps" / "baseline" / "latent.parquet").shape[1] == 4
    cells = pd.read_csv(out / "sweeps" / "ddp_random_val" / "cells.csv", index_col=0)
    kept = cells[cells["pass_qc"]]
    assert abs((kept["split"] == "validation").mean() - 0.2) < 0.01
    # DDP: the second rank ran inside the job and left its log in the job's log, nothing in the workdir.
    log = (out / "logs" / "train_rna_sweep" / "ddp_random_val.log").read_text()
    assert "DDP: 2 processes" in log and "DDP rank 1: training done" in log
    assert not (workdir / "lightning_logs").exists()
    assert not list(out.rglob(".*.tmp-*"))


@pytest.mark.slow
def test_editing_one_experiment_reruns_only_that_experiment(tiny_sweep):
    workdir, config, _ = tiny_sweep
    assert job_counts(snakemake(workdir, config, "-n", "sweep").stdout) == {}
    raw = yaml.safe_load(config.read_text())
    raw["sweeps"]["experiments"]["ddp_random_val"]["model"]["n_latent"] = 2
    edited = workdir / "edited_sweep.yaml"
    edited.write_text(yaml.safe_dump(raw))
    proc = snakemake(workdir, edited, "-n", "sweep")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert job_counts(proc.stdout) == {"train_rna_sweep": 1, "sweep_notebook": 1, "sweep_metrics": 1, "sweep": 1}
    assert set(re.findall(r"wildcards: experiment=(\S+)", proc.stdout)) == {"ddp_random_val"}
    assert "reason: Params have changed" in proc.stdout
    # A change of the stage's own section reaches every experiment (they inherit it).
    raw = yaml.safe_load(config.read_text())
    raw["train_rna"]["embedding"]["n_neighbors"] = 12
    edited.write_text(yaml.safe_dump(raw))
    jobs = job_counts(snakemake(workdir, edited, "-n", "sweep").stdout)
    assert jobs["train_rna_sweep"] == 2, jobs
