"""No import cycle in src/rvi, and every module imports in a fresh interpreter in the order a rule runs.

The import graph is read from the source (:mod:`ast`), function-level imports included: an import inside
a function is still a dependency, and a cycle hidden that way is still a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.workflow import REPO

SRC = REPO / "src"


def module_files() -> dict[str, Path]:
    """Module name -> file of every module of src/rvi (packages as their ``__init__``)."""
    out = {}
    for path in sorted((SRC / "rvi").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(name: str, files: dict[str, Path]) -> bool:
    return files[name].name == "__init__.py"


def import_graph() -> dict[str, set[str]]:
    """Module -> the rvi modules it imports (anywhere in the file), with the packages on the way.

    Importing ``rvi.a.b`` runs ``rvi.a`` (its ``__init__``) first, so it is an edge too, unless it is a
    package that contains the importer (it is being imported already).
    """
    files = module_files()
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if _is_package(name, files) else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    module = ".".join([*base, node.module] if node.module else base)
                else:
                    module = node.module or ""
                targets.add(module)
                # `from rvi.x import y` imports the submodule rvi.x.y when there is one.
                targets |= {f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in files}
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in files and prefix != name and not name.startswith(prefix + "."):
                    graph[name].add(prefix)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a list of modules, first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_src_rvi():
    graph = import_graph()
    assert "rvi.workflow.runner" in graph and graph["rvi.workflow.config"] >= {"rvi.workflow.sweeps"}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_workflow_never_imports_the_stages():
    """The workflow runs the stages by registry name; the stages never import the workflow."""
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("rvi.workflow"):
            assert not {t for t in targets if t.startswith("rvi.stages")}, name
        if name.startswith("rvi.stages"):
            assert not {t for t in targets if t.startswith("rvi.workflow")}, name


RULE_ORDER = """
import sys
# 1. Parsing the Snakefile (workflow/rules/common.smk): the workflow package only, no stage, no torch.
import rvi.workflow
from rvi.workflow.registry import REGISTRY
from rvi.workflow.sweeps import sweep_stage
heavy = sorted(m for m in sys.modules if m.startswith(("rvi.stages", "torch", "scvi", "anndata")))
assert not heavy, heavy
# 2. A job: the runner resolves its stage's function (each stage in a job of its own in practice).
from rvi._process import resolve
for stage in REGISTRY:
    resolve(stage.function)
    if stage.model:
        resolve(stage.model)
# 3. Every other module.
import importlib
for name in sys.argv[1:]:
    importlib.import_module(name)
print("ok")
"""


def test_every_module_imports_in_rule_order():
    names = [n for n in module_files() if not n.endswith("__main__")]
    proc = subprocess.run(
        [sys.executable, "-c", RULE_ORDER, *names],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**__import__("os").environ, "PYTHONPATH": str(SRC)},
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
