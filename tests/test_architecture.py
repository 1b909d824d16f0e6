"""The house has one-way rooms: an import graph check (stdlib ``ast``, imports inside functions
included) and the light commands' promise that they never load torch or Ray.

What fails here: a cycle anywhere in ``tuner``/``trainables``; ``trainables`` importing ``tuner``;
``ray`` imported in ``trainables`` outside the adapter ``trainables/trial.py``; a library module
importing ``tuner.cli``; an import inside a function without a one-line reason on its line.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tuner", "trainables")
RAY_ADAPTER = "trainables.trial"


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported name, fully qualified
    line: int
    in_function: bool
    commented: bool


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports_of(name: str, path: Path) -> list[Import]:
    text = path.read_text()
    lines = text.splitlines()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in child.names] + [base]
            for target in targets:
                line = lines[child.lineno - 1]
                found.append(Import(name, target, child.lineno, in_function, "#" in line))
            visit(child, nested)

    visit(ast.parse(text), False)
    return found


def resolve(target: str, known: dict[str, Path]) -> str | None:
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for imp in imports_of(name, path):
            target = resolve(imp.target, known)
            # A package's own submodules importing it by name (`from tuner.spec import x` inside
            # tuner/spec/...) is not an edge: it is the same room.
            if target and target != name and not name.startswith(target + "."):
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def all_imports() -> list[Import]:
    return [imp for name, path in modules().items() for imp in imports_of(name, path)]


def test_the_import_graph_has_no_cycle():
    assert cycles(graph()) == []


def test_the_cycle_finder_sees_a_cycle_through_a_function_level_import():
    # The check above is only worth something if a hidden back edge is found.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_trainables_never_import_tuner():
    offenders = [f"{i.source}:{i.line} -> {i.target}" for i in all_imports()
                 if i.source.startswith("trainables") and (i.target == "tuner" or i.target.startswith("tuner."))]
    assert offenders == []


def test_ray_is_imported_in_trainables_only_by_the_adapter():
    offenders = [f"{i.source}:{i.line}" for i in all_imports()
                 if i.source.startswith("trainables") and i.source != RAY_ADAPTER
                 and (i.target == "ray" or i.target.startswith("ray."))]
    assert offenders == []


def test_library_modules_never_import_the_cli():
    offenders = [f"{i.source}:{i.line} -> {i.target}" for i in all_imports()
                 if not (i.source == "tuner.cli" or i.source.startswith("tuner.cli."))
                 and (i.target == "tuner.cli" or i.target.startswith("tuner.cli."))]
    assert offenders == []


def test_every_import_inside_a_function_says_why():
    """Allowed only to keep a heavy library out of a light command: the reason sits on the line."""
    offenders = [f"{i.source}:{i.line} imports {i.target}" for i in all_imports()
                 if i.in_function and not i.commented]
    assert sorted(set(offenders)) == []


# --- light commands ------------------------------------------------------------------------------
PROBE = """
import json, sys
from tuner.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:  # --help
    code = stop.code
heavy = sorted(m for m in ("torch", "ray", "optuna") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}))
"""


def run_light(*args: str, cwd: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [
    ("promote", "--help"),
    ("leaderboard", "--help"),
    ("data", "download", "--help"),
])
def test_help_of_light_commands_loads_no_torch_or_ray(tmp_path, args):
    assert run_light(*args, cwd=tmp_path) == {"code": 0, "heavy": []}


def test_data_split_runs_without_torch_or_ray(tmp_path):
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "images" / label / f"{i}.jpg")
    outcome = run_light("data", "split", str(tmp_path / "images"), "--val-fraction", "0.5",
                        cwd=tmp_path)
    assert outcome == {"code": 0, "heavy": []}
    assert len(list((tmp_path / "images-split" / "val").rglob("*.jpg"))) == 4


def test_a_probe_that_imports_torch_is_caught(tmp_path):
    # `tuner train --help` builds the same parser; the probe must see torch when something loads it.
    proc = subprocess.run([sys.executable, "-c", "import torch\n" + PROBE, "score", "--help"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["heavy"] == ["torch"]
