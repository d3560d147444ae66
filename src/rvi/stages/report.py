"""Reporting stages: the ground-truth scores of simulated studies and the papermill notebooks."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rvi.io.atomic import atomic_path, write_csv
from rvi.io.h5ad import read_obs
from rvi.stages.labels import annotation_groups


def _parse_region(region: str) -> tuple[str, int, int]:
    """``chr:start-end`` or ``chr-start-end`` -> (chrom, start, end)."""
    parts = region.replace(":", "-").rsplit("-", 2)
    return parts[0], int(parts[1]), int(parts[2])


def _overlapping_truth(selected: Sequence[str], truth: pd.DataFrame) -> list[list[int]]:
    """For each selected region, positions of truth regions it overlaps (tiles vs peaks both work)."""
    parsed = [_parse_region(r) for r in truth.index.astype(str)]
    by_chrom: dict[str, list[tuple[int, int, int]]] = {}
    for i, (c, s, e) in enumerate(parsed):
        by_chrom.setdefault(c, []).append((s, e, i))
    hits = []
    for region in selected:
        c, s, e = _parse_region(region)
        hits.append([i for (ts, te, i) in by_chrom.get(c, []) if ts < e and s < te])
    return hits


def ground_truth_report(
    report: str,
    cfg: Mapping,
    truth: str | None = None,
    scrublet: str | None = None,
    annotation: str | None = None,
    rna: str | None = None,
    cre_truth: str | None = None,
    cres: str | None = None,
    pairs: str | None = None,
    rna_latent: str | None = None,
    multimodal_latent: str | None = None,
    attribution: str | None = None,
    confusion: str | None = None,
    threads: int = 1,
) -> None:
    """Score a simulated run: Scrublet AUROC, annotation accuracy on unlabelled libraries, CRE precision and,
    with the multimodal model's outputs, its batch mixing beside the RNA model's and what it adds on the
    chromatin-only subtype pairs (``pairs``: the demo's subtype_pairs.csv).

    ``confusion``: where to write the annotation's cell counts per level x true x predicted label on the
    cells the accuracy rows judge (:func:`annotation_confusion`; header only without cell truth)."""
    rows = []
    confusion_table = pd.DataFrame(columns=CONFUSION_COLUMNS)
    levels = list(cfg["labels"]["levels"])
    pair_table = pd.read_csv(pairs) if pairs else None
    if truth:
        gt = pd.read_csv(truth, index_col=0)
        obs = read_obs(rna)
        rows += doublet_rows(gt, pd.read_csv(scrublet, index_col=0))
        ann = pd.read_csv(annotation, index_col=0)
        library_key = cfg["covariates"]["library_key"]
        excluded = _pair_types(pair_table)
        rows += annotation_rows(gt, ann, obs, levels, excluded, library_key=library_key)
        cells, _ = scored_cells(gt, ann, obs, levels, excluded, library_key)
        confusion_table = annotation_confusion(gt, ann, cells, levels)
        if rna_latent and multimodal_latent:
            rows += multimodal_rows(
                gt,
                obs,
                pd.read_parquet(rna_latent),
                pd.read_parquet(multimodal_latent),
                pd.read_parquet(attribution) if attribution else None,
                pair_table,
                cfg["covariates"],
                threads,
            )
        if cre_truth:
            groups, _ = annotation_groups(pd.read_csv(annotation, index_col=0), levels, cfg["select_cres"]["level"])
            parents = _truth_parents(gt)
            rows += cre_precision_rows(
                pd.read_csv(cres), pd.read_csv(cre_truth, index_col=0), cfg["ground_truth"]["top_n"], parents
            )
    table = pd.DataFrame(rows, columns=["check", "value", "threshold", "passed", "n", "detail"])
    print(table.to_string(index=False))
    write_csv(table, report, index=False)
    if confusion:
        write_csv(confusion_table, confusion, index=False)


def doublet_rows(gt: pd.DataFrame, scores: pd.DataFrame) -> list[dict]:
    from sklearn.metrics import roc_auc_score

    s = scores["doublet_score"].dropna()
    y = gt["is_doublet"].reindex(s.index)
    ok = y.notna()
    y, s = y[ok].astype(bool), s[ok]
    auc = float(roc_auc_score(y, s)) if y.nunique() == 2 else float("nan")
    return [
        {
            "check": "scrublet_auroc",
            "value": auc,
            "threshold": 0.85,
            "passed": auc >= 0.85,
            "n": len(s),
            "detail": f"{int(y.sum())} true doublets",
        }
    ]


def _pair_types(pairs: pd.DataFrame | None, kind: str = "chromatin_only") -> set[str]:
    if pairs is None:
        return set()
    sel = pairs.loc[pairs["kind"].astype(str) == kind]
    return set(sel["type_a"].astype(str)) | set(sel["type_b"].astype(str))


def scored_cells(
    gt: pd.DataFrame,
    ann: pd.DataFrame,
    obs: pd.DataFrame,
    levels: Sequence[str],
    excluded_types: set[str] = frozenset(),
    library_key: str = "library",
) -> tuple[pd.Index, pd.Index]:
    """The cells the annotation is judged on: singlets of the libraries without any partial label, without
    ``excluded_types`` (first index) and with them (second)."""
    obs = obs.reindex(ann.index)
    labelled_libs = set(obs.loc[obs[levels].notna().any(axis=1), library_key].astype(str)) if levels else set()
    unlabelled = (~obs[library_key].astype(str).isin(labelled_libs)).to_numpy()
    singlet = (~gt["is_doublet"].reindex(ann.index).fillna(False).astype(bool)).to_numpy()
    kept = (~gt["cell_type"].reindex(ann.index).astype(str).isin(set(excluded_types))).to_numpy()
    return ann.index[unlabelled & singlet & kept], ann.index[unlabelled & singlet]


def _truth_columns(gt: pd.DataFrame, levels: Sequence[str]) -> dict[str, str]:
    """Truth column per label level: the simulator's cell_type_l<i>, else a column named as the level."""
    return {lv: f"cell_type_l{i + 1}" if f"cell_type_l{i + 1}" in gt else lv for i, lv in enumerate(levels)}


CONFUSION_COLUMNS = ["level", "true", "predicted", "n_cells"]


def annotation_confusion(gt: pd.DataFrame, ann: pd.DataFrame, cells: pd.Index, levels: Sequence[str]) -> pd.DataFrame:
    """Cell counts per (level, true label, predicted label) on ``cells``; a missing prediction stays NaN."""
    truth_cols = _truth_columns(gt, levels)
    parts = []
    for level in levels:
        if level not in ann or truth_cols[level] not in gt:
            continue
        pair = pd.DataFrame(
            {"true": gt.loc[cells, truth_cols[level]].astype(str), "predicted": ann.loc[cells, level].astype(object)}
        )
        counts = pair.groupby(["true", "predicted"], dropna=False).size().rename("n_cells").reset_index()
        parts.append(counts.assign(level=level))
    if not parts:
        return pd.DataFrame(columns=CONFUSION_COLUMNS)
    return pd.concat(parts, ignore_index=True)[CONFUSION_COLUMNS]


def annotation_rows(
    gt: pd.DataFrame,
    ann: pd.DataFrame,
    obs: pd.DataFrame,
    levels: Sequence[str],
    excluded_types: set[str] = frozenset(),
    library_key: str = "library",
) -> list[dict]:
    """Accuracy on libraries without any partial label, per level; the finest labelled level is the check.

    ``excluded_types`` (the chromatin-only subtypes, which the RNA-based annotation cannot tell apart by
    design) are left out of these rows; :func:`multimodal_rows` scores them from the joint latent."""
    obs = obs.reindex(ann.index)
    cells, judged = scored_cells(gt, ann, obs, levels, excluded_types, library_key)
    rows = _excluded_pair_rows(gt, ann, judged, levels, excluded_types)
    finest = [lv for lv in levels if obs[lv].notna().any()][-1:] if levels else []
    truth_cols = _truth_columns(gt, levels)
    for level in levels:
        pred = ann.loc[cells, level].astype(object)
        true = gt.loc[cells, truth_cols[level]].astype(str)
        acc = float((pred.astype(str) == true).mean()) if len(cells) else float("nan")
        is_check = level in finest
        rows.append(
            {
                "check": f"annotation_accuracy_{level}" + ("_finest" if is_check else ""),
                "value": acc,
                "threshold": 0.9 if is_check else np.nan,
                "passed": (acc >= 0.9) if is_check else np.nan,
                "n": len(cells),
                "detail": f"unlabelled libraries {sorted(set(obs.loc[cells, 'library'].astype(str)))}; "
                f"{int(pred.isna().sum())} cells without a label at this level"
                + (f"; chromatin-only subtypes {sorted(excluded_types)} scored apart" if excluded_types else ""),
            }
        )
    if levels and len(cells):
        # Each cell judged at the finest level the vote assigned (coarser where the cluster was mixed).
        used = ann.loc[cells, "annotation_level"]
        hits = [lv == lv and str(ann.at[c, lv]) == str(gt.at[c, truth_cols[lv]]) for c, lv in zip(cells, used)]
        rows.append(
            {
                "check": "annotation_accuracy_assigned_level",
                "value": float(np.mean(hits)),
                "threshold": np.nan,
                "passed": np.nan,
                "n": len(cells),
                "detail": "label at each cell's annotation_level vs truth; "
                + ", ".join(f"{k}: {v}" for k, v in used.fillna("none").value_counts().items()),
            }
        )
    return rows


def _excluded_pair_rows(gt, ann, cells, levels, excluded_types) -> list[dict]:
    """Finest-level accuracy of the (RNA-based) annotation on the chromatin-only subtypes, for reference."""
    if not excluded_types or not levels:
        return []
    level = levels[-1]
    col = f"cell_type_l{len(levels)}" if f"cell_type_l{len(levels)}" in gt else level
    true = gt.loc[cells, col].astype(str)
    sel = true.isin(excluded_types).to_numpy()
    pred = ann.loc[cells[sel], level].astype(str)
    acc = float((pred == true[sel]).mean()) if sel.any() else float("nan")
    return [
        {
            "check": f"annotation_accuracy_{level}_chromatin_only_subtypes",
            "value": acc,
            "threshold": np.nan,
            "passed": np.nan,
            "n": int(sel.sum()),
            "detail": "annotation transfers labels on the RNA latent: these subtypes share one RNA profile",
        }
    ]


def atac_share(attribution: pd.DataFrame) -> pd.Series:
    """Per cell: the ATAC block's share of the decoder-balanced Jacobian energy, frob_atac^2 / sum_b frob_b^2."""
    blocks = [c for c in attribution.columns if c.startswith("frob_") and "_decoder_" not in c]
    if "frob_atac" not in blocks:
        raise KeyError(f"attribution has no frob_atac column (blocks: {blocks})")
    energy = attribution[blocks].astype(float) ** 2
    return energy["frob_atac"] / energy.sum(axis=1)


def multimodal_rows(
    gt: pd.DataFrame,
    obs: pd.DataFrame,
    rna_latent: pd.DataFrame,
    multimodal_latent: pd.DataFrame,
    attribution: pd.DataFrame | None,
    pairs: pd.DataFrame | None,
    covariates: Mapping,
    threads: int = 1,
) -> list[dict]:
    """The multimodal latent beside the RNA model's on the same cells: batch mixing by library and dataset
    (check: multimodal >= RNA), kNN accuracy of the true cell type over every singlet (check: multimodal >=
    RNA), kNN accuracy within each chromatin-only subtype pair (check: joint >= 0.9)
    and the ATAC share of the attribution on those cells vs the RNA-only pairs' cells."""
    from rvi.metrics import batch_mixing_score

    cells = multimodal_latent.index.intersection(rna_latent.index)
    z_mm = multimodal_latent.loc[cells].to_numpy(dtype=np.float32)
    z_rna = rna_latent.loc[cells].to_numpy(dtype=np.float32)
    meta = obs.reindex(cells)
    rows = []
    for key in dict.fromkeys([covariates["library_key"], covariates["dataset_key"]]):
        if not key or key not in meta:
            continue
        batch = meta[key].astype(str).to_numpy()
        mm, rn = (batch_mixing_score(z, batch, n_jobs=threads) for z in (z_mm, z_rna))
        rows.append(
            {
                "check": f"multimodal_batch_mixing_{key}",
                "value": mm,
                "threshold": rn,
                "passed": mm >= rn - 0.02,
                "n": len(cells),
                "detail": f"RNA model {rn:.3f} on the same cells (threshold; passes within 0.02)",
            }
        )
    from rvi.metrics.scib import knn_label_accuracy

    doublet = gt["is_doublet"] if "is_doublet" in gt else pd.Series(False, index=gt.index)
    singlet = ~doublet.reindex(cells).fillna(False).astype(bool).to_numpy()
    types = gt["cell_type"].reindex(cells).astype(str).to_numpy()
    type_counts = np.unique(types[singlet], return_counts=True)[1]
    if len(type_counts) > 1 and type_counts.min() >= 5:  # 5-fold stratified CV needs 5 cells per type
        joint, rna_only = (knn_label_accuracy(z[singlet], types[singlet]) for z in (z_mm, z_rna))
        rows.append(
            {
                "check": "multimodal_true_type_accuracy",
                "value": joint,
                "threshold": rna_only,
                "passed": joint >= rna_only - 0.02,
                "n": int(singlet.sum()),
                "detail": f"5-fold kNN (k=15) of the true cell type, every singlet; RNA model {rna_only:.3f} "
                "(threshold; passes within 0.02)",
            }
        )
    if pairs is None:
        return rows
    share = atac_share(attribution).reindex(cells).to_numpy() if attribution is not None else None
    shares = {}
    for kind in ("chromatin_only", "rna_only"):
        sel_pairs = pairs.loc[pairs["kind"].astype(str) == kind]
        for a, b in zip(sel_pairs["type_a"].astype(str), sel_pairs["type_b"].astype(str)):
            sel = singlet & np.isin(types, [a, b])
            if share is not None:
                shares.setdefault(kind, []).append(share[sel])
            if kind != "chromatin_only" or len(np.unique(types[sel])) < 2:
                continue
            joint, rna_only = (knn_label_accuracy(z[sel], types[sel]) for z in (z_mm, z_rna))
            rows.append(
                {
                    "check": f"chromatin_only_pair_accuracy_{a}_{b}",
                    "value": joint,
                    "threshold": 0.9,
                    "passed": joint >= 0.9,
                    "n": int(sel.sum()),
                    "detail": f"5-fold kNN (k=15) on the joint latent; RNA model's latent {rna_only:.3f} (chance 0.5)",
                }
            )
    if share is not None and "chromatin_only" in shares:
        chrom = float(np.median(np.concatenate(shares["chromatin_only"])))
        other = np.concatenate(shares["rna_only"]) if "rna_only" in shares else np.array([])
        ref = float(np.median(other)) if other.size else float("nan")
        rows.append(
            {
                "check": "chromatin_only_atac_share",
                "value": chrom,
                "threshold": ref,
                "passed": bool(chrom > ref) if other.size else np.nan,
                "n": int(sum(len(x) for x in shares["chromatin_only"])),
                "detail": f"median ATAC share of the attribution; RNA-only pairs' cells {ref:.3f} (threshold)",
            }
        )
    return rows


def _truth_parents(gt: pd.DataFrame) -> dict[str, str]:
    parents = {}
    cols = [c for c in ("cell_type_l1", "cell_type_l2", "cell_type_l3") if c in gt]
    for coarse, fine in zip(cols[:-1], cols[1:]):
        pairs = gt[[fine, coarse]].dropna().astype(str).drop_duplicates()
        parents |= dict(zip(pairs[fine], pairs[coarse]))
    return parents


def cre_precision_rows(table: pd.DataFrame, truth: pd.DataFrame, top_n: int, parents: Mapping[str, str]) -> list[dict]:
    """Precision of the top N CREs per group: a hit overlaps a simulated region of the group or an ancestor."""
    top = table.sort_values(["group", "rank"]).groupby("group", sort=False).head(top_n)
    hits = _overlapping_truth(top["region"].astype(str).tolist(), truth)
    owners = truth["cell_type"].astype(str).to_numpy()
    strict, lineage = [], []
    for group, idx in zip(top["group"].astype(str), hits):
        ancestry = {group}
        node = group
        while node in parents:
            node = parents[node]
            ancestry.add(node)
        found = {owners[i] for i in idx}
        strict.append(group in found)
        lineage.append(bool(found & ancestry))
    n = len(top)
    prec = float(np.mean(lineage)) if n else float("nan")
    return [
        {
            "check": "cre_precision_top_n",
            "value": prec,
            "threshold": 0.8,
            "passed": prec >= 0.8,
            "n": n,
            "detail": f"top {top_n} per group; hit = simulated region of the group or an ancestor",
        },
        {
            "check": "cre_precision_top_n_exact_group",
            "value": float(np.mean(strict)) if n else float("nan"),
            "threshold": np.nan,
            "passed": np.nan,
            "n": n,
            "detail": "hit = simulated region owned by exactly the group",
        },
    ]


# --------------------------------------------------------------------------------------------------
# sweeps
# --------------------------------------------------------------------------------------------------


def _cell(value):
    """An override as one CSV cell: scalars as they are, lists and mappings as JSON."""
    import json

    if isinstance(value, list | tuple | Mapping):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def flatten_overrides(overrides: Mapping, prefix: str = "") -> dict[str, Any]:
    """Nested overrides -> ``{"training.validation_fraction": 0.2, ...}`` (lists stay values).

    An empty mapping given as an override (``module_kwargs: {}``) is kept as ``{}`` under its own key.
    """
    flat: dict[str, Any] = {}
    for key in sorted(overrides, key=str):
        value = overrides[key]
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= flatten_overrides(value, prefix=f"{name}.")
        else:
            flat[name] = copy.deepcopy(value)
    return flat


def sweep_table(
    experiments: Sequence[str], metrics: Sequence[str], history: Sequence[str], overrides: Mapping
) -> pd.DataFrame:
    """One row per experiment: its model's metrics (the ``rvi`` row of metrics.csv), a training summary
    (``n_epochs``, last and best ``elbo_validation``) and its flattened overrides (``training.seed``, ...)."""
    if not (len(experiments) == len(metrics) == len(history)):
        raise ValueError(
            f"sweep table: {len(experiments)} experiments but {len(metrics)} metrics and {len(history)} history files"
        )
    rows, override_cols = [], {}
    for name, metrics_path, history_path in zip(experiments, metrics, history):
        table = pd.read_csv(metrics_path, index_col=0)
        if table.empty:
            raise ValueError(f"sweep experiment {name!r}: {metrics_path} has no rows")
        row = {"experiment": name}
        row |= table.loc["rvi"].to_dict() if "rvi" in table.index else table.iloc[0].to_dict()
        hist = pd.read_csv(history_path, index_col=0)
        row["n_epochs"] = len(hist)
        if "elbo_validation" in hist and hist["elbo_validation"].notna().any():
            row["elbo_validation_last"] = float(hist["elbo_validation"].dropna().iloc[-1])
            row["elbo_validation_min"] = float(hist["elbo_validation"].min())
        flat = {k: _cell(v) for k, v in flatten_overrides(overrides.get(name) or {}).items()}
        override_cols |= dict.fromkeys(flat)
        rows.append((row, flat))
    frame = pd.DataFrame([row for row, _ in rows])
    clash = sorted(set(override_cols) & set(frame.columns))
    if clash:
        raise ValueError(f"sweep table: override key(s) {clash} collide with metric columns")
    for col in sorted(override_cols):
        # object dtype: an integer override stays an integer next to experiments that do not set it
        frame[col] = pd.Series([flat.get(col, np.nan) for _, flat in rows], index=frame.index, dtype=object)
    return frame


def sweep_metrics(
    metrics: Sequence[str],
    history: Sequence[str],
    table: str,
    stage: str,
    experiments: Sequence[str],
    overrides: Mapping,
    threads: int = 1,
) -> None:
    """Collect every sweep experiment's metrics into one CSV (written atomically), one row per experiment."""
    frame = sweep_table(list(experiments), list(metrics), list(history), overrides)
    frame.insert(1, "stage", stage)
    print(frame.to_string(index=False))
    write_csv(frame, table, index=False)


# --------------------------------------------------------------------------------------------------
# notebooks
# --------------------------------------------------------------------------------------------------


def notebook(
    template: str,
    notebook: str,
    name: str,
    study: str,
    labels: Mapping,
    covariates: Mapping,
    extra: Mapping | None = None,
    threads: int = 1,
    **inputs,
) -> None:
    """Execute a papermill template with the stage's output paths as parameters (headless, python3 kernel).

    The ``python3`` kernelspec of ipykernel runs ``sys.executable`` (jupyter_client substitutes it for
    ``python``), i.e. the interpreter running this job, so the notebook sees the same environment.
    """
    import papermill as pm

    parameters = {
        "study": study,
        "label_levels": list(labels["levels"]),
        "library_key": covariates["library_key"],
        "dataset_key": covariates["dataset_key"],
        **{k: str(Path(v).resolve()) for k, v in inputs.items()},
        **dict(extra or {}),
    }
    with atomic_path(notebook) as tmp:
        pm.execute_notebook(
            template,
            str(tmp),
            parameters=parameters,
            kernel_name="python3",
            cwd=os.getcwd(),
            progress_bar=False,
            log_output=True,
        )
    print(f"notebook {name}: {notebook}")
