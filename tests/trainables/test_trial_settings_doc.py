"""docs/trial-settings.md names every TrialConfig field and every augmentation parameter, and nothing else."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from trainables.config import TrialConfig
from trainables.transforms import AUGMENTATIONS, COMMON

DOC = Path(__file__).resolve().parents[2] / "docs" / "trial-settings.md"


def _documented() -> set[str]:
    names = set()
    for line in DOC.read_text().splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names.update(re.findall(r"`([^`]+)`", first_cell))
    return names


def test_the_table_names_every_field_and_no_other():
    fields = {f.name for f in dataclasses.fields(TrialConfig)} - {"aug"}
    documented = _documented()
    plain = {name for name in documented if "." not in name}
    assert not fields - plain, f"missing from {DOC.name}: {sorted(fields - plain)}"
    assert not plain - fields, f"{DOC.name} names settings that do not exist: {sorted(plain - fields)}"


def test_the_table_names_every_augmentation_parameter_and_no_other():
    parameters = set(COMMON).union(*(AUGMENTATIONS.get(n).defaults for n in AUGMENTATIONS.names()))
    documented = {name.split(".", 1)[1] for name in _documented() if name.startswith("aug.")}
    assert documented == parameters
