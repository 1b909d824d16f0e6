"""docker/Dockerfile installs exactly what pyproject.toml pins, and the build context stays small."""

from __future__ import annotations

import re
import shlex
import subprocess
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


def test_the_image_user_has_no_sudo():
    # Ray's base image appends `ray ALL=NOPASSWD: ALL` to /etc/sudoers and puts ray in the sudo
    # group: any code in a trial would be root in the container. Nothing needs it (docker/Dockerfile
    # says why), so the image takes it away, fails its build if any NOPASSWD rule is left, and runs
    # as ray again.
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    removal = [i for i in instructions if i.startswith("RUN ") and "sudoers" in i]
    assert len(removal) == 1, removal
    steps = [step.strip() for step in removal[0][4:].split("&&")]
    assert "sed -i -E '/^[^#]*NOPASSWD/d' /etc/sudoers" in steps
    assert "(gpasswd -d ray sudo || true)" in steps
    assert "! grep -rqsE '^[^#]*NOPASSWD' /etc/sudoers /etc/sudoers.d" in steps  # the build's check
    assert "! id -nG ray | grep -qw sudo" in steps
    users = [i.split()[1] for i in instructions if i.startswith("USER ")]
    assert users[-1] == "ray", users  # the image runs as ray, not root
    assert instructions.index(removal[0]) > max(
        n for n, i in enumerate(instructions) if i.startswith("USER root"))


def test_the_sudo_removal_works_on_a_sudoers_like_rays(tmp_path):
    # The same sed, on a copy of what the base image's sudoers looks like.
    sudoers = tmp_path / "sudoers"
    sudoers.write_text("Defaults env_reset\n# NOPASSWD in a comment stays\nroot ALL=(ALL:ALL) ALL\n"
                       "%sudo ALL=(ALL:ALL) ALL\nray ALL=NOPASSWD: ALL\n")
    subprocess.run(["sed", "-i", "-E", "/^[^#]*NOPASSWD/d", str(sudoers)], check=True)
    assert sudoers.read_text() == ("Defaults env_reset\n# NOPASSWD in a comment stays\n"
                                   "root ALL=(ALL:ALL) ALL\n%sudo ALL=(ALL:ALL) ALL\n")
    assert subprocess.run(["grep", "-rqsE", "^[^#]*NOPASSWD", str(sudoers)]).returncode == 1
