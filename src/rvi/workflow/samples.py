"""The study's sample sheet: reading it, checking it against the config, and the rule lookups built on it.

:func:`read_samples` is run at start (before any job) unless demo data is generated, in which case the
``demo_data`` checkpoint writes the sheet and the Snakefile reads it then. Every problem found (missing
files, duplicate ids, a library in two datasets, covariate columns the sheet lacks, bad label or
fragments files) is reported in one :class:`~rvi.workflow.schema.ConfigError`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path

from rvi.io import PATH_COLUMNS
from rvi.nesting import libraries_in_several_datasets, nesting_message
from rvi.workflow.schema import ConfigError

__all__ = [
    "COMPUTED_OBS_COLUMNS",
    "PATH_COLUMNS",
    "covariate_column_problems",
    "covariate_columns",
    "existing_inputs",
    "fragments_problems",
    "label_file_problems",
    "libraries",
    "missing_files",
    "read_samples",
    "sample_sheet_path",
    "work_relative",
]


def sample_sheet_path(cfg: Mapping) -> str:
    """The sample sheet of a validated config (the generated one for demo data)."""
    if cfg["sample_sheet"]:
        return cfg["sample_sheet"]
    return str(Path(cfg["demo_data"]["outdir"]) / "samples.tsv")


def _read_sheet_table(cfg: Mapping, path: str):
    from rvi.io.samples import read_sample_sheet

    # Paths are checked below, all at once, so a template config lists every missing file in one go.
    cov = cfg["covariates"]
    return read_sample_sheet(path, check_paths=False, library_key=cov["library_key"], dataset_key=cov["dataset_key"])


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
        sheet = _read_sheet_table(cfg, path)
    except (ValueError, KeyError) as exc:
        raise ConfigError([f"sample sheet {path!r}: {exc}"]) from exc
    problems = _sheet_problems(cfg, sheet, path) + covariate_column_problems(cfg, sheet, path)
    if check_files:
        problems += missing_files(cfg, sheet, path)
        problems += label_file_problems(cfg, sheet)
        problems += fragments_problems(cfg, sheet)
    if problems:
        raise ConfigError(problems)
    return sheet


def missing_files(cfg: Mapping, sheet, path: str, show: int = 20) -> list[str]:
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
        bad = libraries_in_several_datasets(sheet, lib, ds)
        if bad:
            problems.append(f"sample sheet {path!r}: {nesting_message(bad, lib, ds)}")
    if ds is not None and ds in sheet.columns:
        datasets = set(map(str, sheet[ds].unique()))
        unknown = sorted(set(cfg["cell_qc"]["per_dataset"]) - datasets)
        if unknown:
            problems.append(
                f"unknown dataset(s) {unknown} in 'cell_qc.per_dataset' "
                f"(datasets in the sample sheet: {sorted(datasets)})"
            )
    elif cfg["cell_qc"]["per_dataset"]:
        problems.append("'cell_qc.per_dataset' needs covariates.dataset_key")
    return problems


#: obs columns every cell has besides the sample-sheet metadata (load_rna and merge_rna add them; the
#: library column, ``covariates.library_key``, is a sheet column).
COMPUTED_OBS_COLUMNS = ("barcode", "fragments_path", "n_genes", "total_counts", "mt_frac")


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


def existing_inputs(cfg: Mapping, paths: Mapping[str, str]) -> dict[str, str]:
    """A rule's raw input files; in preview mode the ones not on disk yet are left out of the DAG."""
    if not cfg["preview"]:
        return dict(paths)
    return {k: v for k, v in paths.items() if Path(v).exists()}
