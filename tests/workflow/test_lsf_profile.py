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
    # one job of the immune config's experiment sweep (rule train_rna_sweep, first experiment)
    "immune_train_rna_sweep": ("immune", "train_rna_sweep"),
}


def _env(log: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{STANDINS}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["LSF_STANDIN_LOG"] = str(log)
    env["LSF_STANDIN_STATUS"] = "EXIT"
    env["SNAKEMAKE_LSF_MEMFMT"] = "perjob"
    return env


def _fragments(path: Path) -> None:
    import pandas as pd

    from rvi.io import write_fragments

    write_fragments(path, pd.DataFrame({"chrom": ["chr1"], "start": [10], "end": [90], "barcode": ["A"], "count": [1]}))


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
            # Label files and fragments files are checked at start (header; bgzip + index): minimal valid ones.
            if "/labels/" in value and value.endswith(".csv"):
                path.write_text(",".join(["barcode", *cfg.get("labels", {}).get("levels", [])]) + "\n")
            elif value.endswith(".tsv.gz"):
                _fragments(path)
            else:
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
        *(["sweep"] if rule.endswith("_sweep") else []),  # sweep jobs are not part of `all`
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


# ------------------------------------------------------------------------------------------------ sweeps


def test_sweep_job_gets_the_stage_resources(bsub_calls):
    """A sweep experiment is its own cluster job with exactly train_rna's queue, cores, memory and GPU flags."""
    sweep, main = bsub_calls["immune_train_rna_sweep"][0], bsub_calls["immune_train_rna"][0]
    job = sweep[sweep.index("-J") + 1]
    # Which experiment Snakemake submits first is not fixed; it must be one of the config's.
    match = re.match(r"Snakemake_rule_train_rna_sweep:experiment=([^_]+(?:_[^_]+)*?)___\(", job)
    assert match, job
    experiment = match.group(1)
    assert experiment in yaml.safe_load((ROOT / "config" / "immune.yaml").read_text())["sweeps"]["experiments"]
    assert _flags(sweep) == _flags(main)
    assert _one(sweep, "-q") == "gpu-normal"
    assert _one(sweep, "-gpu") == "mode=shared:j_exclusive=yes:gmem=80000:num=1"
    assert "--target-jobs" in sweep[-1] and f"train_rna_sweep:experiment={experiment}" in sweep[-1]
    # retries grow the sweep job's memory like the stage's
    assert [_one(a, "-M") for a in bsub_calls["immune_train_rna_sweep"]] == [
        _one(a, "-M") for a in bsub_calls["immune_train_rna"]
    ]


# ------------------------------------------------------------------------------------------------ software

# The profile says '. "${RVI_ACTIVATE:-profiles/activate.sh}"'; the plugin runs bsub through a shell, which
# expands it at submission (RVI_ACTIVATE is unset here).
ACTIVATE = ". profiles/activate.sh"


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_job_activates_the_environment_first(bsub_calls, name):
    """The profile's precommand leads every job command: activation, then the nested Snakemake."""
    for argv in bsub_calls[name]:
        command = argv[-1]
        assert command.startswith(f"{ACTIVATE} && "), command[:200]
        assert re.search(r" && \S*python\S* -m snakemake ", command), command[:300]


def test_recorded_precommand_activates_in_the_repository(bsub_calls, tmp_path):
    """The activation part of a recorded job command, run by sh in the repository root, gives a Python with
    rvi and snakemake (the repository's .venv, or the environment running these tests)."""
    command = bsub_calls["immune_train_rna"][0][-1]
    precommand = command.split(" && ", 1)[0]
    env = {**os.environ, "RVI_VENV": sys.prefix}
    env.pop("RVI_CONDA_ENV", None)
    env.pop("RVI_MODULES", None)
    probe = f'{precommand} && python -c "import rvi, snakemake, sys; print(sys.prefix)"'
    proc = subprocess.run(["sh", "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == sys.prefix


def _activate(tmp_path: Path, **env_vars: str) -> subprocess.CompletedProcess:
    """Source profiles/activate.sh with sh (dash on Debian) under a minimal environment."""
    bin_dir = tmp_path / "bin"
    env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(tmp_path), **env_vars}
    probe = f'{ACTIVATE} && echo "python=$(command -v python) conda_env=${{CONDA_DEFAULT_ENV:-}}"'
    return subprocess.run(["sh", "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _standin(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def _fake_venv(folder: Path, python: str) -> Path:
    """A folder with bin/activate (puts bin/ first on PATH) and a bin/python that runs ``python``."""
    _standin(folder / "bin" / "python", f'#!/bin/sh\nexec {python} "$@"\n')
    (folder / "bin" / "activate").write_text(f'PATH="{folder / "bin"}:$PATH"; export PATH\n')
    return folder


requires_venv = pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="tests run outside a virtualenv")


@requires_venv
def test_activate_falls_back_to_the_virtualenv(tmp_path):
    proc = _activate(tmp_path, RVI_VENV=sys.prefix)
    assert proc.returncode == 0, proc.stderr
    assert f"python={sys.prefix}/bin/python " in proc.stdout


def test_activate_fails_loudly_without_an_environment(tmp_path):
    proc = _activate(tmp_path, RVI_VENV=str(tmp_path / "missing"))
    assert proc.returncode != 0
    assert "no environment to activate: RVI_CONDA_ENV is not set" in proc.stderr
    assert f"'{tmp_path / 'missing'}/bin/activate' does not exist" in proc.stderr


def test_activate_fails_when_the_environment_lacks_the_packages(tmp_path):
    # -S: no site-packages, so neither rvi (editable install) nor snakemake can be imported
    venv = _fake_venv(tmp_path / "bare", f"{sys.executable} -S")
    proc = _activate(tmp_path, RVI_VENV=str(venv))
    assert proc.returncode != 0
    assert "cannot import rvi, snakemake" in proc.stderr
    assert "the activated environment lacks the workflow's packages" in proc.stderr


@requires_venv
def test_activate_loads_modules_then_the_conda_env(tmp_path):
    log = tmp_path / "module.log"
    _standin(tmp_path / "bin" / "module", f'#!/bin/sh\necho "$@" >> {log}\n')
    # `conda shell.posix hook` prints a conda() function; `conda activate <env>` puts the env first on PATH.
    hook = (
        'conda() { [ "$1" = activate ] && [ "$2" = rvi-test ] || return 1; '
        f'CONDA_DEFAULT_ENV="$2"; PATH="{sys.prefix}/bin:$PATH"; export CONDA_DEFAULT_ENV PATH; }}'
    )
    _standin(tmp_path / "bin" / "conda", f"#!/bin/sh\ncat <<'HOOK'\n{hook}\nHOOK\n")
    proc = _activate(tmp_path, RVI_MODULES="cuda/12.4 gcc/12", RVI_CONDA_ENV="rvi-test")
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().split() == ["load", "cuda/12.4", "gcc/12"]
    assert f"python={sys.prefix}/bin/python conda_env=rvi-test" in proc.stdout
    bad = _activate(tmp_path, RVI_CONDA_ENV="missing-env")
    assert bad.returncode != 0 and "'conda activate missing-env' failed" in bad.stderr


def test_activate_fails_when_modules_are_asked_for_without_module(tmp_path):
    inits = ["/etc/profile.d/modules.sh", "/usr/share/lmod/lmod/init/sh", "/usr/share/Modules/init/sh"]
    if any(Path(p).exists() for p in inits):
        pytest.skip("this machine has environment modules")
    proc = _activate(tmp_path, RVI_MODULES="cuda/12.4", RVI_VENV=sys.prefix)
    assert proc.returncode != 0
    assert "RVI_MODULES='cuda/12.4' is set but there is no 'module' command" in proc.stderr
    proc = _activate(tmp_path, RVI_CONDA_ENV="rvi")
    assert proc.returncode != 0 and "RVI_CONDA_ENV='rvi' is set but no conda is found" in proc.stderr
