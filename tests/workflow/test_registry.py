"""The stage registry is the one list of stages: a stage added there (plus its rule, function and notebook)
is validated, gets resources and params, and is a target, with no other edit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from rvi.workflow import REGISTRY, STAGES, get_stage, load_config
from rvi.workflow.schema import load_schema
from tests.workflow import REPO
from tests.workflow.test_e2e import job_counts

DUMMY_ENTRY = """
    Stage(
        "dummy",
        "rvi.stages.dummy:dummy",
        reads=("labels",),
        section_schema={
            "type": "object",
            "additionalProperties": False,
            "properties": {"factor": {"type": "integer", "minimum": 1, "default": 2}},
        },
        outputs={"table": "dummy/{part}.csv"},
        target="extra",
        extra_targets=lambda cfg: [f"dummy/{part}.csv" for part in ("a", "b")],
        notebook="dummy",
        notebook_inputs={"table": "dummy/a.csv"},
    ),
"""

DUMMY_FUNCTION = '''
"""A stage added by tests/workflow/test_registry.py."""

from rvi.io.atomic import write_csv


def dummy(rna, table, cfg, threads=1):
    import pandas as pd

    write_csv(pd.DataFrame({"factor": [cfg["dummy"]["factor"]]}), table, index=False)
'''

DUMMY_RULE = """

rule dummy:
    input:
        rna=out("rna.h5ad"),
    output:
        **OUTPUTS["dummy"],
    log:
        log_path("dummy/{part}"),
    benchmark:
        bench_path("dummy/{part}")
    params:
        cfg=params_of("dummy"),
    threads: threads_of("dummy")
    resources:
        **RES.rule_resources("dummy"),
    run:
        run_rule("dummy", input, output, params, log, threads)
"""

CHECK = """
import json, sys, yaml
from rvi.workflow import ConfigError, ResourceTable, load_config, stage_params
raw = yaml.safe_load(open("config/demo.yaml"))
raw["dummy"] = {"factor": 3}
raw["resources"]["dummy"] = {"mem_mb": 1234}
cfg = load_config(raw, check_sample_sheet=False)
out = {"params": stage_params(cfg, "dummy"), "mem_mb": ResourceTable(cfg).mem_mb("dummy")}
out["errors"] = ""
for section, value in (("dummy", {"factr": 3}), ("resources", {**raw["resources"], "dummy": {"gpu": 1}})):
    try:
        load_config({**raw, section: value}, check_sample_sheet=False)
    except ConfigError as exc:
        out["errors"] += str(exc)
print(json.dumps(out))
"""


def copy_with_dummy_stage(tmp_path: Path) -> Path:
    """A copy of src/, workflow/, notebooks/ and config/ with a stage added: registry, rule, function, notebook."""
    root = tmp_path / "repo"
    for folder in ("src", "workflow", "notebooks", "config"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    registry = root / "src" / "rvi" / "workflow" / "registry.py"
    text = registry.read_text()
    anchor = '    Stage("sweep_metrics"'
    assert anchor in text
    registry.write_text(text.replace(anchor, DUMMY_ENTRY.lstrip("\n") + anchor))
    (root / "src" / "rvi" / "stages" / "dummy.py").write_text(DUMMY_FUNCTION.lstrip())
    with open(root / "workflow" / "rules" / "report.smk", "a") as fh:
        fh.write(DUMMY_RULE)
    notebook = json.loads((REPO / "notebooks" / "ground_truth_report.ipynb").read_text())
    notebook["cells"] = notebook["cells"][:2]
    notebook["cells"][1]["source"] = ['study = "demo"\n', 'table = ""\n']
    (root / "notebooks" / "dummy.ipynb").write_text(json.dumps(notebook))
    return root


def test_a_stage_added_through_the_registry_is_validated_resourced_and_targeted(tmp_path):
    root = copy_with_dummy_stage(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, cwd=root, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    # schema: the section schema from the registry (defaults filled), unknown keys named
    labels = {"hierarchy": None, "levels": ["label_l1", "label_l2", "label_l3"]}
    assert got["params"] == {"dummy": {"factor": 3}, "labels": labels}
    assert "unknown key 'dummy.factr'; did you mean 'factor'?" in got["errors"]
    # resources: its own entry, and the CPU-stage check
    assert got["mem_mb"] == 1234
    assert "stage dummy: 'resources.dummy.gpu' = 1: dummy runs on CPUs only" in got["errors"]
    # targets: its group rule, and `all`, run it and its notebook
    work = tmp_path / "work"
    work.mkdir()
    for target in ("extra", "all"):
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(root / "workflow" / "Snakefile")]
        cmd += [
            "--directory",
            str(work),
            "--configfile",
            str(root / "config" / "demo.yaml"),
            "-n",
            "--cores",
            "1",
            target,
        ]
        dry = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert dry.returncode == 0, dry.stderr[-3000:]
        jobs = job_counts(dry.stdout)
        assert jobs.get("dummy") == 2, (target, jobs)  # one per extra target of its wildcard output
        assert "results/demo/notebooks/dummy.ipynb" in dry.stdout
        assert "results/demo/dummy/a.csv" in dry.stdout and "results/demo/dummy/b.csv" in dry.stdout


def test_registry_is_what_the_schema_and_resources_list():
    schema = load_schema()
    assert set(schema["properties"]["resources"]["properties"]) >= set(STAGES)
    assert schema["properties"]["sweeps"]["properties"]["stage"]["enum"] == ["train_rna", "train_multimodal"]
    for stage in REGISTRY:
        if stage.section:
            assert stage.section in schema["properties"], stage.name
        assert get_stage(stage.resources).resources == stage.resources, stage.name
    cfg = load_config({"study": "x", "demo_data": {"generate": True}})
    assert cfg["resources"] == {"mem_attempt_factor": 1.5, "queues": {}, "default": {}}
