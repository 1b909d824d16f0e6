"""docker/Dockerfile installs exactly what pyproject.toml pins, and the build context stays small."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}


def dockerfile_instructions(text: str) -> list[str]:
    """Instructions with their continuation lines joined and comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in re.sub(r"\\\s*\n", " ", "\n".join(lines)).splitlines() if i.strip()]


def pip_requirements(text: str) -> list[Requirement]:
    """Every requirement named in a `pip install` of a RUN instruction (not options, not paths)."""
    found = []
    for instruction in dockerfile_instructions(text):
        if not instruction.upper().startswith("RUN "):
            continue
        for command in re.split(r"&&|;", instruction[4:]):
            words = shlex.split(command)
            if "install" not in words or not any(w.endswith("pip") for w in words[:3]):
                continue
            for word in words[words.index("install") + 1:]:
                if word.startswith("-") or word.startswith((".", "/")):
                    continue
                found.append(Requirement(word))
    return found


def test_the_parser_reads_continued_pip_lines():
    text = 'FROM x\n# RUN pip install "ignored==1"\nRUN pip install --no-cache-dir \\\n  "a==1" \\\n  "b[c]>=2" && pip install --no-deps .\n'
    assert [str(r) for r in pip_requirements(text)] == ["a==1", "b[c]>=2"]


def test_dockerfile_pins_every_dependency_as_pyproject_does():
    wanted = pyproject_requirements()
    installed: dict[str, list[Requirement]] = {}
    for requirement in pip_requirements(DOCKERFILE.read_text()):
        installed.setdefault(canonicalize_name(requirement.name), []).append(requirement)
    missing = sorted(set(wanted) - set(installed))
    assert not missing, f"docker/Dockerfile does not install {missing}"
    for name, requirement in wanted.items():
        for found in installed[name]:
            # The same version rule everywhere the image installs it; extras may only add.
            assert found.specifier == requirement.specifier, (name, str(found), str(requirement))
            assert requirement.extras <= found.extras, (name, str(found), str(requirement))


def test_cluster_only_additions_are_pinned_exactly():
    wanted = pyproject_requirements()
    extra = [r for r in pip_requirements(DOCKERFILE.read_text())
             if canonicalize_name(r.name) not in wanted]
    assert {canonicalize_name(r.name) for r in extra} == {"boto3"}
    for requirement in extra:
        assert str(requirement.specifier).startswith("=="), str(requirement)


def test_the_image_installs_this_package_and_runs_with_token_auth():
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    assert instructions[0].startswith("FROM rayproject/ray:2.60.0-py311")  # Ray and Python as pinned
    copied = {i.split()[-2] for i in instructions if i.startswith("COPY")}
    assert {"tuner", "trainables"} <= copied
    assert any("pip install --no-cache-dir --no-deps ." in i for i in instructions)
    assert any(i.startswith("ENV") and "RAY_AUTH_MODE=token" in i for i in instructions)


@pytest.mark.parametrize("path", [".venv", "runs", "mlruns", "mlflow.db", "data", ".git"])
def test_dockerignore_keeps_local_state_out_of_the_build_context(path):
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert path in patterns
    # What the image copies must not be ignored.
    assert not {"tuner", "trainables", "pyproject.toml", "README.md"} & set(patterns)
