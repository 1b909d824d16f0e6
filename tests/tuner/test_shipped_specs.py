"""Every spec shipped in search_spaces/ parses and validates (names, bounds, conditions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner.spec import load_spec

SPECS = sorted((Path(__file__).resolve().parents[2] / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_shipped_spec_is_valid(path):
    spec = load_spec(path)
    assert spec.name == path.stem
    assert spec.space and spec.budget.num_samples >= 1
