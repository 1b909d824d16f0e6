"""The trial side's import rules: no cycles (imports inside functions count), no tuner, no ray but
the Ray adapter, and the registries' compatibility rules in one place."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "trainables"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _graph() -> dict[str, set[str]]:
    modules = {f"trainables.{p.stem}": p for p in PACKAGE.glob("*.py")}
    return {name: {m for m in _imports(path) if m in modules} for name, path in modules.items()}


def test_trainables_has_no_import_cycle():
    graph, seen, stack = _graph(), set(), []

    def visit(node: str) -> None:
        assert node not in stack, f"import cycle: {' -> '.join(stack[stack.index(node):] + [node])}"
        if node in seen:
            return
        stack.append(node)
        for child in sorted(graph[node]):
            visit(child)
        stack.pop()
        seen.add(node)

    for module in sorted(graph):
        visit(module)


def test_trainables_never_imports_tuner_and_only_the_adapter_imports_ray():
    for path in PACKAGE.glob("*.py"):
        imported = _imports(path)
        assert not any(m == "tuner" or m.startswith("tuner.") for m in imported), path.name
        if path.name != "trial.py":
            assert not any(m == "ray" or m.startswith("ray.") for m in imported), path.name


def test_backbone_compatibility_rules_have_one_home():
    # The rules read each registry entry's declared knobs in models.check_backbone_settings; config
    # calls it instead of repeating them.
    config = (PACKAGE / "config.py").read_text()
    assert "check_backbone_settings" in config and "has_width" not in config
    models = (PACKAGE / "models.py").read_text()
    assert models.count("has no {KNOB_NAMES[knob]}") == 1
