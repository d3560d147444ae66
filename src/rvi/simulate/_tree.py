"""The cell-type tree and its feature programs (shared by the RNA and ATAC simulators)."""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np
import pandas as pd

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
