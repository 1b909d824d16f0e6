"""Every spec shipped in search_spaces/ parses and validates (names, bounds, conditions)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tuner.spec import load_spec

SPECS = sorted((Path(__file__).resolve().parents[2] / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_shipped_spec_is_valid(path):
    spec = load_spec(path)
    assert spec.name == path.stem
    assert spec.space and spec.budget.num_samples >= 1


def test_the_readmes_own_data_command_fixes_what_it_sets():
    """README's "search your own data" line (recipe.yaml with --set for real photos on a GPU) parses:
    its --set values win, searched keys among them (width) leave the space."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    command = readme[readme.index("tuner search search_spaces/mine.yaml"):]
    command = command[:command.index("```")].replace("\\\n", " ")
    overrides = dict(pair.split("=", 1) for pair in re.findall(r"--set (\S+)", command))
    assert {"width", "arch", "pretrained"} <= set(overrides)
    recipe = next(p for p in SPECS if p.name == "recipe.yaml")
    values = {k: yaml.safe_load(v) for k, v in overrides.items()}
    spec = load_spec(recipe, overrides=values)
    assert "width" not in {p.name for p in spec.space}
    assert all("width" not in point for point in spec.points_to_evaluate)
    assert {k: spec.base_config()[k] for k in values} == values
