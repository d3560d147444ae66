"""The stage registry: the one list of the workflow's stages and what each one is.

Everything that needs to know the stages reads it: the schema (:mod:`rvi.workflow.schema` adds a
``resources.<stage>`` entry per stage, the sweepable stages and any section schema declared here), the
start-time checks, :class:`~rvi.workflow.resources.ResourceTable`, :func:`~rvi.workflow.params.stage_params`,
the rule runner (:func:`~rvi.workflow.runner.run_rule`), the sweeps and the Snakefile's ``TARGETS``,
output paths and notebook inputs (``workflow/rules/common.smk``).

Adding a stage touches four places: a :class:`Stage` entry in :data:`REGISTRY`, one rule (in
``workflow/rules/*.smk``), one function (in :mod:`rvi.stages`) and, when it has one, its notebook (in
``notebooks/``). docs/workflow.md ("Adding a stage") has the recipe.

Stage functions are named by ``"module:function"`` strings and imported only when a job runs them: parsing
the Snakefile stays fast, and nothing in :mod:`rvi.workflow` imports :mod:`rvi.stages` (which never
imports the workflow back).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "GPU_STAGES",
    "REGISTRY",
    "STAGES",
    "TRAINING_STAGES",
    "Output",
    "Stage",
    "active_stages",
    "get_stage",
    "resource_stages",
    "stage_active",
    "stage_outputs",
]


@dataclass(frozen=True)
class Output:
    """One output file of a stage, relative to ``results/{study}/`` (a trailing ``/`` marks a directory).

    ``needs``: modalities the file needs (an RNA-only study's stage does not write it). Paths with
    wildcards (``rna/{sample}.h5ad``) are per-sample / per-library files: never a target themselves.
    """

    path: str
    needs: tuple[str, ...] = ()

    @property
    def is_dir(self) -> bool:
        return self.path.endswith("/")

    @property
    def has_wildcards(self) -> bool:
        return "{" in self.path


def _outputs(spec: Mapping[str, str | Output]) -> Mapping[str, Output]:
    return MappingProxyType({k: v if isinstance(v, Output) else Output(v) for k, v in spec.items()})


@dataclass(frozen=True)
class Stage:
    """One stage of the workflow (one rule, except sweeps and per-wildcard helpers).

    Attributes
    ----------
    name
        The stage (and its rule's) name; ``run_rule(name, ...)`` runs it.
    function
        ``"module:function"`` the rule runs; called with the rule's named input/output/params as
        keywords and ``threads``.
    section
        Its own top-level config section (``name`` by default; ``None``: none). Part of its params.
    reads
        Shared config sections it also reads (part of its params, so editing them reruns it).
    section_schema
        JSON schema of ``section`` when the schema file (workflow/schemas/config.schema.yaml) has none:
        added to the schema at load time. ``None`` for the sections the schema file documents.
    gpu
        A GPU stage: its resources default to ``gpu: 1``, it alone may ask for GPUs, and a cluster study
        needs a ``resources.<name>`` entry of its own.
    trains
        A training stage (``model`` / ``training`` / ``embedding`` / ``metrics`` section): runs in an
        interruptible child process, may train with DDP, gets the device checks, can be swept.
    model
        ``"module:Class"`` of the trained model (training stages): ``model.module_kwargs`` is checked
        against its constructor (parsed, not imported).
    outputs
        Rule output name -> :class:`Output` (or a plain path), relative to ``results/{study}/``. The rule
        declares ``output: **OUTPUTS[name]``; ``{}``: the rule declares its own (demo data, notebooks).
    target
        The ``TARGETS`` group (``snakemake <group>``) that collects its wildcard-free outputs, its
        ``extra_targets`` and its notebook; ``None``: none.
    extra_targets
        ``cfg -> [paths under results/{study}/]`` added to its target group: the files of outputs with
        wildcards that a study wants (e.g. one per method named in the config). None: none.
    notebook
        Name of its notebook (``notebooks/<name>.ipynb``, rendered to ``results/{study}/notebooks/``).
    notebook_inputs
        Papermill parameter -> path under ``results/{study}/`` the notebook reads.
    notebook_params
        ``cfg -> dict`` of extra papermill parameters (e.g. thresholds to draw), or None.
    needs
        Modalities the stage needs (a study without them never runs it).
    when
        ``cfg -> bool``: whether the study runs it (besides ``needs``); None = always.
    resources
        The ``resources.<entry>`` it uses (default: its own; helpers share their stage's entry).
    """

    name: str
    function: str
    section: str | None = ""
    reads: tuple[str, ...] = ()
    section_schema: Mapping[str, Any] | None = None
    gpu: bool = False
    trains: bool = False
    model: str | None = None
    outputs: Mapping[str, Output] = field(default_factory=dict)
    target: str | None = None
    extra_targets: Callable[[Mapping], Sequence[str]] | None = None
    notebook: str | None = None
    notebook_inputs: Mapping[str, str] = field(default_factory=dict)
    notebook_params: Callable[[Mapping], dict] | None = None
    needs: tuple[str, ...] = ()
    when: Callable[[Mapping], bool] | None = None
    resources: str | None = None

    def __post_init__(self):
        if self.section == "":
            object.__setattr__(self, "section", self.name)
        if self.resources is None:
            object.__setattr__(self, "resources", self.name)
        object.__setattr__(self, "outputs", _outputs(self.outputs))
        object.__setattr__(self, "notebook_inputs", MappingProxyType(dict(self.notebook_inputs)))

    @property
    def model_dir(self) -> str | None:
        """The folder holding all of a training stage's outputs (``rna_model``); sweeps mirror it."""
        paths = [o.path.rstrip("/") for o in self.outputs.values()]
        if not paths:
            return None
        folder = os.path.commonpath(paths)
        return folder or None


def _cell_qc_thresholds(cfg: Mapping) -> dict:
    qc = cfg["cell_qc"]
    return {"qc_thresholds": {"default": qc["default"], **qc["per_dataset"]}}


_RNA_MODEL = {
    "latent": "rna_model/latent.parquet",
    "umap": "rna_model/umap.parquet",
    "leiden": "rna_model/leiden.csv",
    "knn": "rna_model/knn.npz",
    "metrics": "rna_model/metrics.csv",
    "cells": "rna_model/cells.csv",
    "genes": "rna_model/genes.csv",
    "history": "rna_model/history.csv",
    "curves_png": "rna_model/training_curves.png",
    "umap_png": "rna_model/umap.png",
    "model": "rna_model/model/",
}
_MULTIMODAL_MODEL = {
    "latent": "multimodal_model/latent.parquet",
    "modality_latents": "multimodal_model/modality_latents.parquet",
    "umap": "multimodal_model/umap.parquet",
    "leiden": "multimodal_model/leiden.csv",
    "knn": "multimodal_model/knn.npz",
    "metrics": "multimodal_model/metrics.csv",
    "attribution": "multimodal_model/attribution.parquet",
    "history": "multimodal_model/history.csv",
    "curves_png": "multimodal_model/training_curves.png",
    "umap_png": "multimodal_model/umap.png",
    "attribution_png": "multimodal_model/attribution_scatter.png",
    "model": "multimodal_model/model/",
}

_EVALUATION = {
    "scib": "metrics/scib.csv",
    "headline": "metrics/neighbourhood_headline.csv",
    "composite": "metrics/composite.csv",
    "per_cell": "metrics/per_cell/",
    "heatmap_png": "metrics/metric_heatmap.png",
    "correlation_png": "metrics/correlation_umaps.png",
    "isolation_png": "metrics/isolation_bars.png",
    "failure_png": "metrics/failure_modes.png",
}

#: Every stage, in DAG order.
REGISTRY: tuple[Stage, ...] = (
    Stage(
        "demo_data",
        "rvi.stages.inputs:demo_data",
        when=lambda cfg: bool(cfg["demo_data"]["generate"]),
    ),
    Stage(
        "load_rna",
        "rvi.stages.inputs:load_rna",
        reads=("covariates", "labels"),
        outputs={"h5ad": "rna/{sample}.h5ad"},
    ),
    Stage(
        "merge_rna",
        "rvi.stages.inputs:merge_rna",
        reads=("covariates",),
        outputs={"rna": "rna.h5ad", "qc_summary": "qc_summary.csv"},
        target="qc",
        notebook="merge_rna",
        notebook_inputs={"rna": "rna.h5ad", "qc_summary": "qc_summary.csv"},
    ),
    Stage(
        "scrublet",
        "rvi.stages.inputs:scrublet",
        reads=("covariates",),
        outputs={"scores": "scrublet/{library}.csv"},
        target="qc",
        notebook="scrublet",
        notebook_inputs={"rna": "rna.h5ad", "scrublet": "scrublet.csv"},
    ),
    Stage(
        "merge_scrublet",
        "rvi.stages.inputs:merge_scrublet",
        section=None,
        outputs={"scrublet": "scrublet.csv"},
        target="qc",
        resources="scrublet",
    ),
    Stage(
        "load_atac",
        "rvi.stages.inputs:load_atac",
        reads=("covariates",),
        outputs={"h5ad": "atac/{sample}.h5ad"},
        needs=("atac",),
    ),
    Stage(
        "merge_atac",
        "rvi.stages.inputs:merge_atac",
        section=None,
        reads=("covariates",),
        outputs={"atac": "atac.h5ad", "atac_qc": "atac_qc.csv"},
        target="atac",
        notebook="load_atac",
        notebook_inputs={"atac_qc": "atac_qc.csv"},
        needs=("atac",),
    ),
    Stage(
        "cell_qc",
        "rvi.stages.cell_qc:cell_qc",
        reads=("covariates",),
        outputs={"table": "cell_qc.csv"},
        target="rna",
        notebook="cell_qc",
        notebook_inputs={"cell_qc": "cell_qc.csv"},
        notebook_params=_cell_qc_thresholds,
    ),
    Stage(
        "train_rna",
        "rvi.stages.models:train_rna",
        reads=("covariates", "labels"),
        gpu=True,
        trains=True,
        model="rvi.models._rna:AmbientRegularizedSCVI",
        outputs=_RNA_MODEL,
        target="rna",
        notebook="train_rna",
        notebook_inputs={
            "rna": "rna.h5ad",
            **{k: _RNA_MODEL[k] for k in ("umap", "leiden", "metrics", "cells", "history")},
        },
    ),
    Stage(
        "annotate",
        "rvi.stages.labels:annotate",
        reads=("covariates", "labels"),
        outputs={"annotation": "annotation.csv", "purity": "annotation_purity.csv"},
        target="rna",
        notebook="annotate",
        notebook_inputs={
            "rna": "rna.h5ad",
            "annotation": "annotation.csv",
            "purity": "annotation_purity.csv",
            "umap": _RNA_MODEL["umap"],
            "cells": _RNA_MODEL["cells"],
        },
    ),
    Stage(
        "select_cres",
        "rvi.stages.labels:select_cres",
        reads=("labels",),
        outputs={"cres": "cres.csv", "heatmap": "cre_heatmap.png"},
        target="multimodal",
        notebook="select_cres",
        notebook_inputs={"cres": "cres.csv", "heatmap": "cre_heatmap.png"},
        needs=("atac",),
    ),
    Stage(
        "train_multimodal",
        "rvi.stages.models:train_multimodal",
        reads=("covariates", "labels"),
        gpu=True,
        trains=True,
        model="rvi.models._multimodal:RegularizedMultimodalVI",
        outputs=_MULTIMODAL_MODEL,
        target="multimodal",
        notebook="train_multimodal",
        notebook_inputs={
            **{
                k: _MULTIMODAL_MODEL[k]
                for k in ("latent", "umap", "leiden", "metrics", "attribution", "history", "modality_latents")
            },
            "annotation": "annotation.csv",
            "rna_latent": _RNA_MODEL["latent"],
        },
        needs=("atac",),
    ),
    Stage(
        "integrated_output",
        "rvi.stages.export:integrated_output",
        section=None,
        outputs={"h5ad": "integrated.h5ad", "h5mu": Output("integrated.h5mu", needs=("atac",))},
        target="integrated",
    ),
    Stage("notebook", "rvi.stages.report:notebook", section=None),
    Stage(
        "ground_truth_report",
        "rvi.stages.report:ground_truth_report",
        section="ground_truth",
        reads=("labels", "select_cres", "covariates"),
        outputs={"report": "ground_truth_report.csv", "confusion": "ground_truth_confusion.csv"},
        target="ground_truth",
        notebook="ground_truth_report",
        notebook_inputs={"report": "ground_truth_report.csv", "confusion": "ground_truth_confusion.csv"},
        when=lambda cfg: bool(cfg["ground_truth"]["cells"] or cfg["ground_truth"]["cres"]),
    ),
    # Evaluation (docs/metrics_spec.md): baselines on the RNA model's cells and genes, every embedding
    # scored side by side (`snakemake evaluate`), then the one-file study report (`snakemake report`).
    # The baselines' rules pass only their own part of the evaluate section as params (evaluate.smk).
    Stage(
        "baseline_pca",
        "rvi.stages.evaluate:baseline_pca",
        section="evaluate",
        reads=("covariates",),
        outputs={"embedding": "baselines/pca.parquet", "info": "baselines/pca_info.csv"},
        target="evaluate",
        # Harmony corrects these components, so they are computed whenever Harmony runs.
        when=lambda cfg: bool({"pca", "harmony"} & set(cfg["evaluate"]["baselines"])),
    ),
    Stage(
        "baseline_harmony",
        "rvi.stages.evaluate:baseline_harmony",
        section="evaluate",
        reads=("covariates",),
        outputs={"embedding": "baselines/harmony.parquet"},
        target="evaluate",
        when=lambda cfg: "harmony" in cfg["evaluate"]["baselines"],
    ),
    Stage(
        "baseline_scvi",
        "rvi.stages.evaluate:baseline_scvi",
        section="evaluate",
        reads=("covariates",),
        gpu=True,
        outputs={"embedding": "baselines/scvi.parquet", "history": "baselines/scvi_history.csv"},
        target="evaluate",
        when=lambda cfg: "scvi" in cfg["evaluate"]["baselines"],
    ),
    Stage(
        "score_embeddings",
        "rvi.stages.evaluate:evaluate",
        section="evaluate",
        reads=("covariates", "labels"),
        outputs=_EVALUATION,
        target="evaluate",
        notebook="evaluate",
        notebook_inputs={k: v.rstrip("/") for k, v in _EVALUATION.items()},
    ),
    Stage(
        "study_report",
        "rvi.stages.evaluate:study_report",
        section=None,
        reads=("study", "modalities", "covariates", "labels"),
        outputs={"report": "report.html"},
        target="report",
    ),
    Stage("sweep_metrics", "rvi.stages.report:sweep_metrics", section=None, resources="notebook"),
)

_BY_NAME = {s.name: s for s in REGISTRY}
if len(_BY_NAME) != len(REGISTRY):
    raise RuntimeError("duplicate stage names in rvi.workflow.registry.REGISTRY")


def get_stage(name: str) -> Stage:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r} (stages: {sorted(_BY_NAME)})") from None


def resource_stages() -> tuple[str, ...]:
    """Stages with a ``resources.<stage>`` entry of their own, in DAG order."""
    return tuple(s.name for s in REGISTRY if s.resources == s.name)


#: Stages with their own resource entry (and config params), in DAG order.
STAGES = resource_stages()
#: Stages that may ask for GPUs (resources default to ``gpu: 1``).
GPU_STAGES = tuple(s.name for s in REGISTRY if s.gpu)
#: Training stages (model / training / embedding / metrics sections): child process, DDP, sweeps.
TRAINING_STAGES = tuple(s.name for s in REGISTRY if s.trains)


def stage_active(stage: str | Stage, cfg: Mapping) -> bool:
    """Whether a study runs the stage (its modalities are configured and its ``when`` holds)."""
    st = stage if isinstance(stage, Stage) else get_stage(stage)
    if not set(st.needs) <= set(cfg["modalities"]):
        return False
    return st.when is None or bool(st.when(cfg))


def active_stages(cfg: Mapping) -> list[str]:
    """The resource stages a study runs (the others never submit a job, so their resources are not checked)."""
    return [s for s in STAGES if stage_active(s, cfg)]


def stage_outputs(stage: str, cfg: Mapping) -> dict[str, Output]:
    """The outputs of ``stage`` a study writes (those needing a modality it lacks are left out)."""
    modalities = set(cfg["modalities"])
    return {k: o for k, o in get_stage(stage).outputs.items() if set(o.needs) <= modalities}
