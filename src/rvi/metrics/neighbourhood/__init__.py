"""Label-free neighbourhood marker-gene correlation (docs/metrics.md, "Label-free").

Question answered: do a cell's neighbours in a model's latent kNN graph express the same marker genes,
within its own library, in other libraries of its dataset, in other datasets, and across technical
groups? Everything is computed with sparse matrices: the connectivity-weighted neighbour average of
a mask is ``A = M X / rowsum(M)``, and per-edge correlations are evaluated only on graph edges.

One module per concern: :mod:`.markers` (marker genes), :mod:`.graph` (kNN graph, edge masks, random
graph), :mod:`.cell_stats` (per-cell statistics), :mod:`.headline` (H1-H14, composites),
:mod:`.failure` (per-cell failure modes) and :mod:`.correlation` (one embedding, several side by side).
"""

from .cell_stats import average_profile_correlation, edge_correlations, isolation_probability, marker_profiles
from .correlation import NeighbourhoodResult, neighbourhood_benchmark, neighbourhood_correlation
from .failure import FAILURE_LEVELS, FAILURE_SEVERITY, failure_modes
from .graph import (
    EXACT_KNN_MAX_CELLS,
    LEVEL_MASKS,
    knn_connectivities,
    mask_matrix,
    mask_names,
    neighbour_masks,
    random_knn_graph,
    validate_dataset_key,
)
from .headline import COMPOSITE_KEYS, HEADLINE_KEYS, headline_metrics, integration_failure_rate
from .markers import data_driven_markers, load_marker_table, select_marker_genes

__all__ = [
    "COMPOSITE_KEYS",
    "EXACT_KNN_MAX_CELLS",
    "FAILURE_LEVELS",
    "FAILURE_SEVERITY",
    "HEADLINE_KEYS",
    "LEVEL_MASKS",
    "NeighbourhoodResult",
    "average_profile_correlation",
    "data_driven_markers",
    "edge_correlations",
    "failure_modes",
    "headline_metrics",
    "integration_failure_rate",
    "isolation_probability",
    "knn_connectivities",
    "load_marker_table",
    "marker_profiles",
    "mask_matrix",
    "mask_names",
    "neighbour_masks",
    "neighbourhood_benchmark",
    "neighbourhood_correlation",
    "random_knn_graph",
    "select_marker_genes",
    "validate_dataset_key",
]
