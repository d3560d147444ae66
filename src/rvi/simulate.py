"""Ground-truth simulators: in-memory RNA / RNA+ATAC data and the 10x-format demo dataset.

Generative story (RNA), shared by every simulator here:

* Cell types form a 3-level tree: lineage (``cell_type_l1``, e.g. ``A``) -> type (``cell_type_l2``,
  ``A1``) -> subtype (``cell_type_l3`` == ``cell_type``, ``A1a``). Each node owns a disjoint gene
  program (up-regulated genes); a leaf's profile is ``softmax(base + effects of every node on its
  path)``, so siblings share everything but a few leaf genes.
* Libraries are nested in datasets. Each dataset has a per-gene lognormal scaling ``y`` (log-centred,
  sd ``gene_scaling_sd``); each library has its own ambient profile = mixture of the profiles of its
  cells, times per-gene lognormal noise, normalised to sum to 1; each library draws a centre ambient
  fraction uniformly in ``ambient_fraction`` and each cell jitters around it (clipped to the range).
* Cell size factor ``l_n`` (``true_library_size``) is lognormal; the rate is
  ``mu = l_n * ((1 - a_n) * profile + a_n * ambient_library) * y_dataset`` (the rvi model's
  ``l * (rho + s) * y``), and counts are negative binomial (Gamma-Poisson, inverse dispersion theta).
* Doublets are literally the sum of the counts of two simulated cells of different subtypes in the
  same droplet (same library, same ambient fraction); ``cell_type`` is the component with the larger
  size factor and ``doublet_partner_type`` the other one.
"""

from __future__ import annotations

import argparse
import string
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp

MT_GENES = (
    "MT-ND1",
    "MT-ND2",
    "MT-CO1",
    "MT-CO2",
    "MT-ATP8",
    "MT-ATP6",
    "MT-CO3",
    "MT-ND3",
    "MT-ND4L",
    "MT-ND4",
    "MT-ND5",
    "MT-ND6",
    "MT-CYB",
)
LEVEL_KEYS = ("cell_type_l1", "cell_type_l2", "cell_type_l3")
NONE = "none"
# Fraction of features given to one node's program, per level (lineage, type, subtype).
_RNA_PROGRAM_FRAC = (0.06, 0.04, 0.015)
_RNA_EFFECT = ((2.0, 0.4), (1.5, 0.3), (1.3, 0.3))
_ATAC_PROGRAM_FRAC = (0.05, 0.03, 0.025)
_ATAC_EFFECT = ((2.0, 0.3), (1.8, 0.3), (1.8, 0.3))
_ACGT = np.array(list("ACGT"))


# --------------------------------------------------------------------------------------------------
# Tree and programs
# --------------------------------------------------------------------------------------------------
@dataclass
class _Tree:
    leaves: list[str]  # finest level, tree order (siblings adjacent)
    leaf_l2: list[str]
    leaf_l1: list[str]
    l2: list[str]
    l2_parent: list[str]
    l1: list[str]

    def table(self) -> pd.DataFrame:
        rows = [(n, "root", 1) for n in self.l1]
        rows += list(zip(self.l2, self.l2_parent, [2] * len(self.l2)))
        rows += list(zip(self.leaves, self.leaf_l2, [3] * len(self.leaves)))
        return pd.DataFrame(rows, columns=["child", "parent", "level"])

    def sibling_pairs(self) -> list[tuple[str, str]]:
        """First two leaves of every level-2 node that has at least two children, in tree order."""
        pairs = []
        for t in self.l2:
            kids = [leaf for leaf, p in zip(self.leaves, self.leaf_l2) if p == t]
            if len(kids) >= 2:
                pairs.append((kids[0], kids[1]))
        return pairs


def _make_tree(n_cell_types: int) -> _Tree:
    if n_cell_types < 2:
        raise ValueError(f"n_cell_types must be >= 2, got {n_cell_types}")
    n_l1 = 2 if n_cell_types <= 8 else 3
    n_l2 = min(n_cell_types, max(n_l1, -(-n_cell_types // 2)))
    # Round-robin keeps the tree balanced; names then encode the path (A -> A1 -> A1a).
    l2_of_l1 = {i: [j for j in range(n_l2) if j % n_l1 == i] for i in range(n_l1)}
    leaves_of_l2 = {j: [k for k in range(n_cell_types) if k % n_l2 == j] for j in range(n_l2)}
    l1 = list(string.ascii_uppercase[:n_l1])
    tree = _Tree([], [], [], [], [], l1)
    for i, name1 in enumerate(l1):
        for pos2, j in enumerate(l2_of_l1[i]):
            name2 = f"{name1}{pos2 + 1}"
            tree.l2.append(name2)
            tree.l2_parent.append(name1)
            for pos3, _ in enumerate(leaves_of_l2[j]):
                tree.leaves.append(f"{name2}{string.ascii_lowercase[pos3]}")
                tree.leaf_l2.append(name2)
                tree.leaf_l1.append(name1)
    return tree


def _assign_programs(
    n_features: int,
    available: np.ndarray,
    nodes: list[list[str]],
    fracs: tuple[float, ...],
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Disjoint feature sets per node (nodes grouped per level); sizes shrink to fit ``available``."""
    sizes = [[max(2, int(round(f * n_features)))] * len(level) for f, level in zip(fracs, nodes)]
    total = sum(sum(s) for s in sizes)
    cap = int(0.8 * len(available))
    if total > cap:
        scale = cap / total
        sizes = [[max(1, int(s * scale)) for s in level] for level in sizes]
    order = rng.permutation(available)
    out, pos = {}, 0
    for level_nodes, level_sizes in zip(nodes, sizes):
        for node, size in zip(level_nodes, level_sizes):
            out[node] = np.sort(order[pos : pos + size])
            pos += size
    return out


def _program_table(n_features: int, programs: dict[str, np.ndarray], level_of: dict[str, int]) -> pd.DataFrame:
    program = np.full(n_features, NONE, dtype=object)
    level = np.zeros(n_features, dtype=np.int64)
    for node, idx in programs.items():
        program[idx] = node
        level[idx] = level_of[node]
    specific = np.where(level == 3, program, NONE)
    return pd.DataFrame({"program": program, "program_level": level, "specific_to": specific})


def _profiles(
    tree: _Tree,
    base: np.ndarray,
    programs: dict[str, np.ndarray],
    effects: dict[str, np.ndarray],
    silent_leaves: set[str],
) -> np.ndarray:
    """Row-normalised profiles (leaves x features); ``silent_leaves`` get no leaf-level effect."""
    out = np.empty((len(tree.leaves), base.size))
    for k, (leaf, t2, t1) in enumerate(zip(tree.leaves, tree.leaf_l2, tree.leaf_l1)):
        logit = base.copy()
        for node in (t1, t2) + (() if leaf in silent_leaves else (leaf,)):
            if node in programs:
                logit[programs[node]] += effects[node]
        w = np.exp(logit - logit.max())
        out[k] = w / w.sum()
    return out


def _node_effects(programs, level_of, spec, rng) -> dict[str, np.ndarray]:
    return {
        node: np.abs(rng.normal(spec[level_of[node] - 1][0], spec[level_of[node] - 1][1], idx.size))
        for node, idx in programs.items()
    }


# --------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------
@dataclass
class _Cells:
    """Droplets (rows of the output) and the simulated cells ('slots') that fill them."""

    libraries: list[str]
    datasets: list[str]
    lib_dataset: np.ndarray  # library index -> dataset index
    barcodes: np.ndarray
    cell_lib: np.ndarray
    cell_ambient: np.ndarray
    cell_doublet: np.ndarray
    slot_cell: np.ndarray
    slot_type: np.ndarray
    slot_size: np.ndarray
    composition: np.ndarray  # libraries x types (sampling weights)

    @property
    def n_cells(self) -> int:
        return self.cell_lib.size

    def summing_matrix(self) -> sp.csr_matrix:
        n_slots = self.slot_cell.size
        return sp.csr_matrix((np.ones(n_slots), (self.slot_cell, np.arange(n_slots))), shape=(self.n_cells, n_slots))


def _barcodes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unique 10x-style barcodes (16 nt + ``-1``)."""
    seen: set[str] = set()
    out = []
    while len(out) < n:
        for row in rng.integers(0, 4, size=(n - len(out), 16)):
            bc = "".join(_ACGT[row]) + "-1"
            if bc not in seen:
                seen.add(bc)
                out.append(bc)
    return np.array(out, dtype=object)


def _make_cells(
    n_cells: int,
    n_types: int,
    n_datasets: int,
    libraries_per_dataset: int,
    doublet_rate: float,
    ambient_fraction: tuple[float, float],
    mean_library_size: float,
    library_size_sd: float,
    rng: np.random.Generator,
) -> _Cells:
    n_libs = n_datasets * libraries_per_dataset
    if n_cells < 10 * n_libs:
        raise ValueError(f"n_cells={n_cells} is too small for {n_libs} libraries (need >= 10 per library)")
    lo, hi = ambient_fraction
    if not 0 <= lo <= hi < 1:
        raise ValueError(f"ambient_fraction must satisfy 0 <= low <= high < 1, got {ambient_fraction}")
    if not 0 <= doublet_rate < 0.5:
        raise ValueError(f"doublet_rate must be in [0, 0.5), got {doublet_rate}")
    datasets = [f"ds{d + 1}" for d in range(n_datasets)]
    libraries = [f"lib{i + 1}" for i in range(n_libs)]
    lib_dataset = np.repeat(np.arange(n_datasets), libraries_per_dataset)
    per_lib = np.full(n_libs, n_cells // n_libs)
    per_lib[: n_cells % n_libs] += 1

    ds_comp = rng.dirichlet(np.full(n_types, 8.0), size=n_datasets)
    composition = np.vstack([rng.dirichlet(50.0 * ds_comp[d]) for d in lib_dataset])
    lib_size_shift = rng.normal(0.0, 0.2, n_libs)
    lib_ambient = rng.uniform(lo, hi, n_libs)

    cell_lib = np.repeat(np.arange(n_libs), per_lib)
    cell_ambient = np.clip(lib_ambient[cell_lib] * np.exp(rng.normal(0.0, 0.25, n_cells)), lo, hi)
    cell_doublet = np.zeros(n_cells, dtype=bool)
    start = np.concatenate([[0], np.cumsum(per_lib)])
    for li in range(n_libs):
        n_dbl = int(round(doublet_rate * per_lib[li]))
        cell_doublet[start[li] + rng.choice(per_lib[li], n_dbl, replace=False)] = True

    slot_cell = [np.arange(n_cells)]
    first_type = np.empty(n_cells, dtype=np.int64)
    for li in range(n_libs):
        first_type[start[li] : start[li + 1]] = rng.choice(n_types, size=per_lib[li], p=composition[li])
    slot_type = [first_type]
    dbl = np.flatnonzero(cell_doublet)
    partner = np.empty(dbl.size, dtype=np.int64)
    for k, c in enumerate(dbl):
        p = composition[cell_lib[c]].copy()
        p[slot_type[0][c]] = 0.0  # partner of a different subtype
        partner[k] = rng.choice(n_types, p=p / p.sum())
    slot_cell.append(dbl)
    slot_type.append(partner)
    slot_cell = np.concatenate(slot_cell)
    slot_type = np.concatenate(slot_type)
    log_size = np.log(mean_library_size) + lib_size_shift[cell_lib[slot_cell]]
    slot_size = np.exp(rng.normal(log_size, library_size_sd))
    return _Cells(
        libraries=libraries,
        datasets=datasets,
        lib_dataset=lib_dataset,
        barcodes=_barcodes(n_cells, rng),
        cell_lib=cell_lib,
        cell_ambient=cell_ambient,
        cell_doublet=cell_doublet,
        slot_cell=slot_cell,
        slot_type=slot_type,
        slot_size=slot_size,
        composition=composition,
    )


def _sample_counts(
    cells: _Cells,
    slot_size: np.ndarray,
    profiles: np.ndarray,
    ambient: np.ndarray | None,
    scaling: np.ndarray,
    theta: np.ndarray | None,
    rng: np.random.Generator,
) -> sp.csr_matrix:
    """Counts per droplet: per-slot NB (or Poisson when ``theta`` is None) draws summed per droplet."""
    n_feat = profiles.shape[1]
    chunk = max(1, 4_000_000 // n_feat)
    blocks = []
    slot_lib = cells.cell_lib[cells.slot_cell]
    slot_amb = cells.cell_ambient[cells.slot_cell]
    for s in range(0, slot_size.size, chunk):
        sl = slice(s, s + chunk)
        prof = profiles[cells.slot_type[sl]]
        if ambient is not None:
            a = slot_amb[sl, None]
            prof = (1.0 - a) * prof + a * ambient[slot_lib[sl]]
        mu = slot_size[sl, None] * prof * scaling[cells.lib_dataset[slot_lib[sl]]]
        rate = mu if theta is None else rng.gamma(theta, mu / theta)
        blocks.append(sp.csr_matrix(rng.poisson(rate).astype(np.float32)))
    counts = cells.summing_matrix() @ sp.vstack(blocks).tocsr()
    counts = sp.csr_matrix(counts, dtype=np.float32)
    counts.sort_indices()
    return counts


def _centred_lognormal(rng: np.random.Generator, sd: float, shape: tuple[int, int]) -> np.ndarray:
    g = rng.normal(0.0, sd, shape)
    return np.exp(g - g.mean(axis=1, keepdims=True))


def _obs(cells: _Cells, tree: _Tree) -> pd.DataFrame:
    size_main = cells.slot_size[: cells.n_cells]
    dbl_cells = cells.slot_cell[cells.n_cells :]
    size_partner = cells.slot_size[cells.n_cells :]
    type_main = cells.slot_type[: cells.n_cells].copy()
    type_partner = np.full(cells.n_cells, -1)
    type_partner[dbl_cells] = cells.slot_type[cells.n_cells :]
    # The component with the larger size factor dominates the droplet and names it.
    swap = size_partner > size_main[dbl_cells]
    a, b = type_main[dbl_cells[swap]], type_partner[dbl_cells[swap]]
    type_main[dbl_cells[swap]], type_partner[dbl_cells[swap]] = b, a
    total_size = np.bincount(cells.slot_cell, weights=cells.slot_size, minlength=cells.n_cells)

    leaves = np.array(tree.leaves, dtype=object)
    l2 = np.array(tree.leaf_l2, dtype=object)
    l1 = np.array(tree.leaf_l1, dtype=object)
    lib_names = np.array(cells.libraries, dtype=object)[cells.cell_lib]
    ds_names = np.array(cells.datasets, dtype=object)[cells.lib_dataset[cells.cell_lib]]
    partner = np.where(type_partner >= 0, leaves[np.maximum(type_partner, 0)], NONE)

    def cat(values, categories):
        return pd.Categorical(values, categories=list(categories))

    obs = pd.DataFrame(
        {
            "barcode": cells.barcodes,
            "library": cat(lib_names, cells.libraries),
            "dataset": cat(ds_names, cells.datasets),
            "cell_type": cat(leaves[type_main], tree.leaves),
            "cell_type_l1": cat(l1[type_main], tree.l1),
            "cell_type_l2": cat(l2[type_main], tree.l2),
            "cell_type_l3": cat(leaves[type_main], tree.leaves),
            "is_doublet": cells.cell_doublet.copy(),
            "doublet_partner_type": cat(partner, [NONE, *tree.leaves]),
            "ambient_fraction": cells.cell_ambient.astype(np.float64),
            "true_library_size": total_size,
        },
        index=pd.Index([f"{lib}-{bc}" for lib, bc in zip(lib_names, cells.barcodes)], name=None),
    )
    return obs


# --------------------------------------------------------------------------------------------------
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
    n_samples: int = 6,
    n_datasets: int = 3,
    cells_per_sample: int = 600,
    n_genes: int = 300,
    n_regions: int = 2000,
    n_cell_types: int = 8,
    doublet_rate: float = 0.06,
    mean_library_size: float = 3000,
    mean_fragments: float = 300,
    background_fraction: float = 0.3,
    labelled_samples: int | None = None,
    n_atac_only_pairs: int = 0,
    n_rna_only_pairs: int = 1,
    seed: int = 0,
) -> pd.DataFrame:
    """Write the embedded demo (10x CellRanger-ARC files + sample sheet + ground truth) to ``outdir``.

    The data are :func:`simulate_demo`'s (one sample = one library; libraries nested in datasets,
    ``n_samples // n_datasets`` each). ``outdir`` is written atomically as a whole (an
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

    n_labelled = n_samples // 2 if labelled_samples is None else int(labelled_samples)
    mdata = simulate_demo(
        n_samples=n_samples,
        n_datasets=n_datasets,
        cells_per_sample=cells_per_sample,
        n_genes=n_genes,
        n_regions=n_regions,
        n_cell_types=n_cell_types,
        doublet_rate=doublet_rate,
        mean_library_size=mean_library_size,
        mean_fragments=mean_fragments,
        n_atac_only_pairs=n_atac_only_pairs,
        n_rna_only_pairs=n_rna_only_pairs,
        seed=seed,
    )
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


if __name__ == "__main__":
    main()
