"""The params of a stage's rule: the exact config the stage reads.

Rules put :func:`stage_params` in ``params`` so that Snakemake's params rerun-trigger reruns a stage (and,
through its changed outputs, everything downstream) when, and only when, that changes. Which sections a
stage reads is declared in its registry entry (``section`` and ``reads``).
"""

from __future__ import annotations

from collections.abc import Mapping

from rvi.workflow.registry import get_stage
from rvi.workflow.schema import canonical

__all__ = ["stage_params"]


def stage_params(cfg: Mapping, stage: str) -> dict:
    """The config a stage reads: its own section plus the shared sections it depends on."""
    st = get_stage(stage)
    out = {st.section: cfg[st.section]} if st.section else {}
    for section in st.reads:
        out[section] = cfg[section]
    # Snakemake compares params by repr(): sorted keys make reordering a YAML file a no-op.
    return canonical(out)
