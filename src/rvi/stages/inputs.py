"""Input stages: demo data, per-sample RNA / ATAC loading, merges, library QC and Scrublet."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from rvi.io.atomic import write_csv, write_h5ad
from rvi.io.h5ad import read_obs
from rvi.stages._util import restore_categoricals


def demo_data(sheet: str, cfg: Mapping, threads: int = 1, **outputs) -> None:
    """Write the simulated 10x demo (sample sheet, inputs, ground truth) to the sheet's folder."""
    from rvi.simulate import write_demo_dataset

    spec = cfg["demo_data"]
    outdir = Path(sheet).parent
    # write_demo_dataset replaces outdir as a whole, atomically.
    table = write_demo_dataset(outdir, seed=spec["seed"], **spec["kwargs"])
    missing = [p for p in [sheet, *outputs.values()] if not Path(p).exists()]
    if missing:
        raise RuntimeError(f"demo data written to {outdir} lack expected files {missing}")
    print(f"demo data: {len(table)} samples in {outdir}")


def load_rna(counts: str, h5ad: str, cfg: Mapping, sample: Mapping, threads: int = 1) -> None:
    """One sample -> AnnData of raw counts, obs_names ``{library}-{barcode}``, standard obs columns."""
    from rvi.io import PATH_COLUMNS
    from rvi.io.tenx import load_sample

    metadata = {k: v for k, v in sample.items() if k not in PATH_COLUMNS}
    library_key = cfg["covariates"]["library_key"]
    adata = load_sample(
        counts,
        library=str(sample[library_key]),
        library_key=library_key,
        metadata=metadata,
        feature_type=cfg["load_rna"]["feature_type"],
        labels_path=sample.get("labels_path") or None,
        label_columns=cfg["labels"]["levels"],
        fragments_path=sample.get("fragments_path") or None,
    )
    print(f"{sample['sample']}: {adata.n_obs} cells x {adata.n_vars} genes")
    write_h5ad(adata, h5ad)


def merge_rna(samples: Sequence[str], rna: str, qc_summary: str, cfg: Mapping, threads: int = 1) -> None:
    """Concatenate samples on the gene intersection, add QC metrics, drop shallow libraries."""
    import anndata as ad

    from rvi import qc

    spec, cov = cfg["merge_rna"], cfg["covariates"]
    adatas = [ad.read_h5ad(p) for p in samples]
    adata = ad.concat(adatas, join="inner", merge="same")
    restore_categoricals(adata.obs)
    if not adata.obs_names.is_unique:
        raise ValueError("duplicate cell names across samples: check library ids in the sample sheet")
    qc.compute_qc_metrics(adata, mt_prefixes=(spec["mt_prefix"],))
    limits = {"min_counts": spec["library_min_counts"], "min_frac": spec["library_min_frac"]}
    summary = qc.qc_summary(adata.obs, library_key=cov["library_key"], dataset_key=cov["dataset_key"], **limits)
    adata, dropped = qc.drop_low_quality_libraries(adata, library_key=cov["library_key"], **limits)
    if dropped:
        print(f"dropping libraries {dropped}: < {limits['min_frac']:.0%} of cells > {limits['min_counts']} counts")
    if adata.n_obs == 0:
        raise ValueError("every library failed the library QC (merge_rna thresholds): nothing to analyse")
    print(
        f"merged: {adata.n_obs} cells x {adata.n_vars} genes from {adata.obs[cov['library_key']].nunique()} libraries"
    )
    write_csv(summary, qc_summary, index=False)
    write_h5ad(adata, rna)


def scrublet(rna: str, scores: str, cfg: Mapping, library: str, threads: int = 1) -> None:
    """Scrublet on one library's raw counts (NaN scores below ``min_cells`` or for a dropped library)."""
    import anndata as ad

    from rvi.doublets import run_scrublet

    spec = cfg["scrublet"]
    key = cfg["covariates"]["library_key"]
    backed = ad.read_h5ad(rna, backed="r")
    try:
        mask = (backed.obs[key].astype(str) == str(library)).to_numpy()
        adata = backed[mask].to_memory()
    finally:
        backed.file.close()
    if adata.n_obs == 0:
        print(f"library {library} has no cells in {rna} (dropped by merge_rna QC)")
    table = run_scrublet(
        adata,
        library_key=key,
        expected_doublet_rate=spec["expected_doublet_rate"],
        threshold=spec["threshold"],
        min_cells=spec["min_cells"],
        n_prin_comps=spec["n_prin_comps"],
        random_state=spec["seed"],
    )
    table = table.set_index("obs_name")
    print(f"library {library}: {len(table)} cells, status {table['scrublet_status'].unique().tolist()}")
    write_csv(table, scores)


def merge_scrublet(tables: Sequence[str], scrublet: str, threads: int = 1) -> None:
    frames = [pd.read_csv(p, index_col=0) for p in tables]
    table = pd.concat([f for f in frames if len(f)] or frames[:1])
    table.index.name = "obs_name"
    write_csv(table, scrublet)


def load_atac(
    atac_source: str,
    rna: str,
    h5ad: str,
    cfg: Mapping,
    sample: Mapping,
    chrom_sizes: str | None = None,
    gene_annotation: str | None = None,
    threads: int = 1,
) -> None:
    """Fragments (or a 10x Peaks matrix) of one sample -> cell x feature counts for its RNA cells."""
    import anndata as ad

    from rvi import atac

    spec, library_key = cfg["load_atac"], cfg["covariates"]["library_key"]
    library = str(sample[library_key])
    obs = read_obs(rna)
    cells = obs.index[obs[library_key].astype(str) == library]
    if len(cells) == 0:
        print(f"library {library} has no RNA cells (dropped by merge_rna QC): writing an empty matrix")
        write_h5ad(ad.AnnData(obs=pd.DataFrame(index=pd.Index([], dtype=str))), h5ad)
        return
    barcodes = obs.loc[cells, "barcode"].astype(str).tolist()
    if spec["matrix"] == "10x_peaks":
        counts = atac.read_peaks_from_10x_h5(atac_source)
    elif spec["matrix"] == "peaks":
        peaks = atac.read_peaks_from_10x_h5(sample["rna_path"]).var_names.tolist()
        counts = atac.count_peaks(
            atac_source,
            peaks,
            barcodes,
            chrom_sizes=chrom_sizes,
            gene_anno=gene_annotation,
            n_jobs=threads,
            require_index=spec.get("require_index", True),
        )
    else:
        counts = atac.count_tiles(
            atac_source,
            barcodes,
            chrom_sizes=chrom_sizes,
            bin_size=spec["tile_size"],
            gene_anno=gene_annotation,
            n_jobs=threads,
            tempdir=Path(h5ad).parent,
            require_index=spec.get("require_index", True),
        )
    qc_table = atac.atac_qc(counts)
    for col in qc_table.columns:
        counts.obs[col] = qc_table[col].to_numpy()
    aligned, report = atac.join_rna_atac(cells, counts, library, fragments_path=atac_source, library_key=library_key)
    if spec["min_fragments"]:
        frags = aligned.obs["n_fragment"].fillna(aligned.obs["total_counts"] / 2)
        aligned = aligned[frags.to_numpy() >= spec["min_fragments"]].copy()
    aligned.obs["sample"] = str(sample["sample"])
    aligned.uns["join_report"] = {k: v for k, v in report.items()}
    print(f"{sample['sample']}: {aligned.n_obs} cells x {aligned.n_vars} ATAC features; join {report}")
    write_h5ad(aligned, h5ad)


def merge_atac(samples: Sequence[str], atac: str, atac_qc: str, cfg: Mapping, threads: int = 1) -> None:
    """Concatenate per-sample ATAC matrices (same features) and write the per-cell QC table."""
    import anndata as ad

    parts = [a for a in (ad.read_h5ad(p) for p in samples) if a.n_obs > 0]
    if not parts:
        raise ValueError("no ATAC cells in any sample")
    merged = ad.concat(parts, join="inner", merge="same")
    merged.uns = {}
    restore_categoricals(merged.obs)
    qc_cols = [
        c
        for c in (
            cfg["covariates"]["library_key"],
            "sample",
            "n_fragment",
            "total_counts",
            "n_features_accessible",
            "frac_dup",
            "frac_mito",
            "tsse",
            "frip",
        )
        if c in merged.obs
    ]
    table = merged.obs[qc_cols].copy()
    table.index.name = "obs_name"
    print(f"ATAC: {merged.n_obs} cells x {merged.n_vars} features")
    write_csv(table, atac_qc)
    write_h5ad(merged, atac)
