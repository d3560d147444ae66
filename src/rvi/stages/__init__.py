"""One function per Snakemake rule: paths + params in, outputs written atomically.

The rules call these through :func:`rvi.workflow.run_rule` with their named input/output/params as
keywords (``cfg`` is :func:`rvi.workflow.stage_params` of the stage: its own config section plus the
shared sections it reads). Each function can be called directly from pytest or a notebook.
Heavy libraries are imported inside the functions so that parsing the Snakefile stays fast.

Modules: :mod:`~rvi.stages.inputs` (demo data, loading, merges, Scrublet),
:mod:`~rvi.stages.models` (train_rna, train_multimodal and their helpers),
:mod:`~rvi.stages.labels` (annotate, select_cres), :mod:`~rvi.stages.export` (the integrated .h5ad / .h5mu),
:mod:`~rvi.stages.report` (ground truth, notebooks), :mod:`~rvi.stages.evaluate` (baselines, evaluate, the
HTML study report).
"""

from rvi.stages.evaluate import baseline_harmony, baseline_pca, baseline_scvi, evaluate, study_report
from rvi.stages.export import integrated_output
from rvi.stages.inputs import demo_data, load_atac, load_rna, merge_atac, merge_rna, merge_scrublet, scrublet
from rvi.stages.labels import annotate, annotation_groups, select_cres
from rvi.stages.models import (
    build_multiome,
    cell_qc_table,
    finest_label,
    history_frame,
    integration_metrics,
    knn_umap_leiden,
    load_knn,
    plot_training_curves,
    plot_umaps,
    save_knn,
    select_genes,
    stratified_split,
    train_multimodal,
    train_rna,
)
from rvi.stages.report import ground_truth_report, notebook, sweep_metrics, sweep_table

STAGE_FUNCTIONS = {
    "demo_data": demo_data,
    "load_rna": load_rna,
    "merge_rna": merge_rna,
    "scrublet": scrublet,
    "merge_scrublet": merge_scrublet,
    "load_atac": load_atac,
    "merge_atac": merge_atac,
    "train_rna": train_rna,
    "annotate": annotate,
    "select_cres": select_cres,
    "train_multimodal": train_multimodal,
    "integrated_output": integrated_output,
    "ground_truth_report": ground_truth_report,
    "notebook": notebook,
    "sweep_metrics": sweep_metrics,
    "baseline_pca": baseline_pca,
    "baseline_harmony": baseline_harmony,
    "baseline_scvi": baseline_scvi,
    "evaluate": evaluate,
    "report": study_report,
}

__all__ = [
    "STAGE_FUNCTIONS",
    "annotate",
    "annotation_groups",
    "baseline_harmony",
    "baseline_pca",
    "baseline_scvi",
    "build_multiome",
    "cell_qc_table",
    "demo_data",
    "evaluate",
    "finest_label",
    "ground_truth_report",
    "history_frame",
    "integrated_output",
    "integration_metrics",
    "knn_umap_leiden",
    "load_atac",
    "load_knn",
    "load_rna",
    "merge_atac",
    "merge_rna",
    "merge_scrublet",
    "notebook",
    "plot_training_curves",
    "plot_umaps",
    "save_knn",
    "scrublet",
    "select_cres",
    "select_genes",
    "stratified_split",
    "study_report",
    "sweep_metrics",
    "sweep_table",
    "train_multimodal",
    "train_rna",
]
