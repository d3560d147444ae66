"""Resource lookups: per-stage table, attempt-scaled memory, LSF flags, params isolation."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from rvi.workflow import DEFAULT_RESOURCES, GPU_STAGES, STAGES, ResourceTable, load_config, stage_params

REPO = Path(__file__).resolve().parents[2]


def study(name: str) -> dict:
    return load_config(yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text()), check_sample_sheet=False)


@pytest.mark.parametrize(
    ("name", "mem", "queue"),
    [("immune", 60000, "gpu-normal"), ("bone_marrow", 40000, "gpu-normal"), ("embryo", 300000, "gpu-huge")],
)
def test_gpu_table_of_real_studies(name, mem, queue):
    res = ResourceTable(study(name))
    assert res.mem_mb("train_rna") == mem
    assert res.queue("train_rna") == queue
    assert res.gpu("train_rna") == 1
    assert res.queue("merge_rna") == "normal"  # CPU stages go to the CPU queue


def test_bone_marrow_lsf_flags_match_cluster_form():
    """The documented bsub form: -M / select / rusage / span and the exclusive shared-mode GPU."""
    flags = ResourceTable(study("bone_marrow")).lsf_extra("train_multimodal")
    assert flags == (
        '-M 40000 -R "select[mem>40000] rusage[mem=40000] span[hosts=1]" '
        '-gpu "mode=shared:j_exclusive=yes:gmem=80000:num=1"'
    )


def test_embryo_priority_flag():
    assert ResourceTable(study("embryo")).lsf_extra("train_rna").endswith(" -sp 99")


def test_memory_grows_with_attempt():
    res = ResourceTable(study("immune"))
    assert [res.mem_mb("train_rna", a) for a in (1, 2, 3)] == [60000, 90000, 135000]
    assert "rusage[mem=90000]" in res.lsf_extra("train_rna", attempt=2)


def test_stage_entry_overrides_default_key_by_key():
    cfg = load_config(
        {
            "study": "x",
            "demo_data": {"generate": True},
            "resources": {"default": {"mem_mb": 1234}, "load_atac": {"threads": 3}},
        }
    )
    res = ResourceTable(cfg)
    assert res.spec("load_atac") == {**DEFAULT_RESOURCES, "mem_mb": 1234, "threads": 3}
    assert res.gpu("train_rna") == 1 and res.gpu("merge_rna") == 0
    assert res.threads("merge_rna") == 1
    with pytest.raises(KeyError, match="unknown stage"):
        res.spec("train")


def test_rule_resources_declare_gpu_only_on_gpu_stages():
    res = ResourceTable(study("demo"))
    for stage in STAGES:
        declared = res.rule_resources(stage)
        assert ("gpu" in declared) == (stage in GPU_STAGES or res.gpu(stage) > 0)
        assert declared["mem_mb"](None, 2) == res.mem_mb(stage, 2)
        assert declared["lsf_queue"] == res.queue(stage)


def test_params_isolation_between_stages():
    """Editing a train_rna parameter changes the params of train_rna only (downstream reruns follow
    from its new outputs), never those of the upstream stages."""
    cfg = study("demo")
    before = {s: stage_params(cfg, s) for s in STAGES if s != "notebook"}
    edited = copy.deepcopy(cfg)
    edited["train_rna"]["training"]["max_epochs"] += 1
    after = {s: stage_params(edited, s) for s in before}
    changed = {s for s in before if before[s] != after[s]}
    assert changed == {"train_rna"}


def test_shared_sections_are_part_of_the_readers_params():
    cfg = study("demo")
    assert set(stage_params(cfg, "train_rna")) == {"train_rna", "covariates", "labels"}
    assert set(stage_params(cfg, "merge_rna")) == {"merge_rna", "covariates"}
    assert set(stage_params(cfg, "ground_truth_report")) == {"ground_truth", "labels", "select_cres"}


def test_params_do_not_depend_on_yaml_key_order():
    raw = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    shuffled = yaml.safe_load(yaml.safe_dump(raw, sort_keys=True))
    a, b = load_config(raw, check_sample_sheet=False), load_config(shuffled, check_sample_sheet=False)
    for stage in STAGES:
        if stage != "notebook":
            assert repr(stage_params(a, stage)) == repr(stage_params(b, stage)), stage
