# Shared wiring: validated config, output paths, sample-sheet lookups. Functions only (no rules).
# All logic lives in rvi.workflow (config, resources) and rvi.stages (what each rule does).

import re
from pathlib import Path

from rvi.workflow import (
    PATH_COLUMNS,
    ResourceTable,
    canonical,
    existing_inputs,
    libraries,
    load_config,
    read_samples,
    run_rule,
    sample_sheet_path,
    stage_params,
    work_relative,
)
from rvi.sweeps import sweep_experiments, sweep_params, sweep_stage

# Stops here, before any job, with a message naming every bad key/value or sample-sheet problem.
CFG = load_config(config)
RES = ResourceTable(CFG)
OUT = f"{CFG['results_dir']}/{CFG['study']}"
ATAC = "atac" in CFG["modalities"]
DEMO = CFG["demo_data"]["generate"]
DEMO_DIR = CFG["demo_data"]["outdir"]
NOTEBOOK_DIR = Path(workflow.basedir).parent / "notebooks"
GROUND_TRUTH = bool(CFG["ground_truth"]["cells"] or CFG["ground_truth"]["cres"])


def out(path):
    """A path under results/{study}/."""
    return f"{OUT}/{path}"


def log_path(name):
    return f"{OUT}/logs/{name}.log"


def bench_path(name):
    return f"{OUT}/benchmarks/{name}.tsv"


def params_of(stage):
    return stage_params(CFG, stage)


_SHEET = {}


def sheet():
    """The validated sample sheet; with demo data it exists only once the demo_data checkpoint ran."""
    if DEMO:
        # Raises IncompleteCheckpointException until the demo data are written; Snakemake then
        # re-evaluates the DAG, so every sample/library job appears after the checkpoint.
        checkpoints.demo_data.get()
    path = sample_sheet_path(CFG)
    if path not in _SHEET:
        _SHEET[path] = read_samples(CFG, path, check_files=not CFG["preview"])
    return _SHEET[path]


def sample_ids(wildcards=None):
    return [str(s) for s in sheet().index]


def library_ids(wildcards=None):
    return libraries(CFG, sheet())


def sample_row(wildcards):
    """The sample-sheet row of one sample as plain values (params: a changed row reruns that sample)."""
    row = sheet().loc[wildcards.sample]
    # Paths inside the work folder are relative, so a moved or copied work folder reruns nothing.
    values = {str(k): (None if v != v else (work_relative(v) if k in PATH_COLUMNS else v)) for k, v in row.items()}
    return canonical(values)


def sample_counts_input(wildcards):
    # Declared as input so a missing file on a real study is reported before any job runs.
    return existing_inputs(CFG, {"counts": work_relative(str(sheet().loc[wildcards.sample, "rna_path"]))})


def sample_atac_input(wildcards):
    # 10x_peaks reads the Peaks features of the sample's .h5; tiles/peaks count its fragments file
    # (read_samples has already checked that every sample has one).
    column = "rna_path" if CFG["load_atac"]["matrix"] == "10x_peaks" else "fragments_path"
    return existing_inputs(CFG, {"atac_source": work_relative(str(sheet().loc[wildcards.sample, column]))})


def per_sample(pattern):
    return lambda wildcards: expand(out(pattern), sample=sample_ids())


def per_library(pattern):
    return lambda wildcards: expand(out(pattern), library=library_ids())


def threads_of(stage):
    return RES.threads(stage)


# Files of the model directories (the saved model itself is a separate directory() output).
RNA_MODEL_DIR = out("rna_model/model")
MULTIMODAL_MODEL_DIR = out("multimodal_model/model")
RNA_MODEL = {
    "latent": out("rna_model/latent.parquet"),
    "umap": out("rna_model/umap.parquet"),
    "leiden": out("rna_model/leiden.csv"),
    "knn": out("rna_model/knn.npz"),
    "metrics": out("rna_model/metrics.csv"),
    "cells": out("rna_model/cells.csv"),
    "genes": out("rna_model/genes.csv"),
    "history": out("rna_model/history.csv"),
    "curves_png": out("rna_model/training_curves.png"),
    "umap_png": out("rna_model/umap.png"),
}
MULTIMODAL_MODEL = {
    "latent": out("multimodal_model/latent.parquet"),
    "modality_latents": out("multimodal_model/modality_latents.parquet"),
    "umap": out("multimodal_model/umap.parquet"),
    "leiden": out("multimodal_model/leiden.csv"),
    "knn": out("multimodal_model/knn.npz"),
    "metrics": out("multimodal_model/metrics.csv"),
    "attribution": out("multimodal_model/attribution.parquet"),
    "history": out("multimodal_model/history.csv"),
    "curves_png": out("multimodal_model/training_curves.png"),
    "umap_png": out("multimodal_model/umap.png"),
    "attribution_png": out("multimodal_model/attribution_scatter.png"),
}


def notebook(name):
    return out(f"notebooks/{name}.ipynb")


# Evaluation (rules in evaluate.smk): baselines on the RNA model's cells and genes, then every embedding.
BASELINES = list(CFG["evaluate"]["baselines"])
BASELINE_EMBEDDINGS = {name: out(f"baselines/{name}.parquet") for name in ("pca", "harmony", "scvi")}
EVALUATION = {
    "scib": out("metrics/scib.csv"),
    "headline": out("metrics/neighbourhood_headline.csv"),
    "composite": out("metrics/composite.csv"),
    "per_cell": out("metrics/per_cell"),
    "heatmap_png": out("metrics/metric_heatmap.png"),
    "correlation_png": out("metrics/correlation_umaps.png"),
    "isolation_png": out("metrics/isolation_bars.png"),
    "failure_png": out("metrics/failure_modes.png"),
}


TARGETS = {
    "qc": [
        out("rna.h5ad"),
        out("qc_summary.csv"),
        out("scrublet.csv"),
        notebook("merge_rna"),
        notebook("scrublet"),
    ],
    "atac": [out("atac.h5ad"), out("atac_qc.csv"), notebook("load_atac")] if ATAC else [],
    "rna": [
        RNA_MODEL_DIR,
        *RNA_MODEL.values(),
        out("annotation.csv"),
        out("annotation_purity.csv"),
        notebook("train_rna"),
        notebook("annotate"),
    ],
    "multimodal": (
        [
            out("cres.csv"),
            out("cre_heatmap.png"),
            MULTIMODAL_MODEL_DIR,
            *MULTIMODAL_MODEL.values(),
            notebook("select_cres"),
            notebook("train_multimodal"),
        ]
        if ATAC
        else []
    ),
    "ground_truth": [out("ground_truth_report.csv"), notebook("ground_truth_report")] if GROUND_TRUTH else [],
    "integrated": [out("integrated.h5ad"), *([out("integrated.h5mu")] if ATAC else [])],
    "evaluate": [*EVALUATION.values(), notebook("evaluate")],
    "report": [out("report.html")],
}

# The stage outputs each notebook reads (papermill parameters of the same names).
NOTEBOOK_INPUTS = {
    "merge_rna": {"rna": out("rna.h5ad"), "qc_summary": out("qc_summary.csv")},
    "scrublet": {"rna": out("rna.h5ad"), "scrublet": out("scrublet.csv")},
    "load_atac": {"atac_qc": out("atac_qc.csv")},
    "train_rna": {"rna": out("rna.h5ad"), **{k: RNA_MODEL[k] for k in ("umap", "leiden", "metrics", "cells", "history")}},
    "annotate": {
        "rna": out("rna.h5ad"),
        "annotation": out("annotation.csv"),
        "purity": out("annotation_purity.csv"),
        "umap": RNA_MODEL["umap"],
        "cells": RNA_MODEL["cells"],
    },
    "select_cres": {"cres": out("cres.csv"), "heatmap": out("cre_heatmap.png")},
    "train_multimodal": {
        **{k: MULTIMODAL_MODEL[k] for k in ("umap", "leiden", "metrics", "attribution", "history", "modality_latents")},
        "annotation": out("annotation.csv"),
        "rna_latent": RNA_MODEL["latent"],
    },
    "ground_truth_report": {"report": out("ground_truth_report.csv")},
    "evaluate": {k: v for k, v in EVALUATION.items()},
}


def notebook_params(wildcards):
    """Extra papermill parameters of one notebook (the QC notebook draws the cell-QC thresholds)."""
    if wildcards.notebook == "merge_rna":
        qc = CFG["train_rna"]["cell_qc"]
        return canonical({"qc_thresholds": {"default": qc["default"], **qc["per_dataset"]}})
    return {}


def notebook_inputs(wildcards):
    return {"template": str(NOTEBOOK_DIR / f"{wildcards.notebook}.ipynb"), **NOTEBOOK_INPUTS[wildcards.notebook]}


def atac_reference_inputs(wildcards):
    """Chromosome sizes / gene annotation files of the ATAC config (inputs, so they are checked)."""
    refs = {}
    for key in ("chrom_sizes", "gene_annotation"):
        if CFG["load_atac"][key]:
            refs[key] = CFG["load_atac"][key]
    return existing_inputs(CFG, refs)


def train_rna_qc_inputs(wildcards):
    # Fragment thresholds need the ATAC per-cell QC; RNA-only studies train without it.
    return {"atac_qc": out("atac_qc.csv")} if ATAC else {}


def ground_truth_inputs(wildcards):
    gt = CFG["ground_truth"]
    inputs = {}
    if gt["cells"]:
        inputs |= {
            "truth": gt["cells"],
            "scrublet": out("scrublet.csv"),
            "annotation": out("annotation.csv"),
            "rna": out("rna.h5ad"),
        }
    if gt["cres"]:
        inputs |= {"cre_truth": gt["cres"], "cres": out("cres.csv")}
    if gt["pairs"] and gt["cells"] and ATAC:
        inputs |= {
            "pairs": gt["pairs"],
            "rna_latent": RNA_MODEL["latent"],
            "multimodal_latent": MULTIMODAL_MODEL["latent"],
            "attribution": MULTIMODAL_MODEL["attribution"],
        }
    return inputs


# --------------------------------------------------------------------------------------------------
# Sweeps (config `sweeps:`, rules in sweeps.smk): one training job per experiment under
# results/{study}/sweeps/{experiment}/, with the files of the swept stage's own model folder.
# --------------------------------------------------------------------------------------------------

SWEEP_STAGE = sweep_stage(CFG)
SWEEP_EXPERIMENTS = sweep_experiments(CFG)
SWEEP_PARAMS = {name: sweep_params(CFG, name) for name in SWEEP_EXPERIMENTS}
_SWEEP_MAIN = {
    "train_rna": (RNA_MODEL, "rna_model"),
    "train_multimodal": (MULTIMODAL_MODEL, "multimodal_model"),
}


def sweep_out(name, experiment="{experiment}"):
    """A path under results/{study}/sweeps/{experiment}/."""
    return out(f"sweeps/{experiment}/{name}")


if SWEEP_STAGE:
    # The experiment's files: the same names as the stage's own model folder.
    _main_files, _main_folder = _SWEEP_MAIN[SWEEP_STAGE]
    SWEEP_MODEL = {k: sweep_out(v[len(out(_main_folder)) + 1 :]) for k, v in _main_files.items()}
    SWEEP_MODEL_DIR = sweep_out("model")
    SWEEP_NOTEBOOK = sweep_out(f"{SWEEP_STAGE}.ipynb")
    # The stage notebook's inputs, with the stage's model files swapped for the experiment's.
    _main_keys = {path: key for key, path in _main_files.items()}
    SWEEP_NOTEBOOK_INPUTS = {
        k: SWEEP_MODEL[_main_keys[v]] if v in _main_keys else v for k, v in NOTEBOOK_INPUTS[SWEEP_STAGE].items()
    }
    _SWEEP_WILDCARD = "|".join(re.escape(name) for name in SWEEP_EXPERIMENTS)
    TARGETS["sweep"] = [
        out("sweeps/metrics.csv"),
        *(SWEEP_NOTEBOOK.format(experiment=name) for name in SWEEP_EXPERIMENTS),
    ]


def sweep_cfg(wildcards):
    return SWEEP_PARAMS[wildcards.experiment]


def sweep_notebook_inputs(wildcards):
    files = {k: v.format(experiment=wildcards.experiment) for k, v in SWEEP_NOTEBOOK_INPUTS.items()}
    return {"template": str(NOTEBOOK_DIR / f"{SWEEP_STAGE}.ipynb"), **files}


def sweep_targets(wildcards):
    if not SWEEP_STAGE:
        raise ValueError(
            f"config of study {CFG['study']!r} has no sweep: add a 'sweeps' section with 'stage' (train_rna or "
            "train_multimodal) and 'experiments' ({name: overrides of that stage's section}); see docs/workflow.md"
        )
    return TARGETS["sweep"]


def integrated_inputs(wildcards):
    """The RNA model's results, plus the multimodal model's and the ATAC counts when the study has ATAC."""
    inputs = {
        "rna": out("rna.h5ad"),
        "annotation": out("annotation.csv"),
        **{k: RNA_MODEL[k] for k in ("cells", "genes", "latent", "umap", "leiden")},
    }
    if ATAC:
        inputs["atac"] = out("atac.h5ad")
        inputs |= {f"mm_{k}": MULTIMODAL_MODEL[k] for k in ("latent", "modality_latents", "umap", "leiden")}
    return inputs


def baseline_params(name):
    """The evaluate settings one baseline reads (a change elsewhere in evaluate: does not retrain it)."""
    spec = CFG["evaluate"]
    own = {"pca": ["pca"], "harmony": ["harmony"], "scvi": ["scvi"]}[name]
    return canonical({"evaluate": {**{k: spec[k] for k in own}, "seed": spec["seed"]}, "covariates": CFG["covariates"]})


def evaluate_inputs(wildcards):
    """Counts and cells of the RNA model, its UMAP (the layout of the correlation UMAPs), every embedding."""
    inputs = {
        "rna": out("rna.h5ad"),
        "cells": RNA_MODEL["cells"],
        "umap": RNA_MODEL["umap"],
        "emb_rvi_rna": RNA_MODEL["latent"],
    }
    if ATAC:
        inputs["emb_rvi_multimodal"] = MULTIMODAL_MODEL["latent"]
        inputs["modality_latents"] = MULTIMODAL_MODEL["modality_latents"]
    inputs |= {f"emb_{name}": BASELINE_EMBEDDINGS[name] for name in BASELINES}
    for name, source in CFG["evaluate"]["external"].items():
        path = source if isinstance(source, str) else source["path"]
        inputs[f"ext_{name}"] = path.rsplit(":", 1)[0] if ".h5ad:" in path else path
    return inputs


def report_params():
    return canonical({k: CFG[k] for k in ("study", "modalities", "covariates", "labels")})


def report_inputs(wildcards):
    """Every stage's key outputs that the study report shows."""
    inputs = {
        "rna": out("rna.h5ad"),
        "qc_summary": out("qc_summary.csv"),
        "cells": RNA_MODEL["cells"],
        "rna_curves_png": RNA_MODEL["curves_png"],
        "rna_umap_png": RNA_MODEL["umap_png"],
        "purity": out("annotation_purity.csv"),
        **{k: v for k, v in EVALUATION.items()},
    }
    if ATAC:
        inputs |= {
            "atac_qc": out("atac_qc.csv"),
            "cre_heatmap": out("cre_heatmap.png"),
            "mm_curves_png": MULTIMODAL_MODEL["curves_png"],
            "mm_umap_png": MULTIMODAL_MODEL["umap_png"],
            "attribution_png": MULTIMODAL_MODEL["attribution_png"],
        }
    if GROUND_TRUTH:
        inputs["ground_truth"] = out("ground_truth_report.csv")
    return inputs
