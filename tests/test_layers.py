"""The package's layering, read from its imports (docs/architecture.md, "Layers").

A stage imports only from stages below it (or its own), every import counted, also those
inside functions; and no two modules import each other, directly or around a loop.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "llm_tflite"

#: Stages from the bottom up; a module's stage is its first package under llm_tflite/.
STAGES = (
    {"errors", "console", "plugins"},
    {"litert"},
    {"tokenizers"},
    {"runtime"},
    {"families"},
    {"export", "quantize", "training"},
    {"cli", "serve", "evaluation", "testing", "__init__", "__main__"},
)


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(path: pathlib.Path, known: set[str]) -> set[str]:
    """The llm_tflite modules ``path`` imports (``from a.b import c`` counts ``a.b.c`` when it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("llm_tflite")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("llm_tflite"):
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in known else node.module)
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _stage(module: str) -> int:
    for rank, names in enumerate(STAGES):
        if _package(module) in names:
            return rank
    raise AssertionError(f"{module} belongs to no stage: add its package to STAGES and docs/architecture.md")


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}


def test_every_package_has_a_stage():
    for module in _modules():
        _stage(module)


def test_no_stage_imports_a_higher_one():
    upward = sorted(f"{module} -> {target}" for module, targets in import_graph().items() for target in targets
                    if _stage(target) > _stage(module))
    assert upward == [], "imports that climb a stage:\n" + "\n".join(upward)


@pytest.mark.parametrize("low, high", [
    ("litert", {"families", "export", "training", "plugins", "runtime", "quantize", "tokenizers"}),
    ("families", {"export", "training", "quantize"}),
    ("runtime", {"families", "export", "training", "quantize"}),
])
def test_named_rules(low, high):
    """The rules docs/architecture.md states in words, checked by name."""
    found = sorted(f"{module} -> {target}" for module, targets in import_graph().items() if _package(module) == low
                   for target in targets if _package(target) in high)
    assert found == []


def test_no_import_cycles():
    graph = import_graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert cycles == [], f"modules that import each other: {cycles}"


def test_the_checker_sees_a_climbing_import(tmp_path):
    """The rule can fail: an import from litert/ into export/ (as litertlm.py once had) is found."""
    module = tmp_path / "probe.py"
    module.write_text("def f():\n    from llm_tflite.export.converter import Converter\n", encoding="utf-8")
    found = _imports(module, set(_modules()))
    assert found == {"llm_tflite.export.converter"}
    assert _stage("llm_tflite.export.converter") > _stage("llm_tflite.litert.litertlm")
