"""Interrupted training jobs: SIGINT / SIGTERM stop train_rna within seconds, leave no process and no
finished-looking output, and `--rerun-incomplete` resumes from the checkpoint of the last finished epoch.

The tiny config (RNA only, 150 epochs so the job is still training when the signal comes) runs the
upstream jobs once; each test then starts `snakemake` in a session of its own, as a terminal or a
batch scheduler would, and signals the whole process group (Ctrl-C; `bkill` / `scancel` send SIGTERM
to every process of the job).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.workflow import REPO, SNAKEFILE

TARGET = "results/tiny/rna_model/latent.parquet"
EPOCHS = 150  # enough that a quiet machine is still training when the signal is sent


def _command(workdir: Path, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir),
        "--configfile", str(workdir / "tiny_rna.yaml"), "--cores", "2", *args,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("interrupt")
    raw = yaml.safe_load((REPO / "config" / "test_tiny.yaml").read_text())
    raw.update(modalities=["rna"], ground_truth={"cells": None, "cres": None})
    for key in ("sweeps", "train_multimodal"):
        raw.pop(key)
    raw["train_rna"]["training"]["max_epochs"] = EPOCHS
    raw["resources"] = {"default": {"threads": 1, "mem_mb": 2000, "runtime": 10}}
    (workdir / "tiny_rna.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run(_command(workdir, "results/tiny/scrublet.csv"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def _session_processes(sid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-s", str(sid)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.split()[1][0] != "Z"]  # zombies are already gone


RESUMED = re.compile(r"resumed from \S+ at epoch (\d+)")


def _epochs_since_start(log: Path) -> int:
    """How many epochs the job writing ``log`` has logged since it started (or resumed)."""
    text = log.read_text() if log.exists() else ""
    done = re.findall(r"^epoch (\d+)/", text, flags=re.M)
    if not done:
        return 0
    start = RESUMED.search(text)
    return int(done[-1]) - (int(start.group(1)) if start else 0)


def _interrupt_training(workdir: Path, signum: int, epochs: int, *args: str) -> tuple[float, str]:
    """Start the train_rna job, send ``signum`` to its process group once it has logged ``epochs`` epochs.

    Counted from where the job started (a resumed job starts wherever the last interrupt left it, which
    depends on how fast the machine is), not as an absolute epoch number."""
    log = workdir / "results" / "tiny" / "logs" / "train_rna.log"
    log.unlink(missing_ok=True)
    proc = subprocess.Popen(
        _command(workdir, TARGET, *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.time() + 300
        while _epochs_since_start(log) < epochs:
            assert proc.poll() is None and time.time() < deadline, f"train_rna did not log {epochs} epochs"
            time.sleep(0.2)
        sent = time.time()
        os.killpg(proc.pid, signum)
        while (_session_processes(proc.pid) or proc.poll() is None) and time.time() - sent < 30:
            time.sleep(0.2)
        return time.time() - sent, log.read_text()
    finally:
        left = _session_processes(proc.pid)
        if left:
            os.killpg(proc.pid, signal.SIGKILL)
        assert not left, f"processes left after the interrupt: {left}"
        proc.wait()


def _check_stopped(model_dir: Path, elapsed: float, text: str, signum: int) -> None:
    assert elapsed < 10, f"took {elapsed:.1f} s to stop"
    assert f"[rvi] stage train_rna interrupted by {signal.Signals(signum).name}" in text
    assert f"epoch {EPOCHS}/{EPOCHS}" not in text and "trained" not in text
    # Nothing that looks finished; only the resume folder (not an output) remains.
    assert sorted(p.name for p in model_dir.iterdir()) == [".model.resume"]
    assert (model_dir / ".model.resume" / "last.ckpt").is_file()


@pytest.mark.slow
def test_sigint_and_sigterm_stop_training_and_rerun_incomplete_resumes(upstream):
    workdir = upstream
    model_dir = workdir / "results" / "tiny" / "rna_model"
    # Ctrl-C at epoch 3.
    elapsed, text = _interrupt_training(workdir, signal.SIGINT, 3)
    _check_stopped(model_dir, elapsed, text, signal.SIGINT)
    # The rerun resumes from the checkpoint; a scheduler's SIGTERM stops it again two epochs later.
    elapsed, text = _interrupt_training(workdir, signal.SIGTERM, 2, "--rerun-incomplete")
    assert "[rvi] resumed from results/tiny/rna_model/.model.resume/last.ckpt at epoch" in text
    assert "epoch 1/" not in text
    second_start = int(RESUMED.search(text).group(1))
    _check_stopped(model_dir, elapsed, text, signal.SIGTERM)
    # The last rerun finishes, again from the checkpoint, and keeps the history of every epoch.
    proc = subprocess.run(_command(workdir, TARGET, "--rerun-incomplete"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (workdir / "results" / "tiny" / "logs" / "train_rna.log").read_text()
    assert "[rvi] resumed from results/tiny/rna_model/.model.resume/last.ckpt at epoch" in text
    assert "epoch 1/" not in text and f"epoch {second_start + 1}/" not in text and f"epoch {EPOCHS}/{EPOCHS}" in text
    history = pd.read_csv(model_dir / "history.csv", index_col=0)
    assert list(history.index) == list(range(EPOCHS))
    assert not (model_dir / ".model.resume").exists()
    assert (model_dir / "model" / "model.pt").is_file()


@pytest.mark.slow
def test_copied_or_moved_work_folder_has_nothing_to_do(upstream, tmp_path):
    """Rule params and inputs hold work-folder-relative sample paths: a copy reruns nothing, training included."""
    workdir = upstream
    proc = subprocess.run(_command(workdir, TARGET, "--rerun-incomplete"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    copied = tmp_path / "elsewhere" / "copy"
    shutil.copytree(workdir, copied, symlinks=True)  # keeps modification times, like cp -a / rsync -a
    for folder in (copied, tmp_path / "moved"):
        if folder != copied:
            shutil.move(copied, folder)
        proc = subprocess.run(_command(folder, TARGET, "-n"), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]
