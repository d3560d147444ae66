"""Temporary DDP folders (rvi-ddp-*) are removed on every exit path, also when a worker rank fails."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.workflow import REPO

SCRIPT = textwrap.dedent(
    """
    import time
    from rvi.distributed import ddp_ranks

    cfg = {"train_rna": {"training": {"devices": 2, "strategy": "ddp"}}}
    # The worker rank runs train_rna with these (bogus) arguments, fails at once, and the watchdog stops the job.
    kwargs = {"cfg": cfg, "rna": "missing.h5ad"}
    with ddp_ranks("train_rna", "rvi.stages.models:train_rna", kwargs, {"latent": "out/latent.parquet"}):
        time.sleep(60)
    """
)


def test_failed_rank_leaves_no_ddp_folder(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "DDP rank 1 failed" in proc.stdout
    assert not list(tmp_path.glob("rvi-ddp-*")), list(tmp_path.iterdir())
