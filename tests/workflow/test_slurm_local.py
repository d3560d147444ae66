"""The demo workflow through profiles/slurm on a real one-node SLURM cluster (scripts/local_slurm.sh).

Opt-in (``make test-slurm``, i.e. ``RVI_SLURM_TEST=1 pytest tests/workflow/test_slurm_local.py``): it
needs root and the Debian packages ``slurm-wlm munge``, starts munged/slurmctld/slurmd on this machine
and takes several minutes (the SLURM plugin adds ~20 s of status polling per job). The daemons are
always stopped afterwards.

config/demo.yaml runs unchanged except for its working directory and ``gpu: 0`` on the two training
stages (the local node has no GPU; they stay on the ``gpu-normal`` partition, which the local cluster
also has). The cluster has no accounting database, so the run passes ``--slurm-status-command squeue``
and SLURM's completion log (``jobcomp/filetxt``) is the record of what SLURM ran: every job Snakemake
submitted must be there as COMPLETED, with the partition, memory and CPUs of its stage.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from rvi.workflow import GPU_STAGES, ResourceTable, load_config

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "local_slurm.sh"
SBIN = os.pathsep.join(["/usr/sbin", "/usr/local/sbin", os.environ.get("PATH", "")])
#: Rules that run on the submit host (localrules of the Snakefile the demo's default target reaches).
LOCAL_RULES = {"all"}

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("RVI_SLURM_TEST") != "1",
        reason="starts a local SLURM cluster and runs the demo through it (minutes): set RVI_SLURM_TEST=1 "
        "or run `make test-slurm`",
    ),
    pytest.mark.skipif(
        shutil.which("slurmctld", path=SBIN) is None,
        reason="SLURM is not installed (apt-get install -y slurm-wlm munge)",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="a local SLURM cluster needs root (slurmd runs the jobs)"),
    pytest.mark.slow,
]


def _script(action: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), action], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    """A running local cluster; yields the environment (SLURM_CONF set) that reaches it. Always stopped."""
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "RVI_SLURM_DIR": str(state), "SLURM_CONF": str(state / "slurm.conf")}
    # Jobs work in a temporary directory: point the profile's precommand at the repository's script
    # and environment (sbatch passes the submitting environment on to the jobs).
    env |= {"RVI_ACTIVATE": str(REPO / "profiles" / "activate.sh"), "RVI_VENV": sys.prefix}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), SBIN])
    try:
        started = _script("start", env)
        if started.returncode != 0:
            pytest.fail(f"local SLURM did not start:\n{started.stdout}\n{started.stderr}")
        yield env
    finally:
        stopped = _script("stop", env)
        assert stopped.returncode == 0, stopped.stderr


@pytest.fixture(scope="module")
def demo_run(slurm_env, tmp_path_factory):
    """config/demo.yaml (GPU stages with gpu: 0) through --profile profiles/slurm; returns the facts to check."""
    workdir = tmp_path_factory.mktemp("demo")
    raw = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    for stage in GPU_STAGES:
        raw["resources"][stage]["gpu"] = 0
    config = workdir / "demo.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        str(REPO / "profiles" / "slurm"),
        "--snakefile",
        str(REPO / "workflow" / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        # local-test flags: no accounting database, fast first status check, fail fast, keep SLURM logs
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "5",
        "--slurm-keep-successful-logs",
        "--retries",
        "0",
        "--latency-wait",
        "5",
    ]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=slurm_env, capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - start
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"snakemake --profile profiles/slurm failed after {wall:.0f} s:\n{log[-6000:]}")
    submitted = {
        jobid: Path(path)
        for jobid, path in re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (.*?)\)\.", log)
    }
    completion_log = Path(slurm_env["RVI_SLURM_DIR"]) / "jobcomp.txt"
    finished = {}
    for line in completion_log.read_text().splitlines() if completion_log.exists() else []:
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        finished[fields["JobId"]] = fields
    steps = re.findall(r"(\d+) of (\d+) steps \(100%\) done", log)
    busy = sum(
        (datetime.fromisoformat(f["EndTime"]) - datetime.fromisoformat(f["StartTime"])).total_seconds()
        for jobid, f in finished.items()
        if jobid in submitted
    )
    print(f"\nSLURM demo: {len(submitted)} SLURM jobs, {wall:.0f} s wall time, {busy:.0f} s of job run time in all")
    return {"workdir": workdir, "config": raw, "log": log, "submitted": submitted, "finished": finished, "steps": steps}


def _rule(slurm_log: Path) -> str:
    """The rule of a SLURM job, from its log path .snakemake/slurm_logs/rule_<rule>/<wildcards>/<id>.log."""
    match = re.search(r"/rule_(\w+)/", str(slurm_log))
    assert match, slurm_log
    return match.group(1)


def test_every_job_went_through_sbatch_and_completed(demo_run):
    submitted, finished = demo_run["submitted"], demo_run["finished"]
    assert submitted, demo_run["log"][-3000:]
    # Snakemake's total (all jobs, including the local `all`) = SLURM jobs + local jobs
    done, total = demo_run["steps"][-1]
    assert done == total
    local = re.findall(r"^localrule (\w+):", demo_run["log"], re.M)
    assert set(local) <= LOCAL_RULES, local
    assert len(submitted) + len(local) == int(total)
    # SLURM's own completion log has every submitted job, COMPLETED with exit code 0
    missing = sorted(set(submitted) - set(finished))
    assert not missing, f"jobs submitted but absent from SLURM's completion log: {missing}"
    for jobid in submitted:
        assert finished[jobid]["JobState"] == "COMPLETED", finished[jobid]
        assert finished[jobid]["ExitCode"] == "0:0", finished[jobid]
    rules = Counter(_rule(path) for path in submitted.values())
    expected = {"demo_data", "load_rna", "merge_rna", "scrublet", "merge_scrublet", "load_atac", "merge_atac"}
    expected |= {"train_rna", "annotate", "select_cres", "train_multimodal", "notebook", "ground_truth_report"}
    assert set(rules) == expected
    # one notebook per stage (merge_rna, scrublet, load_atac, train_rna, annotate, select_cres,
    # train_multimodal, ground_truth_report), one job per sample / library for the per-sample rules
    assert rules["notebook"] == 8 and rules["train_rna"] == 1 and rules["train_multimodal"] == 1
    assert rules["load_rna"] == rules["load_atac"] == rules["scrublet"] == 6


def test_slurm_got_each_stages_partition_memory_and_cpus(demo_run):
    """Partition, --mem and --cpus-per-task come from the study's resources table; no job asked for a GPU."""
    res = ResourceTable(load_config(demo_run["config"], check_sample_sheet=False))
    for jobid, path in demo_run["submitted"].items():
        rule = _rule(path)
        stage = {"merge_scrublet": "scrublet"}.get(rule, rule)
        job = demo_run["finished"][jobid]
        assert job["Partition"] == ("gpu-normal" if stage in GPU_STAGES else "normal"), (rule, job)
        assert job["Partition"] == res.partition(stage)
        tres = dict(item.split("=", 1) for item in job["Tres"].split(","))
        assert tres["mem"] == f"{res.mem_mb(stage)}M", (rule, tres)
        threads = 1 if rule == "merge_scrublet" else res.threads(stage)
        assert tres["cpu"] == str(threads), (rule, tres)
        assert not any("gpu" in key for key in tres), (rule, tres)
        assert int(job["TimeLimit"]) == res.runtime(stage), (rule, job)


def test_outputs_exist(demo_run):
    out = demo_run["workdir"] / "results" / "demo"
    for rel in (
        "rna.h5ad",
        "scrublet.csv",
        "atac.h5ad",
        "rna_model/latent.parquet",
        "annotation.csv",
        "cres.csv",
        "multimodal_model/latent.parquet",
        "ground_truth_report.csv",
        "notebooks/train_multimodal.ipynb",
    ):
        assert (out / rel).is_file(), rel
