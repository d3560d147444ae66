"""Per-stage cluster resources: the ``resources`` table as Snakemake resources, and its start-time checks.

:class:`ResourceTable` turns the table into Snakemake resources, with memory growing on retries (capped
at the queue's limit), plus the LSF flags (queue, ``-M``/``rusage``/``-gpu``) that the LSF executor
plugin cannot express by itself and the SLURM ones (partition, cpus, GPUs). :func:`resource_problems`
checks the table against the ``resources.queues`` limits at start. Which stages exist, and which of them
may ask for GPUs, comes from the stage registry (:mod:`rvi.workflow.registry`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from rvi.workflow.registry import GPU_STAGES, STAGES, active_stages, get_stage

__all__ = ["DEFAULT_RESOURCES", "GPU_KEYS", "ResourceTable", "resource_problems"]

#: Built-in resource defaults under ``resources.default`` (the config overrides them key by key).
DEFAULT_RESOURCES = {
    "threads": 1,
    "mem_mb": 4000,
    "runtime": 60,
    "gpu": 0,
    "gpu_mem_mb": 0,
    "queue": "normal",
    "partition": None,
    "gpu_model": None,
    "lsf_extra_flags": "",
}
#: Resource keys that only GPU stages may set (``resources.default`` values apply to GPU stages only).
GPU_KEYS = ("gpu", "gpu_mem_mb", "gpu_model")


class ResourceTable:
    """Per-stage resources from the config's ``resources`` table.

    ``resources.<stage>`` overrides ``resources.default`` key by key; the GPU stages default to
    ``gpu: 1``, and the GPU keys (``gpu``, ``gpu_mem_mb``, ``gpu_model``) of ``resources.default`` apply to
    GPU stages only, so a CPU stage never asks for a GPU. Memory grows geometrically with the Snakemake
    ``attempt`` (``--retries``): ``mem_mb * mem_attempt_factor ** (attempt - 1)``, capped on retries at the
    ``max_mem_mb`` of the stage's queue when ``resources.queues`` lists it (attempt 1 above that limit is a
    start-time error, see :func:`resource_problems`).
    """

    def __init__(self, cfg: Mapping):
        table = cfg["resources"]
        self.factor = float(table.get("mem_attempt_factor", 1.5))
        self.default = {**DEFAULT_RESOURCES, **table.get("default", {})}
        self.queues = {str(k): dict(v) for k, v in (table.get("queues") or {}).items()}
        self.table = {k: dict(v) for k, v in table.items() if k not in ("default", "mem_attempt_factor", "queues")}

    def spec(self, stage: str) -> dict:
        # Helper rules (merge_scrublet, sweep_metrics) use the resource entry their registry entry names.
        stage = stage if stage in STAGES else get_stage(stage).resources
        if stage in GPU_STAGES:
            # GPU stages ask for one GPU unless their own entry says otherwise (gpu: 0 trains on CPU).
            return {**self.default, "gpu": 1, **self.table.get(stage, {})}
        cpu_default = {key: DEFAULT_RESOURCES[key] for key in GPU_KEYS}
        return {**self.default, **cpu_default, **self.table.get(stage, {})}

    def threads(self, stage: str) -> int:
        return int(self.spec(stage)["threads"])

    def mem_mb(self, stage: str, attempt: int = 1) -> int:
        base = int(self.spec(stage)["mem_mb"])
        mem = int(round(base * self.factor ** (max(int(attempt), 1) - 1)))
        cap = self.max_mem_mb(stage)
        if cap is not None and mem > base:
            # A retry never asks for more than the queue can give (that job would never start).
            mem = max(min(mem, cap), base)
        return mem

    def runtime(self, stage: str) -> int:
        return int(self.spec(stage)["runtime"])

    def gpu(self, stage: str) -> int:
        return int(self.spec(stage)["gpu"])

    def gpu_model(self, stage: str) -> str | None:
        return self.spec(stage).get("gpu_model") or None

    def queue(self, stage: str) -> str:
        return str(self.spec(stage)["queue"])

    def partition(self, stage: str) -> str:
        """The SLURM partition: the entry's ``partition``, else its ``queue``."""
        return str(self.spec(stage).get("partition") or self.queue(stage))

    def queue_limits(self, stage: str) -> dict[str, dict]:
        """Limits (``resources.queues`` entries) of the stage's queue and SLURM partition, when listed."""
        names = dict.fromkeys([self.queue(stage), self.partition(stage)])
        return {name: self.queues[name] for name in names if name in self.queues}

    def max_mem_mb(self, stage: str) -> int | None:
        limits = [int(q["max_mem_mb"]) for q in self.queue_limits(stage).values() if q.get("max_mem_mb")]
        return min(limits) if limits else None

    def lsf_extra(self, stage: str, attempt: int = 1) -> str:
        """bsub flags the LSF plugin does not emit: ``-M``, ``select/rusage/span`` and ``-gpu``.

        Mirrors the cluster's documented form, e.g.
        ``-M 40000 -R "select[mem>40000] rusage[mem=40000] span[hosts=1]"
        -gpu "mode=shared:j_exclusive=yes:gmem=80000:num=1"``.
        """
        mem = self.mem_mb(stage, attempt)
        spec = self.spec(stage)
        flags = f'-M {mem} -R "select[mem>{mem}] rusage[mem={mem}] span[hosts=1]"'
        if int(spec["gpu"]) > 0:
            gmem = f"gmem={int(spec['gpu_mem_mb'])}:" if spec.get("gpu_mem_mb") else ""
            flags += f' -gpu "mode=shared:j_exclusive=yes:{gmem}num={int(spec["gpu"])}"'
        if spec["lsf_extra_flags"]:
            flags += f" {spec['lsf_extra_flags']}"
        return flags

    def rule_resources(self, stage: str) -> dict:
        """Keyword arguments for a rule's ``resources:`` (callables so ``attempt`` is honoured).

        Generic: ``mem_mb`` (per job, grows with ``attempt``), ``runtime`` (minutes) and, on the GPU stages
        only, ``gpu`` (plus ``gpu_model`` when set and a GPU is requested). LSF: ``lsf_queue`` and
        ``lsf_extra``. SLURM: ``slurm_partition`` and ``cpus_per_task`` (the rule's threads); the SLURM
        plugin turns ``gpu``/``gpu_model`` into ``--gpus=[model:]N``. CPU stages carry no GPU key at all.

        Snakemake's local scheduler only constrains resources named in ``--resources``, so with plain
        ``--cores N`` a GPU stage still runs on a CPU-only machine (the model then trains with
        ``accelerator='auto'`` on the CPU); ``--resources gpu=1`` serialises GPU jobs on a GPU box.
        """
        res: dict[str, Any] = {
            "mem_mb": lambda wildcards, attempt: self.mem_mb(stage, attempt),
            "runtime": self.runtime(stage),
            "lsf_queue": self.queue(stage),
            "lsf_extra": lambda wildcards, attempt: self.lsf_extra(stage, attempt),
            "slurm_partition": self.partition(stage),
            "cpus_per_task": lambda wildcards, threads: int(threads),
        }
        if stage in GPU_STAGES:
            res["gpu"] = self.gpu(stage)
            if self.gpu(stage) > 0 and self.gpu_model(stage):
                res["gpu_model"] = self.gpu_model(stage)
        return res


def resource_problems(cfg: Mapping, res: ResourceTable | None = None) -> list[str]:
    """Start-time checks of the ``resources`` table of a schema-validated config (one line per problem).

    * A CPU stage's own entry must not ask for a GPU (``gpu`` > 0, ``gpu_mem_mb`` > 0 or ``gpu_model``).
    * Cluster studies (``resources.queues`` is given, or some entry names a queue/partition other than the
      built-in ``normal``) need an entry of their own for each GPU stage they run (train_rna;
      train_multimodal with the atac modality): otherwise training would silently get the CPU default.
    * With ``resources.queues``: every queue and partition a running stage uses must be listed there;
      its ``mem_mb`` (attempt 1; retries are capped at the limit) and ``runtime`` must fit the queue's
      ``max_mem_mb`` / ``max_runtime``; a stage asking for a GPU needs a ``gpu: true`` queue, and a stage
      without one must not sit on a GPU queue.
    """
    res = res or ResourceTable(cfg)
    study = cfg["study"]
    table = cfg["resources"]
    problems = []

    def where(stage: str, key: str, value) -> str:
        """``'resources.<stage|default>.<key>' = value``: the config key the stage's value comes from."""
        if key in res.table.get(stage, {}):
            return f"'resources.{stage}.{key}' = {value!r}"
        if key in table.get("default", {}) and not (stage not in GPU_STAGES and key in GPU_KEYS):
            return f"'resources.default.{key}' = {value!r}"
        return f"{key} = {value!r} (built-in default)"

    def at(stage: str) -> str:
        return f"study {study!r}, stage {stage}"

    for stage in STAGES:
        own = res.table.get(stage, {})
        if stage in GPU_STAGES:
            continue
        asked = {k: own[k] for k in GPU_KEYS if own.get(k)}
        if asked:
            keys = ", ".join(f"'resources.{stage}.{k}' = {v!r}" for k, v in asked.items())
            problems.append(
                f"{at(stage)}: {keys}: {stage} runs on CPUs only (GPU stages: {', '.join(GPU_STAGES)}); remove it"
            )

    active = active_stages(cfg)
    named = {
        str(entry[key])
        for name, entry in table.items()
        if isinstance(entry, Mapping) and name != "queues"
        for key in ("queue", "partition")
        if entry.get(key)
    }
    cluster_names = sorted(named - {DEFAULT_RESOURCES["queue"]})
    missing = []
    if res.queues or cluster_names:
        why = "resources.queues is set" if res.queues else f"resources name queue(s) {cluster_names}"
        for stage in GPU_STAGES:
            if stage in active and stage not in res.table:
                missing.append(stage)
                problems.append(
                    f"{at(stage)}: no 'resources.{stage}' entry, but this is a cluster study ({why}): give the "
                    f"GPU stage its own threads, mem_mb, runtime, gpu and queue (it would otherwise get "
                    f"resources.default: queue {res.queue(stage)!r}, mem_mb {res.mem_mb(stage)})"
                )
    if not res.queues:
        return problems

    known = sorted(res.queues)
    for stage in active:
        if stage in missing:  # reported above; its defaults would only add noise
            continue
        for key, name in (("queue", res.queue(stage)), ("partition", res.partition(stage))):
            if key == "partition" and name == res.queue(stage):
                continue
            if name not in res.queues:
                hint = difflib.get_close_matches(name, known, n=1)
                did = f"; did you mean {hint[0]!r}?" if hint else ""
                problems.append(
                    f"{at(stage)}: {where(stage, key, name)} is not a queue of resources.queues{did} "
                    f"(known: {', '.join(known)})"
                )
        mem, runtime, gpu = res.mem_mb(stage), res.runtime(stage), res.gpu(stage)
        for name, limits in res.queue_limits(stage).items():
            max_mem = limits.get("max_mem_mb")
            if max_mem and mem > int(max_mem):
                roomy = sorted(
                    (
                        q
                        for q, lim in res.queues.items()
                        if int(lim["max_mem_mb"]) >= mem and bool(lim.get("gpu")) == (gpu > 0)
                    ),
                    key=lambda q: int(res.queues[q]["max_mem_mb"]),
                )
                alt = f"; queue(s) with enough memory: {', '.join(roomy)}" if roomy else ""
                problems.append(
                    f"{at(stage)}: {where(stage, 'mem_mb', mem)} exceeds max_mem_mb {int(max_mem)} of queue "
                    f"{name!r} (resources.queues.{name}){alt}"
                )
            max_runtime = limits.get("max_runtime")
            if max_runtime and runtime > int(max_runtime):
                problems.append(
                    f"{at(stage)}: {where(stage, 'runtime', runtime)} minutes exceeds max_runtime "
                    f"{int(max_runtime)} of queue {name!r} (resources.queues.{name})"
                )
            gpu_queue = bool(limits.get("gpu", False))
            if gpu > 0 and not gpu_queue:
                problems.append(
                    f"{at(stage)}: {where(stage, 'gpu', gpu)} but queue {name!r} has no GPUs "
                    f"(resources.queues.{name}.gpu is false): use a GPU queue "
                    f"({', '.join(q for q in known if res.queues[q].get('gpu')) or 'none listed'})"
                )
            if gpu == 0 and gpu_queue:
                fix = f", or set 'resources.{stage}.gpu' to train on a GPU" if stage in GPU_STAGES else ""
                problems.append(
                    f"{at(stage)}: requests no GPU but queue {name!r} is a GPU queue (resources.queues.{name}.gpu "
                    f"is true): use a CPU queue{fix}"
                )
    return problems
