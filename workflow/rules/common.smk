# Shared wiring: validated config, output paths, sample-sheet lookups. Functions only (no rules).
# All logic lives in rvi.workflow (config, resources, the stage registry) and rvi.stages (what each rule does).

import re
from pathlib import Path

from rvi.workflow import (
    PATH_COLUMNS,
    REGISTRY,
    canonical,
    existing_inputs,
    get_stage,
    libraries,
    load_study,
    read_samples,
    run_rule,
    sample_sheet_path,
    stage_params,
    work_relative,
)
from rvi.workflow.registry import stage_active, stage_outputs
from rvi.workflow.sweeps import sweep_experiments, sweep_params, sweep_stage

# Stops here, before any job, with a message naming every bad key/value or sample-sheet problem.
CFG, RES = load_study(config)
OUT = f"{CFG['results_dir']}/{CFG['study']}"
ATAC = "atac" in CFG["modalities"]
DEMO = CFG["demo_data"]["generate"]
DEMO_DIR = CFG["demo_data"]["outdir"]
NOTEBOOK_DIR = Path(workflow.basedir).parent / "notebooks"
GROUND_TRUTH = stage_active("ground_truth_report", CFG)


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


def notebook(name):
    return out(f"notebooks/{name}.ipynb")


def _rule_output(o):
    return directory(out(o.path.rstrip("/"))) if o.is_dir else out(o.path)


# Each stage's outputs from the registry, as its Snakemake rule declares them with
# `output: **OUTPUTS["<stage>"]` (outputs needing a modality the study lacks are left out).
# FILES: the same paths as plain strings (inputs of other rules).
OUTPUTS = {s.name: {k: _rule_output(o) for k, o in stage_outputs(s.name, CFG).items()} for s in REGISTRY}
FILES = {s.name: {k: out(o.path.rstrip("/")) for k, o in s.outputs.items()} for s in REGISTRY}
RNA_MODEL = FILES["train_rna"]
MULTIMODAL_MODEL = FILES["train_multimodal"]

# `snakemake <group>` targets: the wildcard-free outputs, extra targets and notebook of every stage the study runs.
TARGETS = {}
for _stage in REGISTRY:
    if _stage.target is None:
        continue
    _files = TARGETS.setdefault(_stage.target, [])
    if stage_active(_stage, CFG):
        _files += [out(o.path.rstrip("/")) for o in stage_outputs(_stage.name, CFG).values() if not o.has_wildcards]
        _files += [out(path) for path in (_stage.extra_targets(CFG) if _stage.extra_targets else [])]
        _files += [notebook(_stage.notebook)] if _stage.notebook else []
# Every group (`rule all`); the sweep group below is run on request only.
ALL_TARGETS = [path for files in TARGETS.values() for path in files]

# The stage outputs each notebook reads (papermill parameters of the same names), and its stage.
NOTEBOOK_STAGE = {s.notebook: s for s in REGISTRY if s.notebook}
NOTEBOOK_INPUTS = {name: {k: out(v) for k, v in s.notebook_inputs.items()} for name, s in NOTEBOOK_STAGE.items()}


def notebook_params(wildcards):
    """Extra papermill parameters of one notebook (its registry entry's notebook_params)."""
    extra = NOTEBOOK_STAGE[wildcards.notebook].notebook_params
    return canonical(extra(CFG)) if extra else {}


def notebook_inputs(wildcards):
    return {"template": str(NOTEBOOK_DIR / f"{wildcards.notebook}.ipynb"), **NOTEBOOK_INPUTS[wildcards.notebook]}


def atac_reference_inputs(wildcards):
    """Chromosome sizes / gene annotation files of the ATAC config (inputs, so they are checked)."""
    refs = {}
    for key in ("chrom_sizes", "gene_annotation"):
        if CFG["load_atac"][key]:
            refs[key] = CFG["load_atac"][key]
    return existing_inputs(CFG, refs)


def cell_qc_inputs(wildcards):
    # Fragment thresholds need the ATAC per-cell QC; RNA-only studies do without it.
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
# The experiment wildcard matches the configured names only (a global constraint of the Snakefile).
SWEEP_WILDCARD = "|".join(re.escape(name) for name in SWEEP_EXPERIMENTS) or "(?!)"


def sweep_out(name, experiment="{experiment}"):
    """A path under results/{study}/sweeps/{experiment}/."""
    return out(f"sweeps/{experiment}/{name}")


if SWEEP_STAGE:
    # The experiment's files: the same names as the stage's own model folder.
    _main_files, _main_folder = FILES[SWEEP_STAGE], get_stage(SWEEP_STAGE).model_dir
    SWEEP_MODEL = {k: sweep_out(v[len(out(_main_folder)) + 1 :]) for k, v in _main_files.items()}
    # The outputs of the experiment's job (directories marked as the stage's own ones are).
    SWEEP_OUTPUTS = {
        k: directory(SWEEP_MODEL[k]) if o.is_dir else SWEEP_MODEL[k]
        for k, o in stage_outputs(SWEEP_STAGE, CFG).items()
    }
    SWEEP_LOG = log_path(f"{SWEEP_STAGE}_sweep/{{experiment}}")
    SWEEP_BENCH = bench_path(f"{SWEEP_STAGE}_sweep/{{experiment}}")
    SWEEP_NOTEBOOK = sweep_out(f"{SWEEP_STAGE}.ipynb")
    # The stage notebook's inputs, with the stage's model files swapped for the experiment's.
    _main_keys = {path: key for key, path in _main_files.items()}
    SWEEP_NOTEBOOK_INPUTS = {
        k: SWEEP_MODEL[_main_keys[v]] if v in _main_keys else v for k, v in NOTEBOOK_INPUTS[SWEEP_STAGE].items()
    }
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
            f"config of study {CFG['study']!r} has no sweep: add a 'sweeps' section with 'stage' (a training stage: "
            f"{' or '.join(s.name for s in REGISTRY if s.trains)}) and 'experiments' ({{name: overrides of that "
            "stage's section}}); see docs/workflow.md"
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
    return canonical({"evaluate": {name: spec[name], "seed": spec["seed"]}, "covariates": CFG["covariates"]})


def evaluate_inputs(wildcards):
    """Counts and cells of the RNA model, its UMAP (the layout of the correlation UMAPs), every embedding;
    external embedding files as ext_<name> (a changed file reruns the stage)."""
    inputs = {
        "rna": out("rna.h5ad"),
        "cells": RNA_MODEL["cells"],
        "umap": RNA_MODEL["umap"],
        "emb_rvi_rna": RNA_MODEL["latent"],
    }
    if ATAC:
        inputs["emb_rvi_multimodal"] = MULTIMODAL_MODEL["latent"]
        inputs["modality_latents"] = MULTIMODAL_MODEL["modality_latents"]
    inputs |= {f"emb_{name}": FILES[f"baseline_{name}"]["embedding"] for name in CFG["evaluate"]["baselines"]}
    for name, source in CFG["evaluate"]["external"].items():
        path = source if isinstance(source, str) else source["path"]
        inputs[f"ext_{name}"] = path.rsplit(":", 1)[0] if ".h5ad:" in path else path
    return inputs


def report_inputs(wildcards):
    """Every stage's key outputs that the study report shows."""
    inputs = {
        "rna": out("rna.h5ad"),
        "qc_summary": FILES["merge_rna"]["qc_summary"],
        "cells": RNA_MODEL["cells"],
        "rna_curves_png": RNA_MODEL["curves_png"],
        "rna_umap_png": RNA_MODEL["umap_png"],
        "purity": FILES["annotate"]["purity"],
        **FILES["score_embeddings"],
    }
    if ATAC:
        inputs |= {
            "atac_qc": FILES["merge_atac"]["atac_qc"],
            "cre_heatmap": FILES["select_cres"]["heatmap"],
            "mm_curves_png": MULTIMODAL_MODEL["curves_png"],
            "mm_umap_png": MULTIMODAL_MODEL["umap_png"],
            "attribution_png": MULTIMODAL_MODEL["attribution_png"],
        }
    if stage_active("ground_truth_report", CFG):
        inputs["ground_truth"] = FILES["ground_truth_report"]["report"]
    return inputs
