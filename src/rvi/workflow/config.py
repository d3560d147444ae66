"""Loading a study config: schema validation with defaults, cross-key checks, sweeps and the sample sheet.

:func:`load_study` is what the Snakefile runs before any job: every problem stops the run in one
:class:`~rvi.workflow.schema.ConfigError` that names the offending key and value. It builds the
config's :class:`~rvi.workflow.resources.ResourceTable` once and hands it to every check and to the
Snakefile.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from rvi.workflow.checks import cross_key_problems
from rvi.workflow.resources import ResourceTable
from rvi.workflow.samples import missing_files, read_samples, sample_sheet_path
from rvi.workflow.schema import ConfigError, validate_config
from rvi.workflow.sweeps import sweep_problems

__all__ = ["load_config", "load_study"]


def load_study(
    config: Mapping,
    schema_path: str | os.PathLike | None = None,
    check_sample_sheet: bool = True,
) -> tuple[dict, ResourceTable]:
    """Validate a study config, fill defaults, and check the sample sheet when it already exists.

    Returns the validated config and its resource table. The sample sheet is read and validated here
    (before any job runs) unless demo data is generated, in which case the ``demo_data`` checkpoint
    writes it and :func:`~rvi.workflow.samples.read_samples` validates it then. Paths are relative to
    the current (Snakemake working) directory.
    """
    cfg = validate_config(config, schema_path)
    res = ResourceTable(cfg)
    problems = cross_key_problems(cfg, res) + sweep_problems(cfg, schema_path, res)
    if problems:
        raise ConfigError(problems)
    if check_sample_sheet and not cfg["demo_data"]["generate"]:
        missing = _missing_config_files(cfg)
        problems = []
        try:
            sheet = read_samples(cfg, check_files=not cfg["preview"])
            if cfg["preview"]:
                missing += missing_files(cfg, sheet, str(sample_sheet_path(cfg)))
        except ConfigError as exc:
            problems = exc.problems
        if cfg["preview"] and missing and not problems:
            # Preview (dry runs only): say what is not on disk yet and build the DAG without it.
            print("preview: inputs not on disk yet:\n  - " + "\n  - ".join(missing), file=sys.stderr)
        elif problems or missing:
            raise ConfigError(problems + missing)
    return cfg, res


def load_config(
    config: Mapping,
    schema_path: str | os.PathLike | None = None,
    check_sample_sheet: bool = True,
) -> dict:
    """The validated config of :func:`load_study` (without its resource table)."""
    return load_study(config, schema_path, check_sample_sheet)[0]


def _missing_config_files(cfg: Mapping) -> list[str]:
    """Reference files named in the config (demo runs generate theirs, so they are not checked)."""
    paths = {"labels.hierarchy": cfg["labels"]["hierarchy"]}
    if "atac" in cfg["modalities"]:
        paths |= {f"load_atac.{k}": cfg["load_atac"][k] for k in ("chrom_sizes", "gene_annotation")}
    return [f"'{key}' = {path!r}: file not found" for key, path in paths.items() if path and not Path(path).exists()]
