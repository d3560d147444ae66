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
  on retries, plus the LSF flags (queue, ``-M``/``rusage``/``-gpu``) that the LSF executor plugin cannot
  express by itself.
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
    "run_rule",
    "sample_sheet_path",
    "stage_params",
    "validate_config",
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
    "notebook",
    "ground_truth_report",
)
GPU_STAGES = ("train_rna", "train_multimodal")
#: Built-in resource defaults under ``resources.default`` (the config overrides them key by key).
DEFAULT_RESOURCES = {
    "threads": 1,
    "mem_mb": 4000,
    "runtime": 60,
    "gpu": 0,
    "gpu_mem_mb": 0,
    "queue": "normal",
    "lsf_extra_flags": "",
}

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
    "ground_truth_report": ("labels", "select_cres"),
}
#: Stages whose own config section has another name.
_OWN_SECTION = {"ground_truth_report": "ground_truth"}


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
    for section in ("train_rna", "train_multimodal"):
        level = cfg[section]["metrics"]["label_level"]
        if level is not None and level not in levels:
            problems.append(
                f"bad value for '{section}.metrics.label_level': {level!r} (not one of labels.levels {levels})"
            )
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
    problems = _cross_key_problems(cfg)
    if problems:
        raise ConfigError(problems)
    if check_sample_sheet and not cfg["demo_data"]["generate"]:
        problems = _missing_config_files(cfg)
        try:
            read_samples(cfg)
        except ConfigError as exc:
            problems = exc.problems + problems
        if problems:
            raise ConfigError(problems)
    return cfg


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
    problems = _sheet_problems(cfg, sheet, path)
    if check_files:
        problems += _missing_files(cfg, sheet, path)
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
    ``gpu: 1``. Memory grows geometrically with
    the Snakemake ``attempt`` (``--retries``): ``mem_mb * mem_attempt_factor ** (attempt - 1)``.
    """

    def __init__(self, cfg: Mapping):
        table = cfg["resources"]
        self.factor = float(table["mem_attempt_factor"])
        self.default = {**DEFAULT_RESOURCES, **table["default"]}
        self.table = {k: dict(v) for k, v in table.items() if k not in ("default", "mem_attempt_factor")}

    def spec(self, stage: str) -> dict:
        if stage not in STAGES:
            raise KeyError(f"unknown stage {stage!r} (stages: {list(STAGES)})")
        # GPU stages ask for one GPU unless their own entry says otherwise (gpu: 0 trains on CPU).
        gpu = {"gpu": 1} if stage in GPU_STAGES else {}
        return {**self.default, **gpu, **self.table.get(stage, {})}

    def threads(self, stage: str) -> int:
        return int(self.spec(stage)["threads"])

    def mem_mb(self, stage: str, attempt: int = 1) -> int:
        return int(round(self.spec(stage)["mem_mb"] * self.factor ** (max(int(attempt), 1) - 1)))

    def runtime(self, stage: str) -> int:
        return int(self.spec(stage)["runtime"])

    def gpu(self, stage: str) -> int:
        return int(self.spec(stage)["gpu"])

    def queue(self, stage: str) -> str:
        return str(self.spec(stage)["queue"])

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

        ``gpu`` is declared on the GPU stages (and any stage whose table entry asks for one). Snakemake's
        local scheduler only constrains resources named in ``--resources``, so with plain ``--cores N``
        a GPU stage still runs on a CPU-only machine (the model then trains with
        ``accelerator='auto'`` on the CPU); ``--resources gpu=1`` serialises GPU jobs on a GPU box.
        """
        res: dict[str, Any] = {
            "mem_mb": lambda wildcards, attempt: self.mem_mb(stage, attempt),
            "runtime": self.runtime(stage),
            "lsf_queue": self.queue(stage),
            "lsf_extra": lambda wildcards, attempt: self.lsf_extra(stage, attempt),
        }
        if stage in GPU_STAGES or self.gpu(stage) > 0:
            res["gpu"] = self.gpu(stage)
        return res


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

    func = stages.STAGE_FUNCTIONS[stage]
    kwargs = {**_named(input), **_named(output), **_named(params)}
    if wildcards is not None and stage == "notebook":
        kwargs["name"] = wildcards.notebook
    log_file = _plain(list(log)[0]) if log else None
    with redirect_output(log_file), thread_limits(threads):
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
