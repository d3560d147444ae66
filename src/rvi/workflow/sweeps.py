"""Experiment sweeps on one training stage (``sweeps:`` in a study config).

::

    sweeps:
      stage: train_rna                       # or train_multimodal
      experiments:
        baseline: {}                         # the stage's own settings
        no_stratified_val: {training: {validation_fraction: 0.2}}
        wide: {model: {n_hidden: 1024, module_kwargs: {dispersion_init: data}}}

Each experiment deep-merges its overrides onto the stage's (defaults-filled) section: mappings merge key
by key, any other value (numbers, strings, lists) replaces the stage's. The merged section must validate
against the stage's schema; problems name the experiment and the key
(``unknown key 'sweeps.experiments.wide.model.n_hiden'``). The workflow trains each experiment in its own
job (rule ``train_rna_sweep`` / ``train_multimodal_sweep``) whose ``params`` hold only that experiment's
merged section, so editing one experiment reruns that experiment alone.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from rvi.workflow.checks import training_problems
from rvi.workflow.params import stage_params
from rvi.workflow.registry import TRAINING_STAGES, get_stage
from rvi.workflow.resources import ResourceTable
from rvi.workflow.schema import ConfigError, format_error, load_schema, validator_with_defaults

__all__ = [
    "SWEEP_STAGES",
    "deep_merge",
    "experiment_config",
    "sweep_experiments",
    "sweep_params",
    "sweep_problems",
    "sweep_stage",
]

#: Stages an experiment sweep can run: the training stages of the registry (their sections share the
#: model/training/embedding/metrics layout).
SWEEP_STAGES = TRAINING_STAGES
#: Experiment names that would collide with files of results/{study}/sweeps/.
_RESERVED_NAMES = ("metrics.csv",)


def deep_merge(base: Mapping, overrides: Mapping) -> dict:
    """``base`` updated with ``overrides``: mappings merge recursively, other values replace (deep copies)."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def sweep_stage(cfg: Mapping) -> str | None:
    """The swept stage of a validated config, or None without experiments."""
    sweeps = cfg.get("sweeps") or {}
    return sweeps.get("stage") if sweeps.get("experiments") else None


def sweep_experiments(cfg: Mapping) -> dict[str, dict]:
    """Experiment name -> overrides, in config order (empty without a sweep)."""
    return {str(k): dict(v) for k, v in ((cfg.get("sweeps") or {}).get("experiments") or {}).items()}


def _experiment_schema(stage: str, name: str, schema_path=None) -> dict:
    """A schema for ``{"sweeps": {"experiments": {name: <merged section>}}}`` checked as ``stage``'s section.

    Nesting the merged section at its place in the config makes every error path (and so every message
    of :func:`rvi.workflow.schema.validate_config`'s formatter) name the experiment and the key as written.
    """
    root = load_schema(schema_path)
    section = copy.deepcopy(root["properties"][stage])
    section.pop("default", None)

    def obj(props: dict) -> dict:
        return {"type": "object", "properties": props}

    return {"$defs": root.get("$defs", {}), **obj({"sweeps": obj({"experiments": obj({name: section})})})}


def _merged_section(cfg: Mapping, name: str, schema_path=None) -> tuple[dict, list[str]]:
    """(merged + defaults-filled stage section, problems) of one experiment."""
    stage = cfg["sweeps"]["stage"]
    overrides = cfg["sweeps"]["experiments"][name]
    section = deep_merge(cfg[stage], overrides)
    schema = _experiment_schema(stage, name, schema_path)
    instance = {"sweeps": {"experiments": {name: section}}}  # defaults are filled into `section` in place
    errors = validator_with_defaults(schema).iter_errors(instance)
    problems = []
    for err in sorted(errors, key=lambda e: (list(map(str, e.absolute_path)), e.message)):
        for line in format_error(err, schema):
            if line not in problems:
                problems.append(line)
    return section, problems


def experiment_config(cfg: Mapping, name: str, schema_path=None) -> dict:
    """A copy of the validated config whose swept stage section is experiment ``name``'s merged section."""
    experiments = sweep_experiments(cfg)
    if name not in experiments:
        raise KeyError(f"unknown sweep experiment {name!r} (configured: {sorted(experiments)})")
    section, problems = _merged_section(cfg, name, schema_path)
    if problems:
        raise ConfigError(problems)
    out = copy.deepcopy(dict(cfg))
    out[cfg["sweeps"]["stage"]] = section
    return out


def sweep_params(cfg: Mapping, name: str) -> dict:
    """The ``params`` of experiment ``name``'s job: :func:`rvi.workflow.params.stage_params` of its merged config.

    Same structure as the stage's own params (the stage function runs unchanged) and holds nothing of
    the other experiments, so Snakemake's params trigger reruns exactly the experiments that changed.
    """
    return stage_params(experiment_config(cfg, name), cfg["sweeps"]["stage"])


def sweep_problems(cfg: Mapping, schema_path=None, res: ResourceTable | None = None) -> list[str]:
    """Start-time checks of the ``sweeps`` section of a schema-validated config (one line per problem)."""
    sweeps = cfg.get("sweeps") or {}
    experiments = sweeps.get("experiments") or {}
    if not experiments:
        return []
    stage = sweeps["stage"]
    problems = []
    missing = [m for m in get_stage(stage).needs if m not in cfg["modalities"]]
    if missing:
        names = ", ".join(repr(m) for m in missing)
        problems.append(f"'sweeps.stage' = {stage!r} but modalities has no {names} (the study does not run {stage})")
        return problems
    for name in experiments:
        if name in _RESERVED_NAMES:
            problems.append(f"bad value for 'sweeps.experiments': {name!r} is reserved (results/<study>/sweeps/{name})")
            continue
        section, found = _merged_section(cfg, name, schema_path)
        if not found:
            # Cross-key checks of the merged section (devices vs the stage's GPUs, label level, ...).
            found = training_problems(
                {**cfg, stage: section}, stages=(stage,), key_prefix=f"sweeps.experiments.{name}", res=res
            )
        problems += found
    return problems
