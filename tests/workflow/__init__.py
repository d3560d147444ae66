"""Workflow tests. ``snakemake()`` runs the repository's Snakefile in a subprocess, as users do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "workflow" / "Snakefile"


def snakemake(
    workdir: Path | None, config: Path, *args: str, cores: int = 2, timeout: int = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """``python -m snakemake`` on ``config`` (working in ``workdir`` when given), output captured."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE)]
    if workdir is not None:
        cmd += ["--directory", str(workdir)]
    cmd += ["--configfile", str(config), "--cores", str(cores), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
