"""Cells of a simulation: types, libraries, datasets, doublets, size factors, ambient fractions; counts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from rvi.simulate._tree import _ACGT, NONE, _Tree


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
