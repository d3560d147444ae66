"""Start-time checks of model / training-plan keyword arguments, without importing torch or scvi-tools.

``model.module_kwargs`` and ``training.plan_kwargs`` are free-form in the schema; a typo there used to
surface only inside the training job (``RegularizedVAE.loss() got an unexpected keyword argument
'lrr'``), after every upstream job and a GPU queue wait. The accepted names are read from the source
of the classes that receive them (parsed with :mod:`ast`: importing the models would add ~15 s to
every Snakefile parse), so the check follows the code without a hand-kept list.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from rvi.workflow.registry import REGISTRY

_RVI = Path(__file__).resolve().parents[1]


def _source(target: str) -> tuple[Path, str]:
    """(source file, class name) of a registry ``"rvi.module:Class"`` string, found without importing it."""
    module, _, cls = target.partition(":")
    return _RVI.joinpath(*module.split(".")[1:]).with_suffix(".py"), cls


#: model class (file, class) of each training stage (the registry's ``model``).
STAGE_MODELS = {s.name: _source(s.model) for s in REGISTRY if s.model}
#: Set by the stage from the ``model`` section itself (not through module_kwargs).
MODEL_SECTION_KEYS = ("n_hidden", "n_latent", "n_layers", "dropout_rate")
#: Computed by the model from the data.
DERIVED_MODULE_ARGS = ("n_continuous_cov",)
#: Passed by scvi-tools' TrainingPlan itself.
INJECTED_LOSS_ARGS = ("kl_weight", "n_obs")


def _scvi_file(relative: str) -> Path | None:
    spec = importlib.util.find_spec("scvi")  # top-level only: does not import scvi
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


@lru_cache(maxsize=32)
def method_arguments(path: str, class_name: str, method: str) -> tuple[str, ...]:
    """Names of the optional (defaulted or keyword-only) arguments of ``class_name.method`` in ``path``."""
    tree = ast.parse(Path(path).read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method:
                    args = item.args
                    positional = [*args.posonlyargs, *args.args]
                    with_default = positional[len(positional) - len(args.defaults) :] if args.defaults else []
                    return tuple(a.arg for a in [*with_default, *args.kwonlyargs])
    raise LookupError(f"{class_name}.{method} not found in {path}")


def module_kwarg_names(stage: str) -> set[str]:
    """Keys ``<stage>.model.module_kwargs`` may hold: model constructor, module build and RegularizedVAE."""
    path, cls = STAGE_MODELS[stage]
    names = set(method_arguments(str(path), cls, "__init__"))
    names |= set(method_arguments(str(_RVI / "models" / "_base.py"), "RVIModelBase", "_build_module"))
    names |= set(method_arguments(str(_RVI / "module" / "vae.py"), "RegularizedVAE", "__init__"))
    return names - set(MODEL_SECTION_KEYS) - set(DERIVED_MODULE_ARGS)


def plan_kwarg_names() -> set[str] | None:
    """Keys ``training.plan_kwargs`` may hold (None when scvi-tools' source is not found: no check)."""
    scvi_plan = _scvi_file("train/_trainingplans.py")
    if scvi_plan is None:
        return None
    names = set(method_arguments(str(scvi_plan), "TrainingPlan", "__init__"))
    names |= set(method_arguments(str(_RVI / "train.py"), "RVITrainingPlan", "__init__"))
    # TrainingPlan forwards the rest (**loss_kwargs) to the module's loss.
    names |= set(method_arguments(str(_RVI / "module" / "vae.py"), "RegularizedVAE", "loss"))
    return names - set(INJECTED_LOSS_ARGS)


def _unknown(study: str, stage: str, key: str, given: Mapping, allowed: set[str], what: str) -> list[str]:
    problems = []
    for name in sorted(set(map(str, given)) - allowed):
        hint = difflib.get_close_matches(name, sorted(allowed), n=3)
        did = f"; did you mean {' or '.join(repr(h) for h in hint)}?" if hint else ""
        if name in MODEL_SECTION_KEYS and key.endswith("module_kwargs"):
            did = f"; set it as '{key.rsplit('.', 1)[0]}.{name}' instead"
        problems.append(
            f"study {study!r} / stage {stage} / key '{key}.{name}' / value {given[name]!r}: not an argument of "
            f"{what}{did} (accepted: {', '.join(sorted(allowed))})"
        )
    return problems


def kwargs_problems(study: str, stage: str, section: Mapping, key: str) -> list[str]:
    """Unknown keys of ``section['model']['module_kwargs']`` and ``section['training']['plan_kwargs']``.

    ``key`` names the section in the messages (``train_rna``, ``sweeps.experiments.<name>``).
    """
    if stage not in STAGE_MODELS:
        return []
    problems = []
    module_kwargs = section.get("model", {}).get("module_kwargs") or {}
    if module_kwargs:
        problems += _unknown(
            study,
            stage,
            f"{key}.model.module_kwargs",
            module_kwargs,
            module_kwarg_names(stage),
            f"{STAGE_MODELS[stage][1]} / RegularizedVAE",
        )
    plan_kwargs = section.get("training", {}).get("plan_kwargs") or {}
    allowed = plan_kwarg_names() if plan_kwargs else None
    if allowed is not None:
        problems += _unknown(
            study,
            stage,
            f"{key}.training.plan_kwargs",
            plan_kwargs,
            allowed,
            "the training plan (RVITrainingPlan / scvi-tools TrainingPlan) or RegularizedVAE.loss",
        )
    return problems
