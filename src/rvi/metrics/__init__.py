"""Integration metrics: label-based scib-metrics wrapper and the label-free neighbourhood marker correlation."""

from .neighbourhood import (
    NeighbourhoodResult,
    integration_failure_rate,
    knn_connectivities,
    load_marker_table,
    neighbour_masks,
    neighbourhood_benchmark,
    neighbourhood_correlation,
    random_knn_graph,
    select_marker_genes,
)
from .scib import batch_mixing_score, knn_label_accuracy, pca_baseline, scib_benchmark, stratified_subsample

__all__ = [
    "NeighbourhoodResult",
    "batch_mixing_score",
    "integration_failure_rate",
    "knn_connectivities",
    "knn_label_accuracy",
    "load_marker_table",
    "neighbour_masks",
    "neighbourhood_benchmark",
    "neighbourhood_correlation",
    "pca_baseline",
    "random_knn_graph",
    "scib_benchmark",
    "select_marker_genes",
    "stratified_subsample",
]
