"""The cell_qc stage: per-cell QC metrics and verdicts with per-dataset thresholds (``cell_qc.csv``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd


def cell_qc_table(
    obs: pd.DataFrame,
    cell_qc: Mapping,
    dataset_key: str | None,
    scrublet_table: pd.DataFrame | None = None,
    atac_table: pd.DataFrame | None = None,
    library_key: str | None = None,
) -> pd.DataFrame:
    """Per-cell QC metrics and decision with per-dataset thresholds (``pass_qc``, ``fail_reasons``).

    ``cell_qc`` is the config's ``cell_qc`` section (``default`` thresholds, ``per_dataset`` overrides);
    ``fail_reasons`` lists the failed checks of a cell, comma-separated (``min_counts,max_mt_frac``).
    """
    from rvi import qc

    table = obs[["total_counts", "n_genes", "mt_frac"]].copy()
    if library_key:
        table.insert(0, library_key, obs[library_key].astype(str))
    if dataset_key:
        table[dataset_key] = obs[dataset_key].astype(str)
    table["doublet_score"] = np.nan
    table["predicted_doublet"] = False
    if scrublet_table is not None:
        table["doublet_score"] = scrublet_table["doublet_score"].reindex(obs.index).to_numpy(dtype=float)
        pred = scrublet_table["predicted_doublet"].reindex(obs.index)
        table["predicted_doublet"] = pred.astype("boolean").fillna(False).to_numpy(dtype=bool)
    table["atac_fragments"] = np.nan
    if atac_table is not None:
        table["atac_fragments"] = atac_table["n_fragment"].reindex(obs.index).to_numpy(dtype=float)
    rules = {"default": dict(cell_qc["default"]), **{k: dict(v) for k, v in cell_qc["per_dataset"].items()}}
    drop_predicted = {k: bool(v.pop("remove_predicted_doublets", False)) for k, v in rules.items()}
    checks = qc.cell_qc_table(table, rules, dataset_key=dataset_key or "")
    fails = checks.drop(columns="keep")
    datasets = table[dataset_key] if dataset_key else pd.Series("", index=table.index)
    remove = datasets.map(lambda d: drop_predicted.get(d, drop_predicted["default"])).astype(bool)
    fails["fail_predicted_doublet"] = remove.to_numpy() & table["predicted_doublet"].to_numpy()
    table["pass_qc"] = ~fails.any(axis=1).to_numpy()
    names = [c.removeprefix("fail_") for c in fails.columns]
    flags = fails.to_numpy()
    table["fail_reasons"] = [",".join(n for n, f in zip(names, row) if f) for row in flags]
    return table


def read_cell_qc(path: str, covariates: Mapping) -> pd.DataFrame:
    """``cell_qc.csv`` as written (library / dataset as strings, empty ``fail_reasons`` as ``""``)."""
    text = {k: str for k in (covariates["library_key"], covariates["dataset_key"], "fail_reasons") if k}
    numeric_na = {"doublet_score": [""], "atac_fragments": [""]}
    table = pd.read_csv(path, index_col=0, dtype=text, keep_default_na=False, na_values=numeric_na)
    for col in ("pass_qc", "predicted_doublet"):
        table[col] = table[col].astype(str).str.lower().eq("true")
    return table


def cell_qc(rna: str, scrublet: str, table: str, cfg: Mapping, atac_qc: str | None = None, threads: int = 1) -> None:
    """QC metrics of every cell of ``rna.h5ad`` (plus Scrublet and, with ATAC, fragment counts) against
    the ``cell_qc`` thresholds of its dataset -> ``cell_qc.csv``, which both model stages read."""
    from rvi.io.atomic import write_csv
    from rvi.io.h5ad import read_obs

    cov = cfg["covariates"]
    obs = read_obs(rna)
    scr = pd.read_csv(scrublet, index_col=0)
    atac_table = pd.read_csv(atac_qc, index_col=0) if atac_qc else None
    qc_table = cell_qc_table(obs, cfg["cell_qc"], cov["dataset_key"], scr, atac_table, library_key=cov["library_key"])
    n_pass = int(qc_table["pass_qc"].sum())
    print(f"cell QC: {n_pass} of {len(qc_table)} cells pass")
    reasons = qc_table["fail_reasons"].str.split(",").explode()
    print(f"failed checks: {reasons[reasons != ''].value_counts().to_dict()}")
    if n_pass < 10:
        raise ValueError(f"only {n_pass} cells pass the cell_qc thresholds: relax them (config section 'cell_qc')")
    qc_table.index.name = "obs_name"
    write_csv(qc_table, table)
