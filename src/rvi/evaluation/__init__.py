"""Evaluation of a study's embeddings (``docs/metrics_spec.md``): baselines, loading and checking embeddings,
scoring them side by side, the evaluation figures and the sections of the HTML study report.

Modules: :mod:`~rvi.evaluation.embeddings` (read / align / validate), :mod:`~rvi.evaluation.baselines`
(PCA, Harmony, scVI), :mod:`~rvi.evaluation.scoring` (H1-H14, scib, composites), :mod:`~rvi.evaluation.plots`,
:mod:`~rvi.evaluation.report`. The workflow stages that call them live in :mod:`rvi.stages.evaluate`.
"""

from rvi.evaluation.embeddings import EmbeddingError, align_embedding, read_embedding, validate_matrix
from rvi.evaluation.scoring import Evaluation, best_per_family, composite_table, score_embeddings

__all__ = [
    "EmbeddingError",
    "Evaluation",
    "align_embedding",
    "best_per_family",
    "composite_table",
    "read_embedding",
    "score_embeddings",
    "validate_matrix",
]
