"""Evaluation stages: the baselines (PCA, Harmony, scVI), ``evaluate`` (every embedding scored side by side)
and ``study_report`` (one self-contained HTML file). See ``docs/metrics_spec.md``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from rvi.io.atomic import atomic_dir, atomic_path, save_figure, write_csv, write_parquet

BASELINES = ("pca", "harmony", "scvi")


def evaluation_data(rna: str, cells: str, genes: str | None = None):
    """Raw counts of the cells the rvi RNA model kept (``cells.csv`` ``pass_qc``), on its genes when given."""
    import anndata as ad

    table = pd.read_csv(cells, index_col=0)
    if "pass_qc" not in table:
        raise KeyError(f"{cells} has no 'pass_qc' column (columns: {list(table.columns)})")
    kept = table.index[table["pass_qc"].astype(bool)].astype(str)
    adata = ad.read_h5ad(rna)
    adata.obs_names = adata.obs_names.astype(str)
    missing = kept.difference(adata.obs_names)
    if len(missing):
        raise ValueError(f"{len(missing)} cells of {cells} are not in {rna}, e.g. {missing[:3].tolist()}")
    adata = adata[kept]
    if genes:
        gene_list = pd.read_csv(genes)["gene"].astype(str)
        absent = pd.Index(gene_list).difference(adata.var_names)
        if len(absent):
            raise ValueError(f"{len(absent)} genes of {genes} are not in {rna}, e.g. {absent[:3].tolist()}")
        adata = adata[:, gene_list.to_numpy()]
    return adata.copy()


def _frame(values: np.ndarray, names, prefix: str) -> pd.DataFrame:
    return pd.DataFrame(
        values, index=pd.Index(names, name="obs_name"), columns=[f"{prefix}{i}" for i in range(values.shape[1])]
    )


def baseline_pca(rna: str, cells: str, genes: str, embedding: str, info: str, cfg: Mapping, threads: int = 1) -> None:
    """Unintegrated PCA of the RNA model's cells and genes (PC1 dropped when it tracks depth)."""
    from rvi.evaluation.baselines import pca_embedding

    spec = cfg["evaluate"]
    adata = evaluation_data(rna, cells, genes)
    z, meta = pca_embedding(adata, spec["pca"]["n_comps"], spec["pca"]["drop_pc1_threshold"], spec["seed"])
    print(f"PCA baseline: {z.shape[1]} components; PC1 vs total counts r = {meta['pc1_total_counts_corr']:.2f}")
    write_parquet(_frame(z, adata.obs_names, "PC"), embedding)
    write_csv(pd.DataFrame([meta]), info, index=False)


def baseline_harmony(rna: str, cells: str, pca: str, embedding: str, cfg: Mapping, threads: int = 1) -> None:
    """Harmony on the PCA baseline, batch = the library key."""
    from rvi.evaluation.baselines import harmony_embedding
    from rvi.io.h5ad import read_obs

    spec, cov = cfg["evaluate"], cfg["covariates"]
    pcs = pd.read_parquet(pca)
    obs = read_obs(rna)
    obs.index = obs.index.astype(str)
    z = harmony_embedding(
        pcs.to_numpy(),
        obs.loc[pcs.index.astype(str)],
        cov["library_key"],
        spec["seed"],
        spec["harmony"]["max_iter"],
        threads,
    )
    write_parquet(_frame(z, pcs.index, "H"), embedding)


def baseline_scvi(
    rna: str, cells: str, genes: str, embedding: str, history: str, cfg: Mapping, threads: int = 1
) -> None:
    """scvi-tools SCVI with its usual settings, batch = the library key, on the RNA model's cells and genes."""
    from rvi.evaluation.baselines import scvi_embedding

    spec, cov = cfg["evaluate"], cfg["covariates"]
    adata = evaluation_data(rna, cells, genes)
    z, hist = scvi_embedding(adata, cov["library_key"], {**spec["scvi"], "seed": spec["seed"]}, threads)
    print(f"scVI baseline: {z.shape[1]} latent dims, {len(hist)} epochs")
    write_parquet(_frame(z, adata.obs_names, "z"), embedding)
    write_csv(hist, history)


def collect_embeddings(inputs: Mapping[str, str], external: Mapping, modality_latents: str | None = None) -> dict:
    """name -> cells x dims table: the ``emb_<name>`` inputs, the multimodal slices, the external ones."""
    from rvi.evaluation.embeddings import modality_slices, read_embedding

    tables = {}
    for key, path in inputs.items():
        tables[key.removeprefix("emb_")] = pd.read_parquet(path)
        if key == "emb_rvi_multimodal" and modality_latents:
            # The per-modality slices right after the joint latent they belong to.
            tables |= modality_slices(pd.read_parquet(modality_latents), "rvi_multimodal")
    for name, source in external.items():
        if name in tables:
            raise ValueError(f"evaluate.external: {name!r} is already the name of a workflow embedding")
        tables[name] = read_embedding(source, name)
    for frame in tables.values():
        frame.index = frame.index.astype(str)
    return tables


def evaluate(
    rna: str,
    cells: str,
    umap: str,
    scib: str,
    headline: str,
    composite: str,
    per_cell: str,
    heatmap_png: str,
    correlation_png: str,
    isolation_png: str,
    failure_png: str,
    cfg: Mapping,
    modality_latents: str | None = None,
    threads: int = 1,
    **inputs: str,
) -> None:
    """Score every embedding of the study: the ``emb_<name>`` inputs, the multimodal model's per-modality
    slices and the external ones of ``evaluate.external`` (declared as ``ext_<name>`` inputs so that a
    changed file reruns the stage; read from the config's source)."""
    from rvi.evaluation import plots
    from rvi.evaluation.embeddings import align_embedding
    from rvi.evaluation.scoring import score_embeddings

    spec, cov, levels = cfg["evaluate"], cfg["covariates"], cfg["labels"]["levels"]
    embeddings = {k: v for k, v in inputs.items() if k.startswith("emb_")}
    tables = collect_embeddings(embeddings, spec["external"], modality_latents)
    adata = evaluation_data(rna, cells)
    # Score on the cells every workflow model has (the multimodal model may lose cells without ATAC).
    own = [t for n, t in tables.items() if n not in spec["external"]]
    keep = adata.obs_names
    for t in own:
        keep = keep.intersection(t.index, sort=False)
    if len(keep) < adata.n_obs:
        print(f"evaluate: {len(keep)} of {adata.n_obs} QC-passed cells are in every workflow embedding")
        adata = adata[keep].copy()
    arrays = {name: align_embedding(t, adata.obs_names, name) for name, t in tables.items()}
    print(f"evaluate: {len(arrays)} embeddings on {adata.n_obs} cells: {', '.join(arrays)}")
    result = score_embeddings(
        adata,
        arrays,
        library_key=cov["library_key"],
        dataset_key=cov["dataset_key"],
        technical_covariate_keys=cov["technical_covariate_keys"],
        label_levels=levels,
        scib_label=spec["scib"]["label_level"],
        scib_cells=spec["scib"]["max_cells"],
        run_scib=spec["scib"]["enabled"],
        n_neighbors=spec["n_neighbors"],
        marker_genes=spec["markers"],
        seed=spec["seed"],
        threads=threads,
    )
    for note in result.notes:
        print(f"note: {note}")
    print(f"{len(result.marker_genes)} marker genes")
    print(result.neighbourhood.round(3).to_string())
    scib_table = (
        result.scib if result.scib is not None else pd.DataFrame(index=pd.Index(list(arrays), name="embedding"))
    )
    scib_table = scib_table.copy()
    scib_table["note"] = "; ".join(n for n in result.notes if "scib" in n) or ""
    notes = pd.Series(result.notes, dtype=str)
    with atomic_dir(per_cell) as tmp:
        for name, frame in result.per_cell.items():
            frame.to_parquet(Path(tmp) / f"{name}.parquet")
        pd.DataFrame({"marker_gene": result.marker_genes}).to_csv(Path(tmp) / "marker_genes.csv", index=False)
        notes.to_frame("note").to_csv(Path(tmp) / "notes.csv", index=False)
    write_csv(scib_table, scib)
    write_csv(result.neighbourhood, headline)
    write_csv(result.composite, composite)
    heat = result.composite.join(result.neighbourhood[list(_headline_cols())], how="left")
    save_figure(plots.metric_heatmap(heat), heatmap_png)
    coords = pd.read_parquet(umap)
    coords.index = coords.index.astype(str)
    coords = coords.reindex(adata.obs_names).dropna()
    save_figure(plots.correlation_umaps(coords, result.per_cell, layout_name="rvi RNA model"), correlation_png)
    save_figure(plots.isolation_bars(result.per_cell), isolation_png)
    save_figure(plots.failure_composition(result.per_cell), failure_png)


def _headline_cols():
    from rvi.evaluation.scoring import HEADLINE_COLUMNS

    return HEADLINE_COLUMNS


def study_report(report: str, cfg: Mapping, threads: int = 1, **files: str) -> None:
    """``results/{study}/report.html``: summary, metric table and heatmap, every stage's key figures."""
    from rvi.evaluation.report import build_study_report

    html = build_study_report(cfg, {k: Path(v) for k, v in files.items()})
    with atomic_path(report) as tmp:
        Path(tmp).write_text(html, encoding="utf-8")
    print(f"report: {report} ({len(html) / 1e6:.1f} MB)")
