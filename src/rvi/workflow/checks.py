"""Cross-key checks of a schema-validated config: what one key means for another (one line per problem).

Label levels named by other sections, the modalities a setting needs, and the training stages' devices,
strategy and keyword arguments against what the scheduler gives the job (``resources.<stage>.gpu``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from rvi.workflow.model_kwargs import kwargs_problems
from rvi.workflow.registry import TRAINING_STAGES
from rvi.workflow.resources import ResourceTable, resource_problems

__all__ = ["cross_key_problems", "training_problems"]


def cross_key_problems(cfg: Mapping, res: ResourceTable | None = None) -> list[str]:
    """Every cross-key problem of ``cfg`` (``res``: its resource table, built once per config load)."""
    res = res or ResourceTable(cfg)
    problems = []
    demo = cfg["demo_data"]
    if not demo["generate"] and not cfg["sample_sheet"]:
        problems.append("'sample_sheet' is required unless demo_data.generate is true")
    if demo["generate"] and cfg["sample_sheet"]:
        generated = Path(demo["outdir"]) / "samples.tsv"
        if Path(cfg["sample_sheet"]) != generated:
            problems.append(
                f"'sample_sheet' = {cfg['sample_sheet']!r} but demo_data.generate writes the sheet to "
                f"{str(generated)!r}: drop sample_sheet or point it there"
            )
    levels = cfg["labels"]["levels"]
    if len(set(levels)) != len(levels):
        problems.append(f"bad value for 'labels.levels': {levels!r} (duplicate level names)")
    for section in ("select_cres",):
        level = cfg[section]["level"]
        if level is not None and level not in levels:
            problems.append(f"bad value for '{section}.level': {level!r} (not one of labels.levels {levels})")
    problems += training_problems(cfg, res=res)
    if "atac" not in cfg["modalities"]:
        for key in ("min_fragments",):
            qc = cfg["cell_qc"]
            users = ["default"] * bool(qc["default"].get(key)) + [d for d, t in qc["per_dataset"].items() if t.get(key)]
            if users:
                problems.append(
                    f"'cell_qc' sets {key} for {users} but modalities has no 'atac' (no fragments to count)"
                )
    gt = cfg["ground_truth"]
    if gt["cres"] and "atac" not in cfg["modalities"]:
        problems.append("'ground_truth.cres' is set but modalities has no 'atac' (no CREs are selected)")
    problems += resource_problems(cfg, res)
    return problems


def _device_count(devices) -> int | None:
    """Devices a ``training.devices`` value asks for (None for ``"auto"``: Lightning decides)."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices
    if isinstance(devices, list | tuple):
        return len(devices)
    return None


def training_problems(
    cfg: Mapping,
    stages: tuple[str, ...] | None = None,
    key_prefix: str | None = None,
    res: ResourceTable | None = None,
) -> list[str]:
    """Cross-key checks of the training stages' sections (also run on each sweep experiment's merged section).

    * ``metrics.label_level`` must be one of ``labels.levels``.
    * GPU training must fit what the scheduler gives the job (``resources.<stage>.gpu``): ``accelerator: gpu``
      needs ``gpu`` >= 1, ``devices: N`` (or a list of N device indices, each < ``gpu``) needs ``gpu`` >= N.
    * Several devices train with DDP, one process per device (:mod:`rvi.distributed`): ``devices`` > 1
      needs a ``ddp`` strategy, and a ``ddp`` strategy needs an explicit ``devices`` count.

    ``key_prefix`` names the section in the messages (default: the stage; sweeps pass
    ``sweeps.experiments.<name>``).
    """
    problems = []
    levels = cfg["labels"]["levels"]
    res = res or ResourceTable(cfg)
    for stage in TRAINING_STAGES if stages is None else stages:
        key = key_prefix or stage
        section = cfg[stage]
        level = section["metrics"]["label_level"]
        if level is not None and level not in levels:
            problems.append(f"bad value for '{key}.metrics.label_level': {level!r} (not one of labels.levels {levels})")
        problems += kwargs_problems(cfg["study"], stage, section, key)
        training = section["training"]
        accelerator, devices, strategy = training["accelerator"], training["devices"], training["strategy"]
        n = _device_count(devices)
        ddp = str(strategy).startswith("ddp")
        if n is not None and n > 1 and not ddp:
            problems.append(
                f"'{key}.training.devices' = {devices!r} with strategy {strategy!r}: training on several devices "
                "needs strategy: ddp (or ddp_find_unused_parameters_true when some parameters get no gradient)"
            )
        if ddp and n is None:
            problems.append(
                f"'{key}.training.strategy' = {strategy!r} needs an explicit '{key}.training.devices' (the number of "
                f"GPUs, one DDP process each, e.g. devices: 2 with resources.{stage}.gpu: 2), not {devices!r}"
            )
        if accelerator == "cpu":
            continue  # CPU processes (e.g. DDP with gloo) do not use the job's GPUs
        gpus = res.gpu(stage)
        if accelerator in ("gpu", "cuda") and gpus == 0:
            problems.append(
                f"'{key}.training.accelerator' = {accelerator!r} but 'resources.{stage}.gpu' = 0: the job would get "
                f"no GPU; set resources.{stage}.gpu (or accelerator: auto / cpu)"
            )
        elif n is not None and gpus > 0 and n > gpus:
            problems.append(
                f"'{key}.training.devices' = {devices!r} asks for {n} GPUs but 'resources.{stage}.gpu' = {gpus}: "
                f"the scheduler gives the job {gpus}; set resources.{stage}.gpu: {n}"
            )
        elif isinstance(devices, list) and gpus > 0 and max(devices) >= gpus:
            problems.append(
                f"'{key}.training.devices' = {devices!r}: the job sees its {gpus} GPU(s) as indices 0-{gpus - 1} "
                f"(resources.{stage}.gpu = {gpus}); use devices: {gpus} or indices below {gpus}"
            )
    return problems
