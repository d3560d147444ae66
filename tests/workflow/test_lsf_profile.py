"""profiles/lsf with the real snakemake-executor-plugin-lsf against stand-in LSF commands.

The stand-ins (tests/workflow/lsf_standins/) log every bsub argv and report each job as EXIT, so
Snakemake retries it (profile ``retries: 2``) and we record the bsub lines of attempts 1-3 without
running any job. Each study runs in a throwaway directory where the sample sheet's raw files and
the target rule's inputs are empty files, so the DAG holds just that one rule.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rvi.workflow import ResourceTable

ROOT = Path(__file__).resolve().parents[2]
STANDINS = Path(__file__).resolve().parent / "lsf_standins"
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")

pytestmark = pytest.mark.skipif(
    shutil.which("snakemake", path=str(Path(sys.executable).parent)) is None,
    reason="snakemake not installed",
)

CASES = {  # name: (study, rule)
    "immune_train_rna": ("immune", "train_rna"),
    "immune_merge_rna": ("immune", "merge_rna"),
    "bone_marrow_train_multimodal": ("bone_marrow", "train_multimodal"),
    "embryo_train_multimodal": ("embryo", "train_multimodal"),
}


def _env(log: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{STANDINS}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["LSF_STANDIN_LOG"] = str(log)
    env["LSF_STANDIN_STATUS"] = "EXIT"
    env["SNAKEMAKE_LSF_MEMFMT"] = "perjob"
    return env


def _prepare(work: Path, study: str, rule: str) -> list[str]:
    """Throwaway workdir; returns the snakemake command (run in ``work``) that submits only ``rule``."""
    work.mkdir(parents=True)
    for name in ("workflow", "config", "notebooks"):
        if (ROOT / name).exists():
            (work / name).symlink_to(ROOT / name)
    cfg = yaml.safe_load((ROOT / "config" / f"{study}.yaml").read_text())

    def local(value):
        """Cluster paths (config values, sample-sheet cells) -> empty files under work/raw/."""
        if isinstance(value, dict):
            return {k: local(v) for k, v in value.items()}
        if isinstance(value, str) and value.startswith("/"):
            path = work / "raw" / value.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            return str(path)
        return value

    lines = (ROOT / cfg["sample_sheet"]).read_text().splitlines()
    sheet = work / "samples.tsv"
    sheet.write_text("\n".join("\t".join(local(c) for c in line.split("\t")) for line in lines) + "\n")
    cfg = {**local(cfg), "sample_sheet": str(sheet)}
    (work / f"{study}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [
        SNAKEMAKE,
        "--profile",
        str(ROOT / "profiles" / "lsf"),
        "--configfile",
        f"{study}.yaml",
        "--until",
        rule,
    ]
    # The rule's inputs (from a dry run's job listing), created empty so only `rule` is to run.
    dry = subprocess.run([*cmd, "-n"], cwd=work, capture_output=True, text=True, env=_env(work / "dry.jsonl"))
    assert dry.returncode == 0, dry.stdout + dry.stderr
    block = re.search(rf"^rule {rule}:\n(.*?)^\s*jobid", dry.stdout, re.S | re.M)
    assert block, dry.stdout
    inputs = re.search(r"^\s*input: (.*)$", block.group(1), re.M).group(1).split(", ")
    for path in inputs:
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).touch()
    outputs = re.search(r"^\s*output: (.*)$", block.group(1), re.M).group(1).split(", ")
    return [cmd[0], *outputs, *cmd[1 : cmd.index("--until")]]


@pytest.fixture(scope="module")
def bsub_calls(tmp_path_factory) -> dict[str, list[list[str]]]:
    """bsub argv lists (one per attempt) for each case; the four runs go in parallel (~25 s)."""
    base = tmp_path_factory.mktemp("lsf")
    procs = {}
    for name, (study, rule) in CASES.items():
        work = base / name
        cmd = _prepare(work, study, rule)  # only `rule` may run: its inputs exist, upstream is pruned
        # Fast polling; the plugin itself waits 20 s before its first bjobs.
        cmd += ["--allowed-rules", rule, "--seconds-between-status-checks", "1", "--latency-wait", "1"]
        procs[name] = (
            subprocess.Popen(
                cmd,
                cwd=work,
                env=_env(work / "bsub.jsonl"),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
            work,
        )
    calls = {}
    for name, (proc, work) in procs.items():
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode != 0, f"{name}: stand-in jobs EXIT, so the run must fail\n{out}"
        log = work / "bsub.jsonl"
        assert log.exists(), f"{name}: no bsub call\n{out}"
        calls[name] = [json.loads(line) for line in log.read_text().splitlines()]
    return calls


def _flags(argv: list[str]) -> list[tuple[str, str]]:
    """(flag, value) pairs of a bsub argv (without the job command and -J/-o/-e paths)."""
    pairs = [(argv[i], argv[i + 1]) for i in range(len(argv) - 1) if argv[i].startswith("-")]
    return [(f, v) for f, v in pairs if f not in ("-J", "-o", "-e", "-cwd")]


def _one(argv, flag):
    values = [v for f, v in _flags(argv) if f == flag]
    assert len(values) == 1, (flag, argv)
    return values[0]


def _mem_flags(argv, mem):
    flags = _flags(argv)
    assert ("-M", str(mem)) in flags
    assert ("-R", f"select[mem>{mem}] rusage[mem={mem}] span[hosts=1]") in flags
    # the plugin's own rusage (per job with SNAKEMAKE_LSF_MEMFMT=perjob) and span
    assert ("-R", f"rusage[mem={float(mem)}]") in flags
    assert ("-R", "span[hosts=1]") in flags


@pytest.mark.parametrize(
    "name, queue, threads, mem, gmem, extra",
    [
        ("immune_train_rna", "gpu-normal", 8, 60000, 80000, None),
        ("bone_marrow_train_multimodal", "gpu-normal", None, 40000, None, None),
        ("embryo_train_multimodal", "gpu-huge", None, 300000, None, ("-sp", "99")),
    ],
)
def test_gpu_bsub_flags(bsub_calls, name, queue, threads, mem, gmem, extra):
    study, rule = CASES[name]
    res = ResourceTable(yaml.safe_load((ROOT / "config" / f"{study}.yaml").read_text()))
    first = bsub_calls[name][0]
    assert first[first.index("-J") + 1].startswith(f"Snakemake_rule_{rule}___(")
    assert _one(first, "-q") == queue
    assert _one(first, "-n") == str(threads or res.threads(rule))
    assert _one(first, "-W") == str(res.runtime(rule))
    assert "-env" in first and first[first.index("-env") + 1] == "all"
    _mem_flags(first, mem)
    gpu = _one(first, "-gpu")
    assert re.fullmatch(r"mode=shared:j_exclusive=yes:gmem=\d+:num=1", gpu), gpu
    if gmem:
        assert gpu == f"mode=shared:j_exclusive=yes:gmem={gmem}:num=1"
    if extra:
        assert extra in _flags(first)
    else:
        assert "-sp" not in first
    # the job command is the nested Snakemake call for this rule
    assert "--target-jobs" in first[-1] and f"{rule}:" in first[-1]


def test_cpu_rule_gets_cpu_queue_and_no_gpu(bsub_calls):
    argv = bsub_calls["immune_merge_rna"][0]
    assert _one(argv, "-q") == "normal"
    assert _one(argv, "-n") == "4"
    assert "-gpu" not in argv
    _mem_flags(argv, 120000)


@pytest.mark.parametrize("name", ["immune_train_rna", "embryo_train_multimodal", "immune_merge_rna"])
def test_retries_scale_memory(bsub_calls, name):
    """EXIT -> resubmitted twice (retries: 2) with mem_mb * mem_attempt_factor ** (attempt - 1)."""
    study, rule = CASES[name]
    cfg = yaml.safe_load((ROOT / "config" / f"{study}.yaml").read_text())
    res = ResourceTable(cfg)
    calls = bsub_calls[name]
    assert len(calls) == 3
    for attempt, argv in enumerate(calls, start=1):
        mem = res.mem_mb(rule, attempt)
        assert mem == round(
            cfg["resources"][rule]["mem_mb"] * float(cfg["resources"]["mem_attempt_factor"]) ** (attempt - 1)
        )
        _mem_flags(argv, mem)
        extra = res.lsf_extra(rule, attempt)
        assert f"-M {mem} " in extra


def test_profile_settings():
    prof = yaml.safe_load((ROOT / "profiles" / "lsf" / "config.yaml").read_text())
    assert prof["executor"] == "lsf"
    assert prof["retries"] == 2
    assert prof["rerun-incomplete"] is True
    assert "SNAKEMAKE_LSF_MEMFMT=perjob" in (ROOT / "profiles" / "lsf" / "env.sh").read_text()
