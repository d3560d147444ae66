"""The 10x-format demo dataset of the workflow (:func:`write_demo_dataset`, CLI ``rvi-simulate-demo``)."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp

from rvi.simulate.multiome import simulate_multiome

# Demo dataset on disk (10x CellRanger-ARC layout)
# --------------------------------------------------------------------------------------------------
_TISSUES = ("bone_marrow", "peripheral_blood", "spleen")
LABEL_COLUMNS = ("label_l1", "label_l2", "label_l3")


def _library_fragments(
    counts: sp.csr_matrix,
    barcodes: np.ndarray,
    regions: pd.DataFrame,
    chrom_sizes: dict[str, int],
    background_fraction: float,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """Fragments matching a Peaks count matrix: each count is one fragment lying inside its peak,
    plus per-cell background fragments placed genome-wide outside every peak."""
    coo = counts.tocoo()
    reps = coo.data.astype(np.int64)
    cell = np.repeat(coo.row, reps)
    reg = np.repeat(coo.col, reps)
    width = (regions["end"] - regions["start"]).to_numpy()
    length = np.clip((rng.gamma(2.0, 60.0, cell.size) + 40).astype(np.int64), 40, width[reg] - 20)
    start = regions["start"].to_numpy()[reg] + (rng.random(cell.size) * (width[reg] - length + 1)).astype(np.int64)
    chrom = regions["chrom"].to_numpy()[reg]

    # Background: FRiP = 1 - background_fraction on average.
    in_peak = np.asarray(counts.sum(axis=1)).ravel()
    n_bg = rng.poisson(in_peak * background_fraction / (1.0 - background_fraction))
    bg_cell = np.repeat(np.arange(counts.shape[0]), n_bg)
    nuclear = [c for c in chrom_sizes if c != "chrM"]
    sizes = np.array([chrom_sizes[c] for c in nuclear], dtype=np.float64)
    bg_chrom = np.array(nuclear, dtype=object)[rng.choice(len(nuclear), bg_cell.size, p=sizes / sizes.sum())]
    bg_len = np.clip((rng.gamma(2.0, 80.0, bg_cell.size) + 40).astype(np.int64), 40, 900)
    bg_size = np.array([chrom_sizes[c] for c in bg_chrom], dtype=np.int64)
    bg_start = (rng.random(bg_cell.size) * (bg_size - bg_len - 1)).astype(np.int64)
    # Drop background fragments touching a peak so the Peaks matrix counts exactly the in-peak fragments.
    peak_keys = set(zip(regions["chrom"], regions["start"] // 1000))
    hit = np.zeros(bg_cell.size, dtype=bool)
    for tile in (bg_start // 1000, (bg_start + bg_len - 1) // 1000):
        lo, hi = tile * 1000 + 250, tile * 1000 + 750
        overlaps = (bg_start < hi) & (bg_start + bg_len > lo)
        known = np.fromiter(((c, t) in peak_keys for c, t in zip(bg_chrom, tile)), dtype=bool, count=tile.size)
        hit |= overlaps & known
    keep = ~hit

    frag = pd.DataFrame(
        {
            "chrom": np.concatenate([chrom, bg_chrom[keep]]),
            "start": np.concatenate([start, bg_start[keep]]),
            "end": np.concatenate([start + length, bg_start[keep] + bg_len[keep]]),
            "barcode": barcodes[np.concatenate([cell, bg_cell[keep]])],
        }
    )
    frag["count"] = 1 + (rng.random(len(frag)) < 0.1)  # PCR duplicates, as in CellRanger's count column
    return frag


def _gtf(var: pd.DataFrame) -> str:
    lines = []
    for name, row in var.iterrows():
        attrs = f'gene_id "{row.gene_ids}"; gene_name "{name}"; gene_type "protein_coding";'
        tx = attrs + f' transcript_id "{row.gene_ids.replace("SIMG", "SIMT")}";'
        loc = f"{row.chrom}\trvi\t{{}}\t{row.start + 1}\t{row.end}\t.\t{row.strand}\t.\t"
        lines += [loc.format("gene") + attrs, loc.format("transcript") + tx, loc.format("exon") + tx]
    return "\n".join(lines) + "\n"


def simulate_demo(
    n_samples: int = 6,
    n_datasets: int = 3,
    cells_per_sample: int = 600,
    n_genes: int = 300,
    n_regions: int = 2000,
    n_cell_types: int = 8,
    doublet_rate: float = 0.06,
    mean_library_size: float = 3000,
    mean_fragments: float = 300,
    n_atac_only_pairs: int = 0,
    n_rna_only_pairs: int = 1,
    seed: int = 0,
) -> md.MuData:
    """The demo data in memory: exactly what :func:`write_demo_dataset` writes for the same arguments
    (one library per sample, ``n_samples // n_datasets`` libraries per dataset).

    No ATAC-only subtype pair by default: the workflow annotates from the RNA model, so subtypes with
    identical RNA could only be told apart by chance (half of those cells wrong at the finest level).
    One RNA-only pair keeps a distinction that the multimodal attribution should give to RNA."""
    if n_samples % n_datasets:
        raise ValueError(f"n_samples={n_samples} must be a multiple of n_datasets={n_datasets}")
    return simulate_multiome(
        n_cells=n_samples * cells_per_sample,
        n_genes=n_genes,
        n_regions=n_regions,
        n_datasets=n_datasets,
        libraries_per_dataset=n_samples // n_datasets,
        n_cell_types=n_cell_types,
        doublet_rate=doublet_rate,
        mean_library_size=mean_library_size,
        mean_fragments=mean_fragments,
        n_atac_only_pairs=n_atac_only_pairs,
        n_rna_only_pairs=n_rna_only_pairs,
        seed=seed,
    )


def write_demo_dataset(
    outdir: str | Path,
    *,
    background_fraction: float = 0.3,
    labelled_samples: int | None = None,
    **simulation,
) -> pd.DataFrame:
    """Write the embedded demo (10x CellRanger-ARC files + sample sheet + ground truth) to ``outdir``.

    The data are :func:`simulate_demo`'s for the keyword arguments ``simulation`` (``n_samples``, ``seed``,
    ...; its defaults for those not given: one list of arguments and defaults for both). One sample = one
    library; libraries nested in datasets, ``n_samples // n_datasets`` each. ``background_fraction``: share
    of each cell's fragments placed outside every peak. ``outdir`` is written atomically as a whole (an
    existing folder is replaced). Layout::

        outdir/samples.tsv         sample sheet (below), paths relative to outdir
        outdir/chrom_sizes.tsv     chrom<TAB>size, no header (chr1..chrN, chrM)
        outdir/genes.gtf           gene/transcript/exon records of the simulated genes (TSS annotation)
        outdir/ground_truth.csv    per cell, index obs_name = {library}-{barcode}: sample, library,
                                   dataset, barcode, cell_type, cell_type_l1..l3, is_doublet,
                                   doublet_partner_type, ambient_fraction, true_library_size,
                                   true_fragments, has_atac
        outdir/cre_truth.csv       region, cell_type (tree node owning the region program), level
                                   (1 lineage, 2 type, 3 subtype), is_promoter, gene
        outdir/ambient_profiles.csv  true ambient profile per library (rows: library, columns: genes)
        outdir/subtype_pairs.csv   kind (chromatin_only / rna_only), type_a, type_b: the sibling subtypes
                                   that differ only in accessibility / only in RNA
        outdir/<sample>/filtered_feature_bc_matrix.h5   Gene Expression + Peaks (CellRanger-ARC HDF5)
        outdir/<sample>/atac_fragments.tsv.gz(.tbi)     bgzip + tabix; each Peaks count is one fragment
                                                        inside its peak, plus background fragments
        outdir/<sample>/labels.csv  only for labelled samples: barcode, label_l1, label_l2, label_l3

    Sample sheet columns: sample (``s1``..), library (``lib1``..), dataset (``ds1``..), donor, tissue,
    condition, chemistry, rna_path, fragments_path, labels_path (empty for unlabelled samples).
    The first ``labelled_samples`` samples (default: half) have labels; those of the first dataset
    at all three levels, the others only at levels 1-2 (``label_l3`` empty), so annotation has to
    transfer labels and refine them. Returns the sample sheet.
    """
    from rvi.io.atomic import atomic_dir
    from rvi.io.fragments import write_fragments
    from rvi.io.tenx import GENE_EXPRESSION, PEAKS, write_10x_h5

    try:
        args = inspect.signature(simulate_demo).bind(**simulation)
    except TypeError as err:
        raise TypeError(
            f"write_demo_dataset: {err} (simulate_demo's arguments, or background_fraction, labelled_samples)"
        ) from None
    args.apply_defaults()
    n_samples, seed = args.arguments["n_samples"], args.arguments["seed"]
    n_labelled = n_samples // 2 if labelled_samples is None else int(labelled_samples)
    mdata = simulate_demo(**args.arguments)
    rna, atac, obs = mdata["rna"], mdata["atac"], mdata.obs
    regions = atac.var
    chrom_sizes = dict(
        zip(atac.uns["simulation"]["chrom_sizes"]["chrom"], atac.uns["simulation"]["chrom_sizes"]["size"])
    )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    genome = "sim1"
    features = pd.concat(
        [
            pd.DataFrame(
                {
                    "id": rna.var["gene_ids"].to_numpy(),
                    "name": rna.var_names.to_numpy(),
                    "feature_type": GENE_EXPRESSION,
                    "genome": genome,
                    "interval": [f"{c}:{s}-{e}" for c, s, e in zip(rna.var.chrom, rna.var.start, rna.var.end)],
                }
            ),
            pd.DataFrame(
                {
                    "id": regions.index.to_numpy(),
                    "name": regions.index.to_numpy(),
                    "feature_type": PEAKS,
                    "genome": genome,
                    "interval": regions.index.to_numpy(),
                }
            ),
        ],
        ignore_index=True,
    )
    libraries = list(obs["library"].cat.categories)
    lib_dataset = obs.groupby("library", observed=True)["dataset"].first()
    samples = {lib: f"s{i + 1}" for i, lib in enumerate(libraries)}
    first_dataset = str(lib_dataset[libraries[0]])

    rows = []
    with atomic_dir(outdir) as tmp:
        for i, lib in enumerate(libraries):
            sample = samples[lib]
            dataset = str(lib_dataset[lib])
            idx = np.flatnonzero((obs["library"] == lib).to_numpy())
            barcodes = obs["barcode"].to_numpy()[idx]
            sdir = tmp / sample
            sdir.mkdir()
            X = sp.hstack([rna.X[idx], atac.X[idx]]).tocsr()
            write_10x_h5(sdir / "filtered_feature_bc_matrix.h5", X, barcodes, features, library_id=sample)
            frags = _library_fragments(
                sp.csr_matrix(atac.X[idx]), barcodes, regions, chrom_sizes, background_fraction, rng
            )
            write_fragments(
                sdir / "atac_fragments.tsv.gz",
                frags,
                chrom_order=list(chrom_sizes),
                header=[f"id={sample}", "pipeline_name=rvi-simulate-demo", f"reference_genome={genome}"],
            )
            labels_path = ""
            if i < n_labelled:
                sub = obs.iloc[idx]
                labels = pd.DataFrame(
                    {
                        "barcode": barcodes,
                        "label_l1": sub["cell_type_l1"].astype(str).to_numpy(),
                        "label_l2": sub["cell_type_l2"].astype(str).to_numpy(),
                        "label_l3": sub["cell_type_l3"].astype(str).to_numpy(),
                    }
                )
                if dataset != first_dataset:
                    labels["label_l3"] = ""
                labels.to_csv(sdir / "labels.csv", index=False)
                labels_path = f"{sample}/labels.csv"
            pos_in_ds = int(np.sum([str(lib_dataset[x]) == dataset for x in libraries[:i]]))
            rows.append(
                {
                    "sample": sample,
                    "library": lib,
                    "dataset": dataset,
                    "donor": f"{dataset}_donor{pos_in_ds + 1}",
                    "tissue": _TISSUES[(int(dataset[2:]) - 1) % len(_TISSUES)],
                    "condition": "control" if pos_in_ds % 2 == 0 else "stimulated",
                    "chemistry": "ARC-v1",
                    "rna_path": f"{sample}/filtered_feature_bc_matrix.h5",
                    "fragments_path": f"{sample}/atac_fragments.tsv.gz",
                    "labels_path": labels_path,
                }
            )
        sheet = pd.DataFrame(rows)
        sheet.to_csv(tmp / "samples.tsv", sep="\t", index=False)
        pd.DataFrame({"chrom": list(chrom_sizes), "size": list(chrom_sizes.values())}).to_csv(
            tmp / "chrom_sizes.tsv", sep="\t", header=False, index=False
        )
        (tmp / "genes.gtf").write_text(_gtf(rna.var.loc[rna.var["chrom"] != "chrM"]))
        truth = obs.copy()
        truth.insert(0, "sample", truth["library"].map(samples).astype(str))
        truth.index.name = "obs_name"
        truth.to_csv(tmp / "ground_truth.csv")
        cre = regions.loc[regions["program_level"] > 0, ["program", "program_level", "is_promoter", "gene"]]
        cre = cre.rename(columns={"program": "cell_type", "program_level": "level"})
        cre.index.name = "region"
        cre.to_csv(tmp / "cre_truth.csv")
        rna.uns["simulation"]["ambient_profiles"].to_csv(tmp / "ambient_profiles.csv", index_label="library")
        sim = mdata.uns["simulation"]
        pair_rows = [
            sim["atac_only_pairs"].assign(kind="chromatin_only"),
            sim["rna_only_pairs"].assign(kind="rna_only"),
        ]
        pd.concat(pair_rows, ignore_index=True)[["kind", "type_a", "type_b"]].to_csv(
            tmp / "subtype_pairs.csv", index=False
        )
    return sheet


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m rvi.simulate --outdir DIR [--seed N]`` writes the demo dataset."""
    parser = argparse.ArgumentParser(description="Write the rvi demo dataset (10x Multiome format + ground truth).")
    parser.add_argument("--outdir", required=True, help="output folder (replaced as a whole)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-samples", type=int, default=6)
    parser.add_argument("--cells-per-sample", type=int, default=600)
    args = parser.parse_args(argv)
    sheet = write_demo_dataset(
        args.outdir, n_samples=args.n_samples, cells_per_sample=args.cells_per_sample, seed=args.seed
    )
    print(f"wrote {len(sheet)} samples to {args.outdir}")
