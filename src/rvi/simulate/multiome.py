"""In-memory RNA + ATAC simulation with ground truth (:func:`simulate_multiome`)."""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp

from rvi.simulate._cells import _centred_lognormal, _sample_counts
from rvi.simulate._tree import (
    _ATAC_EFFECT,
    _ATAC_PROGRAM_FRAC,
    NONE,
    _assign_programs,
    _make_tree,
    _node_effects,
    _profiles,
    _program_table,
)
from rvi.simulate.rna import _simulate_rna_world


# RNA + ATAC
# --------------------------------------------------------------------------------------------------
@dataclass
class _Genome:
    chrom_sizes: dict[str, int]
    regions: pd.DataFrame  # chrom, start, end, is_promoter, gene (sorted by genome position)
    genes: pd.DataFrame  # per RNA gene: chrom, start, end, strand, tss


def _make_genome(genes: list[str], n_mt: int, n_regions: int, n_chromosomes: int, rng) -> _Genome:
    """A toy genome: peaks are 500 bp at offset 250 of a 1 kb tile, so each peak sits in one 1 kb tile."""
    nuclear = genes[n_mt:]
    n_prom = min(len(nuclear), n_regions // 2)
    n_distal = n_regions - n_prom
    n_free_genes = len(nuclear) - n_prom  # genes without a promoter peak still need a locus
    chroms = [f"chr{i + 1}" for i in range(n_chromosomes)]
    n_elem = n_regions + n_free_genes
    elem_chrom = np.sort(np.arange(n_elem) % n_chromosomes)
    chrom_sizes, elem_tile = {}, np.empty(n_elem, dtype=np.int64)
    for ci, c in enumerate(chroms):
        idx = np.flatnonzero(elem_chrom == ci)
        n_tiles = 6 * idx.size + 40  # ~6 kb between elements: room for gene bodies and background
        elem_tile[idx] = np.sort(rng.choice(np.arange(20, n_tiles - 20), idx.size, replace=False))
        chrom_sizes[c] = int(n_tiles * 1000)
    # Choose which elements are peaks (promoter or distal) and which are bare gene loci.
    kind = rng.permutation(np.repeat([0, 1, 2], [n_prom, n_distal, n_free_genes]))  # 0 prom, 1 distal, 2 gene only
    gene_elem = np.concatenate([np.flatnonzero(kind == 0), np.flatnonzero(kind == 2)])
    strand = rng.choice(np.array(["+", "-"]), len(nuclear))
    tss = elem_tile[gene_elem] * 1000 + 500
    length = rng.integers(2000, 8000, len(nuclear))
    gchrom = np.array(chroms, dtype=object)[elem_chrom[gene_elem]]
    gsize = np.array([chrom_sizes[c] for c in gchrom])
    gstart = np.where(strand == "+", tss, np.maximum(tss - length, 1))
    gend = np.where(strand == "+", np.minimum(tss + length, gsize - 1), tss)
    # Mitochondrial genes live on chrM (no peaks there), as in real references.
    mt_start = 1000 * np.arange(n_mt) + 1
    genes_df = pd.DataFrame(
        {
            "chrom": ["chrM"] * n_mt + list(gchrom),
            "start": np.concatenate([mt_start, gstart]).astype(np.int64),
            "end": np.concatenate([mt_start + 900, gend]).astype(np.int64),
            "strand": ["+"] * n_mt + list(strand),
            "tss": np.concatenate([mt_start, tss]).astype(np.int64),
        },
        index=pd.Index(genes),
    )
    if n_mt:
        chrom_sizes["chrM"] = 16569
    peak_elem = np.flatnonzero(kind != 2)
    prom_gene = {e: nuclear[i] for i, e in enumerate(gene_elem[:n_prom])}
    start = elem_tile[peak_elem] * 1000 + 250
    regions = pd.DataFrame(
        {
            "chrom": np.array(chroms, dtype=object)[elem_chrom[peak_elem]],
            "start": start.astype(np.int64),
            "end": (start + 500).astype(np.int64),
            "is_promoter": kind[peak_elem] == 0,
            "gene": [prom_gene.get(e, NONE) for e in peak_elem],
        }
    )
    regions.index = pd.Index([f"{c}:{s}-{e}" for c, s, e in zip(regions.chrom, regions.start, regions.end)])
    return _Genome(chrom_sizes=chrom_sizes, regions=regions, genes=genes_df)


def _pairs_frame(pairs: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=["type_a", "type_b"]).astype(str)


def simulate_multiome(
    n_cells: int = 2000,
    n_genes: int = 500,
    n_regions: int = 2000,
    n_datasets: int = 3,
    libraries_per_dataset: int = 2,
    n_cell_types: int = 8,
    n_atac_only_pairs: int = 1,
    n_rna_only_pairs: int = 1,
    doublet_rate: float = 0.05,
    ambient_fraction: tuple[float, float] = (0.02, 0.15),
    mean_library_size: float = 3000,
    library_size_sd: float = 0.5,
    dispersion: float = 5.0,
    mean_fragments: float = 500,
    fragments_sd: float = 0.5,
    n_chromosomes: int = 4,
    missing_atac_fraction: float = 0.0,
    seed: int = 0,
    gene_scaling_sd: float = 0.3,
    region_scaling_sd: float = 0.2,
) -> md.MuData:
    """Simulate paired RNA + ATAC (10x Multiome-like) with ground truth; returns MuData ('rna', 'atac').

    RNA is exactly :func:`simulate_rna`'s model, except that the subtypes of the first
    ``n_atac_only_pairs`` sibling pairs get no leaf gene program (identical RNA profiles: they differ
    ONLY in ATAC); the last ``n_rna_only_pairs`` sibling pairs get no leaf region program (identical
    accessibility: they differ ONLY in RNA). Pairs are listed in ``uns['simulation']['atac_only_pairs']``
    and ``['rna_only_pairs']`` (DataFrames with columns type_a, type_b) of the MuData and both mods.

    ATAC: ``n_regions`` 500 bp peaks named ``chrN:start-end`` on ``n_chromosomes`` toy chromosomes
    (each peak inside one 1 kb tile); half (at most one per gene) are promoters at the simulated
    genes' TSS, the rest distal. Region programs follow the cell-type tree (promoters follow their
    gene's lineage/type program). Counts are Poisson with mean ``F_n * q_type * y_dataset`` where
    ``F_n`` (``true_fragments``, in-peak fragments, lognormal around ``mean_fragments``) and ``y`` a
    per-dataset region scaling; doublets sum two cells; no ambient term.
    ``missing_atac_fraction`` of the droplets get an all-zero ATAC row (``has_atac`` False).

    obs (identical in ``mdata.obs`` and both mods): simulate_rna's columns + ``has_atac``,
    ``true_fragments``. atac.var: chrom, start, end, is_promoter, gene, program, program_level,
    specific_to. rna.var: simulate_rna's + chrom, start, end, strand, tss (gene locus).
    atac.uns['simulation']: accessibility_profiles (subtypes x regions), region_scaling (datasets x
    regions), chrom_sizes (chrom, size), hierarchy and the pair tables.
    """
    if not 0 <= missing_atac_fraction < 1:
        raise ValueError(f"missing_atac_fraction must be in [0, 1), got {missing_atac_fraction}")
    tree = _make_tree(n_cell_types)
    pairs = tree.sibling_pairs()
    if n_atac_only_pairs + n_rna_only_pairs > len(pairs):
        raise ValueError(
            f"{n_atac_only_pairs} ATAC-only + {n_rna_only_pairs} RNA-only pairs requested but the tree with "
            f"{n_cell_types} cell types has only {len(pairs)} sibling pairs"
        )
    atac_only = pairs[:n_atac_only_pairs]
    rna_only = pairs[len(pairs) - n_rna_only_pairs :] if n_rna_only_pairs else []
    world = _simulate_rna_world(
        n_cells=n_cells,
        n_genes=n_genes,
        n_datasets=n_datasets,
        libraries_per_dataset=libraries_per_dataset,
        n_cell_types=n_cell_types,
        doublet_rate=doublet_rate,
        ambient_fraction=tuple(ambient_fraction),
        mean_library_size=mean_library_size,
        library_size_sd=library_size_sd,
        dispersion=dispersion,
        gene_scaling_sd=gene_scaling_sd,
        rna_silent_leaves={t for p in atac_only for t in p},
        seed=seed,
    )
    rna, cells = world.adata, world.cells
    rng_genome, rng_prog, rng_atac = (np.random.default_rng(s) for s in np.random.SeedSequence([seed, 1]).spawn(3))
    n_mt = int(rna.var["is_mt"].sum())
    genome = _make_genome(list(rna.var_names), n_mt, n_regions, n_chromosomes, rng_genome)
    regions = genome.regions

    level_of = {n: 1 for n in tree.l1} | {n: 2 for n in tree.l2} | {n: 3 for n in tree.leaves}
    distal = np.flatnonzero(~regions["is_promoter"].to_numpy())
    atac_silent = {t for p in rna_only for t in p}
    leaves = [t for t in tree.leaves if t not in atac_silent]
    programs = _assign_programs(n_regions, distal, [tree.l1, tree.l2, leaves], _ATAC_PROGRAM_FRAC, rng_prog)
    # Promoters open with their gene's lineage/type program (never a leaf program, which would break
    # the RNA-only pairs' identical accessibility).
    gene_node = rna.var["program"].to_numpy()
    gene_level = rna.var["program_level"].to_numpy()
    gene_pos = {g: i for i, g in enumerate(rna.var_names)}
    for r in np.flatnonzero(regions["is_promoter"].to_numpy()):
        gi = gene_pos[regions["gene"].iat[r]]
        if gene_level[gi] in (1, 2):
            programs[gene_node[gi]] = np.sort(np.append(programs[gene_node[gi]], r))
    effects = _node_effects(programs, level_of, _ATAC_EFFECT, rng_prog)
    base = rng_prog.normal(0.0, 0.5, n_regions) + 0.8 * regions["is_promoter"].to_numpy()
    access = _profiles(tree, base, programs, effects, atac_silent)
    scaling = _centred_lognormal(rng_prog, region_scaling_sd, (len(cells.datasets), n_regions))

    # In-peak fragments per cell, moderately correlated with the RNA size factor as in real multiome.
    z_rna = np.log(cells.slot_size)
    z_rna = (z_rna - z_rna.mean()) / max(z_rna.std(), 1e-8)
    frag = np.exp(
        np.log(mean_fragments) + fragments_sd * (0.5 * z_rna + np.sqrt(0.75) * rng_atac.normal(size=z_rna.size))
    )
    X = _sample_counts(cells, frag, access, None, scaling, None, rng_atac)
    has_atac = np.ones(cells.n_cells, dtype=bool)
    has_atac[rng_atac.choice(cells.n_cells, int(round(missing_atac_fraction * cells.n_cells)), replace=False)] = False
    X = sp.csr_matrix(sp.diags(has_atac.astype(np.float32)) @ X)
    X.eliminate_zeros()

    obs = rna.obs.copy()
    obs["has_atac"] = has_atac
    obs["true_fragments"] = np.bincount(cells.slot_cell, weights=frag, minlength=cells.n_cells) * has_atac
    rna.obs = obs.copy()
    for col in ("chrom", "start", "end", "strand", "tss"):
        rna.var[col] = genome.genes[col].to_numpy()
    pair_truth = {"atac_only_pairs": _pairs_frame(atac_only), "rna_only_pairs": _pairs_frame(rna_only)}
    rna.uns["simulation"].update(pair_truth)
    chrom_sizes = pd.DataFrame({"chrom": list(genome.chrom_sizes), "size": list(genome.chrom_sizes.values())})

    avar = regions.copy()
    avar = avar.join(_program_table(n_regions, programs, level_of).set_index(regions.index))
    atac = ad.AnnData(
        X=X,
        obs=obs.copy(),
        var=avar,
        uns={
            "simulation": {
                "accessibility_profiles": pd.DataFrame(access, index=tree.leaves, columns=regions.index),
                "region_scaling": pd.DataFrame(scaling, index=cells.datasets, columns=regions.index),
                "chrom_sizes": chrom_sizes,
                "hierarchy": tree.table(),
                **pair_truth,
            }
        },
    )
    # Opt in to mudata's future behaviour: no pulling of prefixed mod columns into mdata.obs.
    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"rna": rna, "atac": atac})
        mdata.obs = obs.copy()
    mdata.uns["simulation"] = {"hierarchy": tree.table(), "chrom_sizes": chrom_sizes.copy(), **pair_truth}
    return mdata


# --------------------------------------------------------------------------------------------------
