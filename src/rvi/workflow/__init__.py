"""Workflow plumbing: everything the Snakefile needs beyond wiring, in plain Python that pytest can check.

Modules, lowest first (each imports only those above it; none imports :mod:`rvi.stages`):

* :mod:`~rvi.workflow.registry`: the stage registry, the one list of stages and what each one is
  (function, config section, GPU or CPU, notebook, outputs, targets, modalities).
* :mod:`~rvi.workflow.schema`: the config schema (plus the registry's additions), validation with
  defaults, :class:`ConfigError`.
* :mod:`~rvi.workflow.resources`: :class:`ResourceTable` (Snakemake / LSF / SLURM resources per stage)
  and the start-time checks of the ``resources`` table.
* :mod:`~rvi.workflow.model_kwargs`, :mod:`~rvi.workflow.checks`: cross-key checks (label levels,
  modalities, devices, model / training-plan keyword arguments).
* :mod:`~rvi.workflow.samples`: the sample sheet and the lookups rules build on it.
* :mod:`~rvi.workflow.params`: the params of each stage's rule.
* :mod:`~rvi.workflow.sweeps`: experiment sweeps on a training stage.
* :mod:`~rvi.workflow.config`: :func:`load_study` / :func:`load_config`, all of the above at start.
* :mod:`~rvi.workflow.runner`: :func:`run_rule`, a rule's ``run:`` block.
"""

from rvi.workflow.checks import training_problems
from rvi.workflow.config import load_config, load_study
from rvi.workflow.params import stage_params
from rvi.workflow.registry import GPU_STAGES, REGISTRY, STAGES, TRAINING_STAGES, Stage, get_stage
from rvi.workflow.resources import DEFAULT_RESOURCES, ResourceTable, resource_problems
from rvi.workflow.runner import run_rule
from rvi.workflow.samples import (
    PATH_COLUMNS,
    existing_inputs,
    libraries,
    read_samples,
    sample_sheet_path,
    work_relative,
)
from rvi.workflow.schema import ConfigError, canonical, validate_config

__all__ = [
    "DEFAULT_RESOURCES",
    "GPU_STAGES",
    "PATH_COLUMNS",
    "REGISTRY",
    "STAGES",
    "TRAINING_STAGES",
    "ConfigError",
    "ResourceTable",
    "Stage",
    "canonical",
    "existing_inputs",
    "get_stage",
    "libraries",
    "load_config",
    "load_study",
    "read_samples",
    "resource_problems",
    "run_rule",
    "sample_sheet_path",
    "stage_params",
    "training_problems",
    "validate_config",
    "work_relative",
]
