"""In-memory RNA simulation with ground truth (:func:`simulate_rna`)."""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd

from rvi.simulate._cells import _Cells, _centred_lognormal, _make_cells, _obs, _sample_counts
from rvi.simulate._tree import (
    _RNA_EFFECT,
    _RNA_PROGRAM_FRAC,
    MT_GENES,
    _assign_programs,
    _make_tree,
    _node_effects,
    _profiles,
    _program_table,
    _Tree,
)


# RNA
# --------------------------------------------------------------------------------------------------
@dataclass
class _RnaWorld:
    tree: _Tree
    cells: _Cells
    adata: ad.AnnData


def _gene_names(n_genes: int) -> tuple[list[str], int]:
    n_mt = min(len(MT_GENES), n_genes // 20)
    return list(MT_GENES[:n_mt]) + [f"Gene{i:04d}" for i in range(n_genes - n_mt)], n_mt


def _simulate_rna_world(
    *,
    n_cells: int,
    n_genes: int,
    n_datasets: int,
    libraries_per_dataset: int,
    n_cell_types: int,
    doublet_rate: float,
    ambient_fraction: tuple[float, float],
    mean_library_size: float,
    library_size_sd: float,
    dispersion: float,
    gene_scaling_sd: float,
    rna_silent_leaves: set[str],
    seed: int,
) -> _RnaWorld:
    if n_genes < 20:
        raise ValueError(f"n_genes must be >= 20, got {n_genes}")
    rng_tree, rng_cells, rng_rna, rng_amb = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    tree = _make_tree(n_cell_types)
    level_of = {n: 1 for n in tree.l1} | {n: 2 for n in tree.l2} | {n: 3 for n in tree.leaves}
    genes, n_mt = _gene_names(n_genes)

    programs = _assign_programs(
        n_genes, np.arange(n_mt, n_genes), [tree.l1, tree.l2, tree.leaves], _RNA_PROGRAM_FRAC, rng_tree
    )
    effects = _node_effects(programs, level_of, _RNA_EFFECT, rng_tree)
    # Wide, capped baseline: many lowly expressed genes (realistic sparsity), no single gene > a few %.
    base = np.minimum(rng_tree.normal(0.0, 1.6, n_genes), 3.0)
    for idx in programs.values():
        base[idx] -= 0.5  # markers are lower elsewhere, so programs stand out
    base[:n_mt] = rng_tree.normal(2.0, 0.3, n_mt)  # a few % mitochondrial reads
    profiles = _profiles(tree, base, programs, effects, rna_silent_leaves)
    # Silent leaves must share their parent's profile exactly; drop their programs from the truth.
    programs = {k: v for k, v in programs.items() if k not in rna_silent_leaves}

    cells = _make_cells(
        n_cells,
        len(tree.leaves),
        n_datasets,
        libraries_per_dataset,
        doublet_rate,
        ambient_fraction,
        mean_library_size,
        library_size_sd,
        rng_cells,
    )
    scaling = _centred_lognormal(rng_tree, gene_scaling_sd, (n_datasets, n_genes))
    # Ambient = soup of the library's own cells (all slots, doublet partners included) + per-gene noise.
    slot_lib = cells.cell_lib[cells.slot_cell]
    mix = np.zeros((len(cells.libraries), len(tree.leaves)))
    np.add.at(mix, (slot_lib, cells.slot_type), 1.0)
    mix /= mix.sum(axis=1, keepdims=True)
    ambient = (mix @ profiles) * np.exp(rng_amb.normal(0.0, 0.5, (len(cells.libraries), n_genes)))
    ambient /= ambient.sum(axis=1, keepdims=True)
    theta = np.full(n_genes, float(dispersion))

    X = _sample_counts(cells, cells.slot_size, profiles, ambient, scaling, theta, rng_rna)
    var = _program_table(n_genes, programs, level_of)
    var.insert(0, "gene_ids", [f"SIMG{i:06d}" for i in range(n_genes)])
    var["is_mt"] = np.arange(n_genes) < n_mt
    var.index = pd.Index(genes)
    obs = _obs(cells, tree)
    uns = {
        "ambient_profiles": pd.DataFrame(ambient, index=cells.libraries, columns=genes),
        "gene_scaling": pd.DataFrame(scaling, index=cells.datasets, columns=genes),
        "cell_type_profiles": pd.DataFrame(profiles, index=tree.leaves, columns=genes),
        "composition": pd.DataFrame(cells.composition, index=cells.libraries, columns=tree.leaves),
        "dispersion": theta,
        "hierarchy": tree.table(),
        "library_dataset": pd.DataFrame(
            {"library": cells.libraries, "dataset": [cells.datasets[d] for d in cells.lib_dataset]}
        ),
        "params": {
            "seed": int(seed),
            "doublet_rate": float(doublet_rate),
            "ambient_fraction": np.asarray(ambient_fraction, dtype=np.float64),
            "mean_library_size": float(mean_library_size),
            "library_size_sd": float(library_size_sd),
            "gene_scaling_sd": float(gene_scaling_sd),
        },
    }
    adata = ad.AnnData(X=X, obs=obs, var=var, uns={"simulation": uns})
    return _RnaWorld(tree=tree, cells=cells, adata=adata)


def simulate_rna(
    n_cells: int = 2000,
    n_genes: int = 500,
    n_datasets: int = 3,
    libraries_per_dataset: int = 2,
    n_cell_types: int = 8,
    doublet_rate: float = 0.05,
    ambient_fraction: tuple[float, float] = (0.02, 0.15),
    mean_library_size: float = 3000,
    library_size_sd: float = 0.5,
    dispersion: float = 5.0,
    seed: int = 0,
    gene_scaling_sd: float = 0.3,
) -> ad.AnnData:
    """Simulate raw RNA counts with ground truth (see the module docstring for the model).

    Returns an AnnData with ``X`` a CSR float32 matrix of integer counts, obs_names ``{library}-{barcode}``.

    obs: ``barcode``; ``library`` (``lib1``..), ``dataset`` (``ds1``..; libraries nested in datasets,
    ``libraries_per_dataset`` each); ``cell_type`` == ``cell_type_l3`` (subtype, e.g. ``A1a``),
    ``cell_type_l2`` (type, ``A1``), ``cell_type_l1`` (lineage, ``A``); ``is_doublet`` (bool);
    ``doublet_partner_type`` (subtype of the minor doublet component, ``"none"`` for singlets);
    ``ambient_fraction`` (share of the cell's expected counts from the library's ambient profile);
    ``true_library_size`` (size factor l_n, summed over doublet components). Categorical except the
    last three.

    var: ``gene_ids``, ``program`` (tree node whose program holds the gene, ``"none"`` otherwise),
    ``program_level`` (1..3, 0 = none), ``specific_to`` (subtype for leaf-level programs, else
    ``"none"``), ``is_mt`` (the first genes are named ``MT-*``).

    uns["simulation"]: ``ambient_profiles`` (libraries x genes, rows sum to 1, index in
    ``obs.library`` category order), ``gene_scaling`` (datasets x genes), ``cell_type_profiles``
    (subtypes x genes, rows sum to 1), ``composition`` (libraries x subtypes sampling weights),
    ``dispersion`` (theta per gene), ``hierarchy`` (columns child, parent, level; lineages have parent
    ``"root"``), ``library_dataset`` and ``params``. Deterministic for a given ``seed``.
    """
    return _simulate_rna_world(
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
        rna_silent_leaves=set(),
        seed=seed,
    ).adata


# --------------------------------------------------------------------------------------------------
