"""Workflow plumbing: config validation, sample sheet wiring, per-stage params and resource lookups.

Everything the Snakefile needs beyond wiring lives here so that pytest can check it without Snakemake:

* :func:`load_config` validates a study config against ``workflow/schemas/config.schema.yaml``
  (``additionalProperties: false`` everywhere), fills the schema defaults and runs the cross-key checks
  (sample sheet present and consistent, per-dataset QC keys known, label levels). Every problem is
  reported in one :class:`ConfigError` that names the offending key and value.
* :func:`stage_params` returns the exact config a stage reads (its own section plus the shared
  sections it depends on). Rules put it in ``params`` so that Snakemake's params rerun-trigger reruns a
  stage (and, through its changed outputs, everything downstream) when, and only when, that changes.
* :class:`ResourceTable` turns the per-stage resource table into Snakemake resources, with memory growing
  on retries (capped at the queue's limit), plus the LSF flags (queue, ``-M``/``rusage``/``-gpu``) that
  the LSF executor plugin cannot express by itself and the SLURM ones (partition, cpus, GPUs).
  :func:`resource_problems` checks the table against the ``resources.queues`` limits at start.
"""

from __future__ import annotations

import copy
import difflib
import logging
import os
import sys
from collections.abc import Mapping
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from rvi._logging import SkipSelfPrinting, quiet_third_party_logs

__all__ = [
    "ConfigError",
    "GPU_STAGES",
    "ResourceTable",
    "STAGES",
    "canonical",
    "label_hierarchy",
    "load_config",
    "read_samples",
    "redirect_output",
    "resource_problems",
    "run_rule",
    "sample_sheet_path",
    "stage_params",
    "training_problems",
    "validate_config",
    "work_relative",
]

#: Stages with their own config section and resource entry, in DAG order.
STAGES = (
    "demo_data",
    "load_rna",
    "merge_rna",
    "scrublet",
    "load_atac",
    "merge_atac",
    "train_rna",
    "annotate",
    "select_cres",
    "train_multimodal",
    "integrated_output",
    "notebook",
    "ground_truth_report",
    "baseline_pca",
    "baseline_harmony",
    "baseline_scvi",
    "evaluate",
    "report",
)
GPU_STAGES = ("train_rna", "train_multimodal", "baseline_scvi")
#: GPU stages that train an rvi model from a section with model / training / metrics (training_problems).
RVI_TRAINING_STAGES = ("train_rna", "train_multimodal")
#: Built-in resource defaults under ``resources.default`` (the config overrides them key by key).
DEFAULT_RESOURCES = {
    "threads": 1,
    "mem_mb": 4000,
    "runtime": 60,
    "gpu": 0,
    "gpu_mem_mb": 0,
    "queue": "normal",
    "partition": None,
    "gpu_model": None,
    "lsf_extra_flags": "",
}
#: Resource keys that only GPU stages may set (``resources.default`` values apply to GPU stages only).
GPU_KEYS = ("gpu", "gpu_mem_mb", "gpu_model")

#: Shared config sections each stage reads besides its own section.
_SHARED_SECTIONS = {
    "demo_data": (),
    "load_rna": ("labels",),
    "merge_rna": ("covariates",),
    "scrublet": ("covariates",),
    "load_atac": (),
    "merge_atac": (),
    "train_rna": ("covariates", "labels"),
    "annotate": ("labels",),
    "select_cres": ("labels",),
    "train_multimodal": ("covariates", "labels"),
    "integrated_output": (),
    "ground_truth_report": ("labels", "select_cres", "covariates"),
    "baseline_pca": ("covariates",),
    "baseline_harmony": ("covariates",),
    "baseline_scvi": ("covariates",),
    "evaluate": ("covariates", "labels"),
    "report": ("covariates", "labels"),
}
#: Stages whose own config section has another name.
_OWN_SECTION = {
    "ground_truth_report": "ground_truth",
    "baseline_pca": "evaluate",
    "baseline_harmony": "evaluate",
    "baseline_scvi": "evaluate",
    "report": "evaluate",
}


class ConfigError(ValueError):
    """A study config or sample sheet is invalid; the message lists every problem found."""

    def __init__(self, problems: list[str] | str, source: str | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        head = f"Invalid configuration{f' ({source})' if source else ''}:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_schema_path() -> Path:
    """The schema shipped with the workflow (source checkout / editable install layout)."""
    return _repo_root() / "workflow" / "schemas" / "config.schema.yaml"


@lru_cache(maxsize=4)
def _load_schema(path: str) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


# --------------------------------------------------------------------------------------------------
# Schema validation with defaults
# --------------------------------------------------------------------------------------------------


def _validator_with_defaults(schema: dict):
    """A Draft 2020-12 validator that fills ``default`` values of missing properties while validating."""
    from jsonschema import Draft202012Validator, validators

    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    # Deep copy: schema defaults are shared objects and must never be aliased.
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    cls = validators.extend(Draft202012Validator, {"properties": set_defaults})
    return cls(schema)


def _key(path) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "<top level>"


def _schema_at(schema: dict, root: dict, path) -> dict:
    """Resolve the sub-schema of an instance path (follows properties/$ref; best effort for messages)."""
    node = schema
    for part in path:
        while isinstance(node, dict) and "$ref" in node:
            node = _resolve_ref(root, node["$ref"])
        if not isinstance(node, dict):
            return {}
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return {}
    while isinstance(node, dict) and "$ref" in node:
        node = _resolve_ref(root, node["$ref"])
    return node if isinstance(node, dict) else {}


def _resolve_ref(root: dict, ref: str) -> dict:
    node: Any = root
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def _format_error(err, root: dict) -> list[str]:
    """One readable line per problem, naming the full key path and the offending value."""
    path = list(err.absolute_path)
    if err.validator == "additionalProperties":
        allowed = sorted(_schema_at(root, root, path).get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed)) if isinstance(err.instance, dict) else []
        lines = []
        for name in extra:
            hint = difflib.get_close_matches(name, allowed, n=1)
            did = f"; did you mean '{hint[0]}'?" if hint else ""
            lines.append(f"unknown key '{_key([*path, name])}'{did} (allowed here: {', '.join(allowed)})")
        return lines or [f"'{_key(path)}': {err.message}"]
    if err.validator == "required":
        return [f"missing required key under '{_key(path)}': {err.message}"]
    value = err.instance
    shown = repr(value) if not isinstance(value, dict | list) or len(repr(value)) < 80 else type(value).__name__
    if err.validator in ("anyOf", "oneOf"):
        reasons = sorted({sub.message for sub in err.context}) if err.context else []
        detail = "; ".join(reasons[:3]) if reasons else err.message
        return [f"bad value for '{_key(path)}': {shown} ({detail})"]
    return [f"bad value for '{_key(path)}': {shown} ({err.message})"]


def validate_config(config: Mapping, schema_path: str | os.PathLike | None = None) -> dict:
    """Validate ``config`` against the schema and return a deep copy with defaults filled in.

    Raises
    ------
    ConfigError
        Listing every unknown key and bad value, each named by its dotted path.
    """
    if not config:
        raise ConfigError("no configuration given: run with --configfile config/<study>.yaml (e.g. config/demo.yaml)")
    schema = _load_schema(str(schema_path or default_schema_path()))
    cfg = copy.deepcopy(dict(config))
    validator = _validator_with_defaults(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        problems: list[str] = []
        for err in errors:
            for line in _format_error(err, schema):
                if line not in problems:
                    problems.append(line)
        raise ConfigError(problems)
    return cfg


# --------------------------------------------------------------------------------------------------
# Whole-config loading: schema + cross-key checks + sample sheet
# --------------------------------------------------------------------------------------------------


def sample_sheet_path(cfg: Mapping) -> str:
    """The sample sheet of a validated config (the generated one for demo data)."""
    if cfg["sample_sheet"]:
        return cfg["sample_sheet"]
    return str(Path(cfg["demo_data"]["outdir"]) / "samples.tsv")


def _cross_key_problems(cfg: Mapping) -> list[str]:
    problems = []
    demo = cfg["demo_data"]
    if not demo["generate"] and not cfg["sample_sheet"]:
        problems.append("'sample_sheet' is required unless demo_data.generate is true")
    if demo["generate"] and cfg["sample_sheet"]:
        generated = Path(demo["outdir"]) / "samples.tsv"
        if Path(cfg["sample_sheet"]) != generated:
            problems.append(
                f"'sample_sheet' = {cfg['sample_sheet']!r} but demo_data.generate writes the sheet to "
                f"{str(generated)!r}: drop sample_sheet or point it there"
            )
    levels = cfg["labels"]["levels"]
    if len(set(levels)) != len(levels):
        problems.append(f"bad value for 'labels.levels': {levels!r} (duplicate level names)")
    for section in ("select_cres",):
        level = cfg[section]["level"]
        if level is not None and level not in levels:
            problems.append(f"bad value for '{section}.level': {level!r} (not one of labels.levels {levels})")
    problems += training_problems(cfg)
    if "atac" not in cfg["modalities"]:
        for key in ("min_fragments",):
            qc = cfg["train_rna"]["cell_qc"]
            users = ["default"] * bool(qc["default"].get(key)) + [d for d, t in qc["per_dataset"].items() if t.get(key)]
            if users:
                problems.append(
                    f"'train_rna.cell_qc' sets {key} for {users} but modalities has no 'atac' (no fragments to count)"
                )
    gt = cfg["ground_truth"]
    if gt["cres"] and "atac" not in cfg["modalities"]:
        problems.append("'ground_truth.cres' is set but modalities has no 'atac' (no CREs are selected)")
    problems += resource_problems(cfg)
    return problems


def _device_count(devices) -> int | None:
    """Devices a ``training.devices`` value asks for (None for ``"auto"``: Lightning decides)."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices
    if isinstance(devices, list | tuple):
        return len(devices)
    return None


def training_problems(
    cfg: Mapping, stages: tuple[str, ...] = RVI_TRAINING_STAGES, key_prefix: str | None = None
) -> list[str]:
    """Cross-key checks of the training stages' sections (also run on each sweep experiment's merged section).

    * ``metrics.label_level`` must be one of ``labels.levels``.
    * GPU training must fit what the scheduler gives the job (``resources.<stage>.gpu``): ``accelerator: gpu``
      needs ``gpu`` >= 1, ``devices: N`` (or a list of N device indices, each < ``gpu``) needs ``gpu`` >= N.
    * Several devices train with DDP, one process per device (:mod:`rvi.stages.distributed`): ``devices`` > 1
      needs a ``ddp`` strategy, and a ``ddp`` strategy needs an explicit ``devices`` count.

    ``key_prefix`` names the section in the messages (default: the stage; sweeps pass
    ``sweeps.experiments.<name>``).
    """
    from rvi.config_checks import kwargs_problems

    problems = []
    levels = cfg["labels"]["levels"]
    res = ResourceTable(cfg)
    for stage in stages:
        key = key_prefix or stage
        section = cfg[stage]
        level = section["metrics"]["label_level"]
        if level is not None and level not in levels:
            problems.append(f"bad value for '{key}.metrics.label_level': {level!r} (not one of labels.levels {levels})")
        problems += kwargs_problems(cfg["study"], stage, section, key)
        training = section["training"]
        accelerator, devices, strategy = training["accelerator"], training["devices"], training["strategy"]
        n = _device_count(devices)
        ddp = str(strategy).startswith("ddp")
        if n is not None and n > 1 and not ddp:
            problems.append(
                f"'{key}.training.devices' = {devices!r} with strategy {strategy!r}: training on several devices "
                "needs strategy: ddp (or ddp_find_unused_parameters_true when some parameters get no gradient)"
            )
        if ddp and training["early_stopping"]:
            problems.append(
                f"'{key}.training.early_stopping' is true with strategy {strategy!r}: scvi-tools disables early "
                f"stopping under DDP, so training would silently run all max_epochs; set early_stopping: false "
                f"and the max_epochs to train for"
            )
        if ddp and n is None:
            problems.append(
                f"'{key}.training.strategy' = {strategy!r} needs an explicit '{key}.training.devices' (the number of "
                f"GPUs, one DDP process each, e.g. devices: 2 with resources.{stage}.gpu: 2), not {devices!r}"
            )
        if accelerator == "cpu":
            continue  # CPU processes (e.g. DDP with gloo) do not use the job's GPUs
        gpus = res.gpu(stage)
        if accelerator in ("gpu", "cuda") and gpus == 0:
            problems.append(
                f"'{key}.training.accelerator' = {accelerator!r} but 'resources.{stage}.gpu' = 0: the job would get "
                f"no GPU; set resources.{stage}.gpu (or accelerator: auto / cpu)"
            )
        elif n is not None and gpus > 0 and n > gpus:
            problems.append(
                f"'{key}.training.devices' = {devices!r} asks for {n} GPUs but 'resources.{stage}.gpu' = {gpus}: "
                f"the scheduler gives the job {gpus}; set resources.{stage}.gpu: {n}"
            )
        elif isinstance(devices, list) and gpus > 0 and max(devices) >= gpus:
            problems.append(
                f"'{key}.training.devices' = {devices!r}: the job sees its {gpus} GPU(s) as indices 0-{gpus - 1} "
                f"(resources.{stage}.gpu = {gpus}); use devices: {gpus} or indices below {gpus}"
            )
    return problems


def load_config(
    config: Mapping,
    schema_path: str | os.PathLike | None = None,
    check_sample_sheet: bool = True,
) -> dict:
    """Validate a study config, fill defaults, and check the sample sheet when it already exists.

    The sample sheet is read and validated here (before any job runs) unless demo data is generated,
    in which case the ``demo_data`` checkpoint writes it and :func:`read_samples` validates it then.
    Paths are relative to the current (Snakemake working) directory.
    """
    cfg = validate_config(config, schema_path)
    from rvi.sweeps import sweep_problems  # rvi.sweeps builds on this module

    problems = _cross_key_problems(cfg) + sweep_problems(cfg, schema_path)
    if problems:
        raise ConfigError(problems)
    if check_sample_sheet and not cfg["demo_data"]["generate"]:
        missing = _missing_config_files(cfg)
        problems = []
        try:
            sheet = read_samples(cfg, check_files=not cfg["preview"])
            if cfg["preview"]:
                missing += _missing_files(cfg, sheet, str(sample_sheet_path(cfg)))
        except ConfigError as exc:
            problems = exc.problems
        if cfg["preview"] and missing and not problems:
            # Preview (dry runs only): say what is not on disk yet and build the DAG without it.
            print("preview: inputs not on disk yet:\n  - " + "\n  - ".join(missing), file=sys.stderr)
        elif problems or missing:
            raise ConfigError(problems + missing)
    return cfg


def existing_inputs(cfg: Mapping, paths: Mapping[str, str]) -> dict[str, str]:
    """A rule's raw input files; in preview mode the ones not on disk yet are left out of the DAG."""
    if not cfg["preview"]:
        return dict(paths)
    return {k: v for k, v in paths.items() if Path(v).exists()}


def _missing_config_files(cfg: Mapping) -> list[str]:
    """Reference files named in the config (demo runs generate theirs, so they are not checked)."""
    paths = {"labels.hierarchy": cfg["labels"]["hierarchy"]}
    if "atac" in cfg["modalities"]:
        paths |= {f"load_atac.{k}": cfg["load_atac"][k] for k in ("chrom_sizes", "gene_annotation")}
    return [f"'{key}' = {path!r}: file not found" for key, path in paths.items() if path and not Path(path).exists()]


def _read_sheet_table(path: str):
    from rvi.io.samples import read_sample_sheet

    # Paths are checked below, all at once, so a template config lists every missing file in one go.
    return read_sample_sheet(path, check_paths=False)


#: Sample-sheet columns holding input files (relative paths are resolved against the sheet's folder).
PATH_COLUMNS = ("rna_path", "fragments_path", "labels_path")


def read_samples(cfg: Mapping, path: str | os.PathLike | None = None, check_files: bool = True):
    """Read and validate the study's sample sheet; return it as a DataFrame indexed by sample id.

    Raises :class:`ConfigError` naming the sheet for a missing sheet, missing input files (all of
    them), duplicate sample ids, a library in two datasets, or a config key (per-dataset QC
    thresholds, covariate columns) that the sheet does not provide.
    """
    path = str(path or sample_sheet_path(cfg))
    if not Path(path).is_file():
        raise ConfigError([f"sample sheet not found: 'sample_sheet' = {path!r} (working directory {os.getcwd()})"])
    try:
        sheet = _read_sheet_table(path)
    except (ValueError, KeyError) as exc:
        raise ConfigError([f"sample sheet {path!r}: {exc}"]) from exc
    problems = _sheet_problems(cfg, sheet, path) + covariate_column_problems(cfg, sheet, path)
    if check_files:
        problems += _missing_files(cfg, sheet, path)
        problems += label_file_problems(cfg, sheet)
        problems += fragments_problems(cfg, sheet)
    if problems:
        raise ConfigError(problems)
    return sheet


def _missing_files(cfg: Mapping, sheet, path: str, show: int = 20) -> list[str]:
    needed = ["rna_path", "labels_path"]
    if "atac" in cfg["modalities"] and cfg["load_atac"]["matrix"] != "10x_peaks":
        needed.append("fragments_path")
    missing = []
    for col in needed:
        if col not in sheet.columns:
            continue
        for sample, value in sheet[col].items():
            if col == "fragments_path" and not value:
                missing.append(f"{sample}: fragments_path is empty (needed for load_atac.matrix)")
            elif value and not Path(value).exists():
                missing.append(f"{sample}: {col} {value}")
    if not missing:
        return []
    more = f" ... and {len(missing) - show} more" if len(missing) > show else ""
    return [
        f"sample sheet {path!r}: {len(missing)} missing input file(s):\n      " + "\n      ".join(missing[:show]) + more
    ]


def _sheet_problems(cfg: Mapping, sheet, path: str) -> list[str]:
    """Checks the workflow relies on whatever the sheet reader already validated."""
    problems = []
    sample_ids = sheet.index.astype(str)
    dup = sorted(set(sample_ids[sample_ids.duplicated()]))
    if dup:
        problems.append(f"sample sheet {path!r}: duplicate sample ids {dup}")
    cov = cfg["covariates"]
    lib, ds = cov["library_key"], cov["dataset_key"]
    for key, name in ((lib, "covariates.library_key"), (ds, "covariates.dataset_key")):
        if key is not None and key not in sheet.columns:
            problems.append(f"'{name}' = {key!r} is not a column of the sample sheet {path!r}")
    if lib in sheet.columns and ds is not None and ds in sheet.columns:
        n_ds = sheet.groupby(lib, observed=True)[ds].nunique()
        bad = sorted(map(str, n_ds.index[n_ds > 1]))
        if bad:
            detail = {b: sorted(map(str, sheet.loc[sheet[lib].astype(str) == b, ds].unique())) for b in bad}
            problems.append(f"sample sheet {path!r}: library in two datasets: {detail}")
    if ds is not None and ds in sheet.columns:
        datasets = set(map(str, sheet[ds].unique()))
        unknown = sorted(set(cfg["train_rna"]["cell_qc"]["per_dataset"]) - datasets)
        if unknown:
            problems.append(
                f"unknown dataset(s) {unknown} in 'train_rna.cell_qc.per_dataset' "
                f"(datasets in the sample sheet: {sorted(datasets)})"
            )
    elif cfg["train_rna"]["cell_qc"]["per_dataset"]:
        problems.append("'train_rna.cell_qc.per_dataset' needs covariates.dataset_key")
    return problems


#: obs columns every cell has besides the sample-sheet metadata (load_rna and merge_rna add them).
COMPUTED_OBS_COLUMNS = ("barcode", "library", "fragments_path", "n_genes", "total_counts", "mt_frac")


def covariate_columns(cfg: Mapping) -> dict[str, list[str]]:
    """``covariates.<key>`` -> the obs columns it names (library/dataset keys included)."""
    out = {}
    for key, value in cfg["covariates"].items():
        if value is None or value is False:
            continue
        out[key] = [value] if isinstance(value, str) else [str(v) for v in value]
    return out


def covariate_column_problems(cfg: Mapping, sheet, path: str) -> list[str]:
    """Start-time checks of the covariate columns against the sample sheet.

    Each column named under ``covariates`` must be a sample-sheet column (or an obs column the workflow
    computes: QC metrics, label levels), and a sheet column used as a covariate must have no empty cell
    (an empty cell would become a covariate level ``''``).
    """
    study = cfg["study"]
    known = set(sheet.columns) | set(COMPUTED_OBS_COLUMNS) | set(cfg["labels"]["levels"])
    problems = []
    for key, columns in covariate_columns(cfg).items():
        for col in columns:
            if col not in known:
                hint = difflib.get_close_matches(col, sorted(map(str, sheet.columns)), n=1)
                did = f"; did you mean {hint[0]!r}?" if hint else ""
                problems.append(
                    f"study {study!r}, stage train_rna: 'covariates.{key}' = {col!r} is not a column of the sample "
                    f"sheet {path!r}{did} (columns: {', '.join(map(str, sheet.columns))})"
                )
            elif col in sheet.columns:
                values = sheet[col].astype(str).str.strip()
                empty = [i + 2 for i in range(len(values)) if values.iloc[i] in ("", "nan", "NA")]
                if empty:
                    names = [str(sheet.index[i - 2]) for i in empty]
                    problems.append(
                        f"study {study!r}: 'covariates.{key}' uses column {col!r} of the sample sheet {path!r}, which "
                        f"is empty in line(s) {empty} (samples {names}): fill it in (an empty value would become a "
                        f"covariate level of its own)"
                    )
    return problems


def label_file_problems(cfg: Mapping, sheet, show: int = 20) -> list[str]:
    """Start-time check of the label files' headers: a ``barcode`` column and every ``labels.levels`` column."""
    from rvi.io.tenx import label_table_problems

    if "labels_path" not in sheet.columns:
        return []
    levels = list(cfg["labels"]["levels"])
    problems = []
    for sample, value in sheet["labels_path"].items():
        if not value or not Path(value).is_file():
            continue
        try:
            import pandas as pd

            header = pd.read_csv(value, nrows=0, dtype=str).columns
        except (ValueError, OSError) as exc:
            problems.append(f"sample {sample!r}: labels_path {value!r} cannot be read as CSV: {exc}")
            continue
        for line in label_table_problems(header, levels):
            problems.append(f"sample {sample!r}: label file {value!r} {line}")
    return problems[:show]


def work_relative(path: str) -> str:
    """``path`` relative to the working (Snakemake work) folder when it lies inside it, else unchanged.

    Rule params and inputs hold sample-sheet paths in this form, so that a moved or copied work folder
    has the same params and inputs (and reruns nothing); files outside it keep their absolute path.
    """
    if not path or not os.path.isabs(path):
        return path
    cwd = os.getcwd()
    try:
        inside = os.path.commonpath([cwd, path]) == cwd
    except ValueError:  # another drive (Windows)
        return path
    return os.path.relpath(path, cwd) if inside else path


def fragments_problems(cfg: Mapping, sheet, show: int = 20) -> list[str]:
    """Start-time check of the fragments files an ATAC study counts: bgzip, complete, index present and fresh."""
    if "atac" not in cfg["modalities"] or cfg["load_atac"]["matrix"] == "10x_peaks" or "fragments_path" not in sheet:
        return []
    from rvi.io.fragments import fragments_file_problems

    require = cfg["load_atac"].get("require_index", True)
    problems = []
    for sample, value in sheet["fragments_path"].items():
        if value and Path(value).is_file():
            problems += [f"sample {sample!r}: {line}" for line in fragments_file_problems(value, require)]
    return problems[:show]


def libraries(cfg: Mapping, sheet) -> list[str]:
    """Library names in sample-sheet order (one scrublet job each)."""
    col = cfg["covariates"]["library_key"]
    return list(dict.fromkeys(map(str, sheet[col])))


def label_hierarchy(cfg: Mapping, labels_frame=None):
    """The label hierarchy table of the config (CSV), or inferred from fully labelled cells.

    Returns a DataFrame with one column per level (one row per coarse -> fine path), the table form
    accepted by :func:`rvi.annotation.normalize_hierarchy`.
    """
    import pandas as pd

    levels = list(cfg["labels"]["levels"])
    path = cfg["labels"]["hierarchy"]
    if path:
        table = pd.read_csv(path, sep=None, engine="python", dtype=str)
        missing = [lvl for lvl in levels if lvl not in table.columns]
        if missing:
            raise ConfigError([f"labels.hierarchy table {path!r} lacks level column(s) {missing}"])
        return table[levels].drop_duplicates().reset_index(drop=True)
    if labels_frame is None:
        raise ValueError("labels.hierarchy is null: pass the partial labels to infer it from")
    # Each labelled path seen in the data is one row; cells labelled only coarsely add the coarse
    # prefix so that labels without finer children stay valid.
    rows = labels_frame[levels].astype("object").dropna(subset=levels[:1]).drop_duplicates()
    return rows.reset_index(drop=True)


# --------------------------------------------------------------------------------------------------
# Params and resources
# --------------------------------------------------------------------------------------------------


def stage_params(cfg: Mapping, stage: str) -> dict:
    """The config a stage reads: its own section plus the shared sections it depends on."""
    if stage not in _SHARED_SECTIONS:
        raise KeyError(f"unknown stage {stage!r} (stages: {sorted(_SHARED_SECTIONS)})")
    own = _OWN_SECTION.get(stage, stage)
    out = {own: cfg[own]} if own in cfg else {}
    for section in _SHARED_SECTIONS[stage]:
        out[section] = cfg[section]
    # Snakemake compares params by repr(): sorted keys make reordering a YAML file a no-op.
    return canonical(out)


def canonical(value):
    """Deep copy with dict keys sorted (lists keep their order)."""
    if isinstance(value, Mapping):
        return {str(k): canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return copy.deepcopy(value)


class ResourceTable:
    """Per-stage resources from the config's ``resources`` table.

    ``resources.<stage>`` overrides ``resources.default`` key by key; the GPU stages default to
    ``gpu: 1``, and the GPU keys (``gpu``, ``gpu_mem_mb``, ``gpu_model``) of ``resources.default`` apply to
    GPU stages only, so a CPU stage never asks for a GPU. Memory grows geometrically with the Snakemake
    ``attempt`` (``--retries``): ``mem_mb * mem_attempt_factor ** (attempt - 1)``, capped on retries at the
    ``max_mem_mb`` of the stage's queue when ``resources.queues`` lists it (attempt 1 above that limit is a
    start-time error, see :func:`resource_problems`).
    """

    def __init__(self, cfg: Mapping):
        table = cfg["resources"]
        self.factor = float(table.get("mem_attempt_factor", 1.5))
        self.default = {**DEFAULT_RESOURCES, **table.get("default", {})}
        self.queues = {str(k): dict(v) for k, v in (table.get("queues") or {}).items()}
        self.table = {k: dict(v) for k, v in table.items() if k not in ("default", "mem_attempt_factor", "queues")}

    def spec(self, stage: str) -> dict:
        if stage not in STAGES:
            raise KeyError(f"unknown stage {stage!r} (stages: {list(STAGES)})")
        if stage in GPU_STAGES:
            # GPU stages ask for one GPU unless their own entry says otherwise (gpu: 0 trains on CPU).
            return {**self.default, "gpu": 1, **self.table.get(stage, {})}
        cpu_default = {key: DEFAULT_RESOURCES[key] for key in GPU_KEYS}
        return {**self.default, **cpu_default, **self.table.get(stage, {})}

    def threads(self, stage: str) -> int:
        return int(self.spec(stage)["threads"])

    def mem_mb(self, stage: str, attempt: int = 1) -> int:
        base = int(self.spec(stage)["mem_mb"])
        mem = int(round(base * self.factor ** (max(int(attempt), 1) - 1)))
        cap = self.max_mem_mb(stage)
        if cap is not None and mem > base:
            # A retry never asks for more than the queue can give (that job would never start).
            mem = max(min(mem, cap), base)
        return mem

    def runtime(self, stage: str) -> int:
        return int(self.spec(stage)["runtime"])

    def gpu(self, stage: str) -> int:
        return int(self.spec(stage)["gpu"])

    def gpu_model(self, stage: str) -> str | None:
        return self.spec(stage).get("gpu_model") or None

    def queue(self, stage: str) -> str:
        return str(self.spec(stage)["queue"])

    def partition(self, stage: str) -> str:
        """The SLURM partition: the entry's ``partition``, else its ``queue``."""
        return str(self.spec(stage).get("partition") or self.queue(stage))

    def queue_limits(self, stage: str) -> dict[str, dict]:
        """Limits (``resources.queues`` entries) of the stage's queue and SLURM partition, when listed."""
        names = dict.fromkeys([self.queue(stage), self.partition(stage)])
        return {name: self.queues[name] for name in names if name in self.queues}

    def max_mem_mb(self, stage: str) -> int | None:
        limits = [int(q["max_mem_mb"]) for q in self.queue_limits(stage).values() if q.get("max_mem_mb")]
        return min(limits) if limits else None

    def lsf_extra(self, stage: str, attempt: int = 1) -> str:
        """bsub flags the LSF plugin does not emit: ``-M``, ``select/rusage/span`` and ``-gpu``.

        Mirrors the cluster's documented form, e.g.
        ``-M 40000 -R "select[mem>40000] rusage[mem=40000] span[hosts=1]"
        -gpu "mode=shared:j_exclusive=yes:gmem=80000:num=1"``.
        """
        mem = self.mem_mb(stage, attempt)
        spec = self.spec(stage)
        flags = f'-M {mem} -R "select[mem>{mem}] rusage[mem={mem}] span[hosts=1]"'
        if int(spec["gpu"]) > 0:
            gmem = f"gmem={int(spec['gpu_mem_mb'])}:" if spec.get("gpu_mem_mb") else ""
            flags += f' -gpu "mode=shared:j_exclusive=yes:{gmem}num={int(spec["gpu"])}"'
        if spec["lsf_extra_flags"]:
            flags += f" {spec['lsf_extra_flags']}"
        return flags

    def rule_resources(self, stage: str) -> dict:
        """Keyword arguments for a rule's ``resources:`` (callables so ``attempt`` is honoured).

        Generic: ``mem_mb`` (per job, grows with ``attempt``), ``runtime`` (minutes) and, on the GPU stages
        only, ``gpu`` (plus ``gpu_model`` when set and a GPU is requested). LSF: ``lsf_queue`` and
        ``lsf_extra``. SLURM: ``slurm_partition`` and ``cpus_per_task`` (the rule's threads); the SLURM
        plugin turns ``gpu``/``gpu_model`` into ``--gpus=[model:]N``. CPU stages carry no GPU key at all.

        Snakemake's local scheduler only constrains resources named in ``--resources``, so with plain
        ``--cores N`` a GPU stage still runs on a CPU-only machine (the model then trains with
        ``accelerator='auto'`` on the CPU); ``--resources gpu=1`` serialises GPU jobs on a GPU box.
        """
        res: dict[str, Any] = {
            "mem_mb": lambda wildcards, attempt: self.mem_mb(stage, attempt),
            "runtime": self.runtime(stage),
            "lsf_queue": self.queue(stage),
            "lsf_extra": lambda wildcards, attempt: self.lsf_extra(stage, attempt),
            "slurm_partition": self.partition(stage),
            "cpus_per_task": lambda wildcards, threads: int(threads),
        }
        if stage in GPU_STAGES:
            res["gpu"] = self.gpu(stage)
            if self.gpu(stage) > 0 and self.gpu_model(stage):
                res["gpu_model"] = self.gpu_model(stage)
        return res


def _active_stages(cfg: Mapping) -> list[str]:
    """The stages a study runs (the others never submit a job, so their resources are not checked)."""
    skip = set()
    if not cfg["demo_data"]["generate"]:
        skip.add("demo_data")
    if "atac" not in cfg["modalities"]:
        skip |= {"load_atac", "merge_atac", "select_cres", "train_multimodal"}
    if not (cfg["ground_truth"]["cells"] or cfg["ground_truth"]["cres"]):
        skip.add("ground_truth_report")
    skip |= {f"baseline_{b}" for b in ("pca", "harmony", "scvi") if b not in cfg["evaluate"]["baselines"]}
    if "harmony" in cfg["evaluate"]["baselines"]:
        skip.discard("baseline_pca")  # Harmony corrects the PCA baseline's components
    return [s for s in STAGES if s not in skip]


def resource_problems(cfg: Mapping) -> list[str]:
    """Start-time checks of the ``resources`` table of a schema-validated config (one line per problem).

    * A CPU stage's own entry must not ask for a GPU (``gpu`` > 0, ``gpu_mem_mb`` > 0 or ``gpu_model``).
    * Cluster studies (``resources.queues`` is given, or some entry names a queue/partition other than the
      built-in ``normal``) need an entry of their own for each GPU stage they run (train_rna;
      train_multimodal with the atac modality): otherwise training would silently get the CPU default.
    * With ``resources.queues``: every queue and partition a running stage uses must be listed there;
      its ``mem_mb`` (attempt 1; retries are capped at the limit) and ``runtime`` must fit the queue's
      ``max_mem_mb`` / ``max_runtime``; a stage asking for a GPU needs a ``gpu: true`` queue, and a stage
      without one must not sit on a GPU queue.
    """
    res = ResourceTable(cfg)
    study = cfg["study"]
    table = cfg["resources"]
    problems = []

    def where(stage: str, key: str, value) -> str:
        """``'resources.<stage|default>.<key>' = value``: the config key the stage's value comes from."""
        if key in res.table.get(stage, {}):
            return f"'resources.{stage}.{key}' = {value!r}"
        if key in table.get("default", {}) and not (stage not in GPU_STAGES and key in GPU_KEYS):
            return f"'resources.default.{key}' = {value!r}"
        return f"{key} = {value!r} (built-in default)"

    def at(stage: str) -> str:
        return f"study {study!r}, stage {stage}"

    for stage in STAGES:
        own = res.table.get(stage, {})
        if stage in GPU_STAGES:
            continue
        asked = {k: own[k] for k in GPU_KEYS if own.get(k)}
        if asked:
            keys = ", ".join(f"'resources.{stage}.{k}' = {v!r}" for k, v in asked.items())
            problems.append(
                f"{at(stage)}: {keys}: {stage} runs on CPUs only (GPU stages: {', '.join(GPU_STAGES)}); remove it"
            )

    active = _active_stages(cfg)
    named = {
        str(entry[key])
        for name, entry in table.items()
        if isinstance(entry, Mapping) and name != "queues"
        for key in ("queue", "partition")
        if entry.get(key)
    }
    cluster_names = sorted(named - {DEFAULT_RESOURCES["queue"]})
    missing = []
    if res.queues or cluster_names:
        why = "resources.queues is set" if res.queues else f"resources name queue(s) {cluster_names}"
        for stage in GPU_STAGES:
            if stage in active and stage not in res.table:
                missing.append(stage)
                problems.append(
                    f"{at(stage)}: no 'resources.{stage}' entry, but this is a cluster study ({why}): give the "
                    f"GPU stage its own threads, mem_mb, runtime, gpu and queue (it would otherwise get "
                    f"resources.default: queue {res.queue(stage)!r}, mem_mb {res.mem_mb(stage)})"
                )
    if not res.queues:
        return problems

    known = sorted(res.queues)
    for stage in active:
        if stage in missing:  # reported above; its defaults would only add noise
            continue
        for key, name in (("queue", res.queue(stage)), ("partition", res.partition(stage))):
            if key == "partition" and name == res.queue(stage):
                continue
            if name not in res.queues:
                hint = difflib.get_close_matches(name, known, n=1)
                did = f"; did you mean {hint[0]!r}?" if hint else ""
                problems.append(
                    f"{at(stage)}: {where(stage, key, name)} is not a queue of resources.queues{did} "
                    f"(known: {', '.join(known)})"
                )
        mem, runtime, gpu = res.mem_mb(stage), res.runtime(stage), res.gpu(stage)
        for name, limits in res.queue_limits(stage).items():
            max_mem = limits.get("max_mem_mb")
            if max_mem and mem > int(max_mem):
                roomy = sorted(
                    (
                        q
                        for q, lim in res.queues.items()
                        if int(lim["max_mem_mb"]) >= mem and bool(lim.get("gpu")) == (gpu > 0)
                    ),
                    key=lambda q: int(res.queues[q]["max_mem_mb"]),
                )
                alt = f"; queue(s) with enough memory: {', '.join(roomy)}" if roomy else ""
                problems.append(
                    f"{at(stage)}: {where(stage, 'mem_mb', mem)} exceeds max_mem_mb {int(max_mem)} of queue "
                    f"{name!r} (resources.queues.{name}){alt}"
                )
            max_runtime = limits.get("max_runtime")
            if max_runtime and runtime > int(max_runtime):
                problems.append(
                    f"{at(stage)}: {where(stage, 'runtime', runtime)} minutes exceeds max_runtime "
                    f"{int(max_runtime)} of queue {name!r} (resources.queues.{name})"
                )
            gpu_queue = bool(limits.get("gpu", False))
            if gpu > 0 and not gpu_queue:
                problems.append(
                    f"{at(stage)}: {where(stage, 'gpu', gpu)} but queue {name!r} has no GPUs "
                    f"(resources.queues.{name}.gpu is false): use a GPU queue "
                    f"({', '.join(q for q in known if res.queues[q].get('gpu')) or 'none listed'})"
                )
            if gpu == 0 and gpu_queue:
                fix = f", or set 'resources.{stage}.gpu' to train on a GPU" if stage in GPU_STAGES else ""
                problems.append(
                    f"{at(stage)}: requests no GPU but queue {name!r} is a GPU queue (resources.queues.{name}.gpu "
                    f"is true): use a CPU queue{fix}"
                )
    return problems


# --------------------------------------------------------------------------------------------------
# Running one rule: logging and thread limits around the rvi.stages function
# --------------------------------------------------------------------------------------------------

_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "RAYON_NUM_THREADS")


@contextmanager
def redirect_output(log_file: str | os.PathLike | None):
    """Send this process's stdout/stderr (Python and C level: numba, torch, SnapATAC2) to ``log_file``."""
    if not log_file:
        yield
        return
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_file, "w", buffering=1) as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        root = logging.getLogger()
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.addFilter(SkipSelfPrinting())
        quiet_third_party_logs()
        root.addHandler(handler)
        level = root.level
        root.setLevel(logging.INFO)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            root.removeHandler(handler)
            root.setLevel(level)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@contextmanager
def thread_limits(threads: int):
    """Cap BLAS/OpenMP/numba/Rayon/torch threads at the rule's ``threads`` (jobs share the machine)."""
    threads = max(int(threads), 1)
    old = {k: os.environ.get(k) for k in _THREAD_ENV}
    os.environ.update({k: str(threads) for k in _THREAD_ENV})
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(limits=threads)
    except ImportError:  # threadpoolctl comes with scikit-learn; without it the env vars still apply
        limiter = None
    try:
        yield
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _plain(value):
    """Snakemake Namedlist / IOFile values -> str or list[str] (stage functions take plain paths)."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _named(namedlist) -> dict:
    if namedlist is None:
        return {}
    if isinstance(namedlist, Mapping):
        return {k: _plain(v) for k, v in namedlist.items()}
    return {k: _plain(v) for k, v in namedlist.items()}


def run_rule(stage: str, input=None, output=None, params=None, log=None, threads: int = 1, wildcards=None):
    """Run the :mod:`rvi.stages` function of a rule with its named input/output/params as keywords.

    Called from each rule's ``run:`` block (one line there). Output goes to the rule's log file; a
    short header records the stage, the interpreter and the params so a log is self-explanatory.
    """
    import json
    import time
    import traceback

    from rvi import stages
    from rvi.stages.distributed import TRAINING_STAGES, ddp_ranks

    func = stages.STAGE_FUNCTIONS[stage]
    kwargs = {**_named(input), **_named(output), **_named(params)}
    if wildcards is not None and stage == "notebook":
        kwargs["name"] = wildcards.notebook
    log_file = _plain(list(log)[0]) if log else None
    if stage in TRAINING_STAGES:
        # Training runs in a child process, whose main thread can take SIGINT / SIGTERM (rvi.interrupt).
        from rvi.interrupt import run_stage_process

        with redirect_output(log_file):
            start = time.time()
            print(f"[rvi] stage {stage} (python {sys.executable}, threads {threads})", flush=True)
            print(f"[rvi] params: {json.dumps(_named(params), default=str, sort_keys=True)}", flush=True)
            run_stage_process(stage, kwargs, _named(output), threads)
            print(f"[rvi] stage {stage} done in {time.time() - start:.1f} s", flush=True)
        return
    # Multi-GPU training (devices: N, strategy: ddp): this process is rank 0, the stage starts the others.
    ranks = ddp_ranks(stage, kwargs, _named(output), threads)
    with redirect_output(log_file), thread_limits(threads), ranks:
        start = time.time()
        print(f"[rvi] stage {stage} (python {sys.executable}, threads {threads})", flush=True)
        print(f"[rvi] params: {json.dumps(_named(params), default=str, sort_keys=True)}", flush=True)
        try:
            func(**kwargs, threads=int(threads))
        except BaseException:
            # The traceback belongs in the log that the user opens first (Snakemake points to it).
            traceback.print_exc()
            raise
        print(f"[rvi] stage {stage} done in {time.time() - start:.1f} s", flush=True)
