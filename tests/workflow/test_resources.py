"""Resource lookups: per-stage table, attempt-scaled memory, LSF and SLURM resources, queue checks, params isolation."""

from __future__ import annotations

import copy

import pytest
import yaml

from rvi.workflow import (
    DEFAULT_RESOURCES,
    GPU_STAGES,
    STAGES,
    ConfigError,
    ResourceTable,
    load_config,
    stage_params,
)
from tests.workflow import REPO, snakemake


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
    assert set(stage_params(cfg, "ground_truth_report")) == {"ground_truth", "labels", "select_cres", "covariates"}


def test_params_do_not_depend_on_yaml_key_order():
    raw = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    shuffled = yaml.safe_load(yaml.safe_dump(raw, sort_keys=True))
    a, b = load_config(raw, check_sample_sheet=False), load_config(shuffled, check_sample_sheet=False)
    for stage in STAGES:
        if stage != "notebook":
            assert repr(stage_params(a, stage)) == repr(stage_params(b, stage)), stage


# --------------------------------------------------------------------------------------------------
# SLURM resources and the start-time checks against resources.queues
# --------------------------------------------------------------------------------------------------


def raw_study(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())


def config_error(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(raw, check_sample_sheet=False)
    return str(err.value)


def test_slurm_resources_from_the_same_table():
    """slurm_partition = the stage's queue (or its partition), cpus_per_task = the rule's threads."""
    raw = raw_study("bone_marrow")
    raw["resources"]["train_multimodal"] |= {"gpu_model": "a100", "partition": "gpu-huge"}
    res = ResourceTable(load_config(raw, check_sample_sheet=False))
    rna = res.rule_resources("train_rna")
    assert rna["slurm_partition"] == "gpu-normal" and rna["gpu"] == 1 and "gpu_model" not in rna
    assert rna["cpus_per_task"](None, 8) == 8
    multi = res.rule_resources("train_multimodal")
    assert multi["slurm_partition"] == "gpu-huge" and multi["lsf_queue"] == "gpu-normal"
    assert multi["gpu_model"] == "a100"
    cpu = res.rule_resources("load_atac")
    assert cpu["slurm_partition"] == "normal" and cpu["runtime"] == 240 and cpu["mem_mb"](None, 1) == 64000


def test_cpu_stages_never_request_gpus():
    raw = raw_study("demo")
    raw["resources"]["default"] |= {"gpu": 2, "gpu_model": "a100"}
    res = ResourceTable(load_config(raw, check_sample_sheet=False))
    for stage in STAGES:
        declared = res.rule_resources(stage)
        if stage in GPU_STAGES:
            assert declared["gpu"] == 1 and declared["gpu_model"] == "a100"  # own entry: gpu 1; model from default
        else:
            assert not {"gpu", "gpu_model"} & set(declared), stage
            assert "-gpu" not in res.lsf_extra(stage)
    # a CPU stage's own entry asking for one is a start-time error naming study, stage, key and value
    raw = raw_study("immune")
    raw["resources"]["merge_rna"]["gpu"] = 1
    msg = config_error(raw)
    assert "study 'immune', stage merge_rna: 'resources.merge_rna.gpu' = 1: merge_rna runs on CPUs only" in msg


@pytest.mark.parametrize(("name", "stage"), [("immune", "train_rna"), ("bone_marrow", "train_multimodal")])
def test_cluster_study_needs_gpu_stage_entries(name, stage):
    raw = raw_study(name)
    del raw["resources"][stage]
    msg = config_error(raw)
    assert f"study {name!r}, stage {stage}: no 'resources.{stage}' entry, but this is a cluster study" in msg
    assert "queue 'normal', mem_mb 8000" in msg  # what it would silently have got


def test_cluster_study_detected_without_queue_table():
    raw = raw_study("test_tiny")  # names gpu-normal but has no queues table
    del raw["resources"]["train_multimodal"]
    assert "resources name queue(s) ['gpu-normal']" in config_error(raw)


def test_local_and_rna_only_studies_need_no_gpu_entries():
    # no queue other than the built-in 'normal' and no queues table: a local run, defaults are fine
    load_config({"study": "x", "demo_data": {"generate": True}, "resources": {"default": {"mem_mb": 1000}}})
    # immune is RNA-only: train_multimodal never runs, so it needs no entry
    assert "train_multimodal" not in raw_study("immune")["resources"]
    load_config(raw_study("immune"), check_sample_sheet=False)


def test_memory_above_queue_limit():
    raw = raw_study("embryo")
    raw["resources"]["merge_atac"]["mem_mb"] = 500000
    raw["resources"]["default"]["mem_mb"] = 400000
    msg = config_error(raw)
    assert (
        "study 'embryo', stage merge_atac: 'resources.merge_atac.mem_mb' = 500000 exceeds max_mem_mb 370000 of "
        "queue 'normal' (resources.queues.normal); queue(s) with enough memory: hugemem"
    ) in msg
    # stages without their own mem_mb are named through the default they inherit
    assert "stage load_rna: 'resources.default.mem_mb' = 400000 exceeds max_mem_mb 370000" in msg


def test_retries_are_capped_at_the_queue_limit():
    res = ResourceTable(study("embryo"))
    assert [res.mem_mb("merge_atac", a) for a in (1, 2, 3)] == [250000, 370000, 370000]
    assert res.lsf_extra("merge_atac", 3).startswith("-M 370000 ")
    # below the limit retries grow as before
    assert [res.mem_mb("train_rna", a) for a in (1, 2, 3)] == [300000, 450000, 675000]
    # without a queue table there is no cap
    raw = raw_study("embryo")
    raw["resources"]["queues"] = {}
    assert ResourceTable(load_config(raw, check_sample_sheet=False)).mem_mb("merge_atac", 3) == 562500


def test_unknown_queue_name():
    raw = raw_study("bone_marrow")
    raw["resources"]["train_rna"]["queue"] = "gpu-nromal"
    raw["resources"]["load_atac"]["partition"] = "bigmem"
    msg = config_error(raw)
    assert (
        "study 'bone_marrow', stage train_rna: 'resources.train_rna.queue' = 'gpu-nromal' is not a queue of "
        "resources.queues; did you mean 'gpu-normal'? (known: gpu-huge, gpu-normal, hugemem, long, normal)"
    ) in msg
    assert "stage load_atac: 'resources.load_atac.partition' = 'bigmem' is not a queue of resources.queues" in msg


def test_runtime_and_gpu_queue_checks():
    raw = raw_study("bone_marrow")
    raw["resources"]["train_multimodal"]["runtime"] = 1440  # gpu-normal allows 720
    raw["resources"]["train_rna"]["queue"] = "normal"  # a GPU job on a CPU queue
    raw["resources"]["select_cres"]["queue"] = "gpu-huge"  # a CPU job on a GPU queue
    msg = config_error(raw)
    assert (
        "stage train_multimodal: 'resources.train_multimodal.runtime' = 1440 minutes exceeds max_runtime 720 of "
        "queue 'gpu-normal'"
    ) in msg
    assert "stage train_rna: 'resources.train_rna.gpu' = 1 but queue 'normal' has no GPUs" in msg
    assert "stage select_cres: requests no GPU but queue 'gpu-huge' is a GPU queue" in msg
    # training a GPU stage on CPUs is fine once it also moves to a CPU queue
    raw = raw_study("bone_marrow")
    raw["resources"]["train_rna"] |= {"gpu": 0, "queue": "normal"}
    raw["train_rna"]["training"]["accelerator"] = "cpu"
    assert "gpu" not in ResourceTable(load_config(raw, check_sample_sheet=False)).lsf_extra("train_rna")


def test_bad_queue_table_entries_are_schema_errors():
    raw = raw_study("immune")
    raw["resources"]["queues"]["normal"] = {"max_mem": 1}
    msg = config_error(raw)
    assert "unknown key 'resources.queues.normal.max_mem'; did you mean 'max_mem_mb'?" in msg


def test_snakemake_stops_at_parse_time_on_a_resource_problem(tmp_path):
    """The queue check runs while the Snakefile is parsed: `snakemake -n` fails before any job or file check."""
    raw = raw_study("bone_marrow")
    raw["resources"]["train_rna"]["mem_mb"] = 400000
    config = tmp_path / "bm.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = snakemake(tmp_path, config, "-n", cores=1, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "study 'bone_marrow', stage train_rna: 'resources.train_rna.mem_mb' = 400000 exceeds max_mem_mb" in out
    assert "gpu-huge" in out  # the GPU queue with enough memory is suggested
    assert "missing input file" not in out  # stopped before the sample sheet is read
